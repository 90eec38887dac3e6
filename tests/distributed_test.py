"""Distributed training of P-tuned models with each backend's own engine.

Each check runs once, from the suite of its backend, in a subprocess that
sets up the devices before the framework starts:

- JAX: `keras.distribution.DataParallel` and `ModelParallel` (with
  `keras_ptuning.distribution.layout_map`) on 4 CPU devices
  (`tests/distributed/jax_distribution.py`).
- TensorFlow: `tf.distribute.MirroredStrategy` on 2 logical CPU devices
  (`tests/distributed/tf_mirrored.py`).
- PyTorch: DDP with 2 gloo processes (`examples/ddp_ptuning.py`).

Each trains the same model from the same weights on the same global batches
as one device does, and checks that the trained prompt encoder and head (and
predictions) match it, and that the frozen backbone is bit-identical.
"""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningTextClassifier
from keras_ptuning.distribution import layout_map
from tests.backbones import FAMILIES
from tests.support import REPO_ROOT
from tests.support import run_on_one_backend
from tests.support import run_python

# Real checkpoints, real data or child processes of other backends.
pytestmark = pytest.mark.slow

# Differences of float32 rounding (measured: 3e-8 to 3e-6): the runs sum the
# same gradients in another order. Training moves the weights by 1e-3 to 0.3.
TOLERANCE = 1e-5
PTUNING_PREFIXES = ("prompt_encoder/", "prompt_injection/", "logits/")


def only_on(backend):
    return run_on_one_backend(backend, f"runs a {backend} subprocess, once")


def run(args, backend, output, extra_env=None, timeout=600):
    """Runs `args` with Python on `backend`; returns the JSON it wrote."""
    run_python([*args, output], backend, timeout=timeout, env=extra_env)
    with open(output) as f:
        return json.load(f)


def check_matches_one_device(case):
    assert case["backbone_identical"]
    assert np.all(np.isfinite(case["loss"]))
    np.testing.assert_allclose(
        case["loss"], case["reference_loss"], rtol=TOLERANCE
    )
    # Training moved the weights 1000x more than the runs differ.
    assert case["training_moved_weights_by"] > 1e-4
    assert case["max_weight_difference"] < TOLERANCE
    assert (
        case["max_weight_difference"] < 1e-3 * case["training_moved_weights_by"]
    )
    assert case["max_prediction_difference"] < TOLERANCE
    assert all(
        p.startswith(("prompt_encoder/", "logits/"))
        for p in case["trainable_paths"]
    )


# === JAX: keras.distribution ===


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    flags = os.environ.get("XLA_FLAGS", "")
    output = tmp_path_factory.mktemp("jax") / "results.json"
    results = run(
        [
            os.path.join(
                REPO_ROOT, "tests", "distributed", "jax_distribution.py"
            )
        ],
        "jax",
        output,
        {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=4"},
    )
    assert len(results["devices"]) == 4
    return {(c["case"], c["family"]): c for c in results["cases"]}


@only_on("jax")
def test_jax_data_parallel_fit_matches_one_device(jax_results):
    case = jax_results[("data_parallel", "gemma")]
    check_matches_one_device(case)
    assert case["adapter_prediction_difference"] < TOLERANCE
    for path, sharding in case["shardings"].items():
        assert sharding["replicated"] and sharding["num_devices"] == 4, path


@only_on("jax")
@pytest.mark.parametrize("family", ["gemma", "bert"])
def test_jax_model_parallel_fit_matches_one_device(jax_results, family):
    case = jax_results[("model_parallel", family)]
    check_matches_one_device(case)
    if family == "gemma":
        # Its adapter, saved from the sharded model, on one device.
        assert case["adapter_prediction_difference"] < TOLERANCE
    shardings = case["shardings"]
    for path, sharding in shardings.items():
        assert sharding["num_devices"] == 4, path
        if path.startswith(PTUNING_PREFIXES):
            assert sharding["replicated"], path
    sharded = [
        p for p in case["backbone_paths"] if "model" in shardings[p]["spec"]
    ]
    assert "token_embedding/embeddings" in sharded
    assert any(p.endswith("query/kernel") for p in sharded)
    assert any("ffw" in p or "feedforward" in p for p in sharded)
    for path in sharded:
        assert not shardings[path]["replicated"], path


def _mesh():
    # `layout_map` only reads the mesh's shape: placeholder devices will do.
    return keras.distribution.DeviceMesh(
        (2, 2), ("batch", "model"), [f"cpu:{i}" for i in range(4)]
    )


@only_on("jax")
def test_layout_map_of_a_built_model_fits_every_variable():
    model = PTuningTextClassifier(
        FAMILIES["gemma"](), 2, prompt_config=PromptEncoderConfig(3)
    )
    layouts = layout_map(model, _mesh())
    axes = {
        v.path: None if layouts[v.path] is None else layouts[v.path].axes
        for v in model.weights
    }
    # keras-hub's Gemma layout, less the mesh axes a dimension can't split:
    # one key/value head cannot go over 2 "model" devices.
    assert axes["token_embedding/embeddings"] == ("model", "batch")
    assert axes["decoder_block_0/attention/query/kernel"] == (
        "model",
        "batch",
        None,
    )
    assert axes["decoder_block_0/attention/key/kernel"] == (None, "batch", None)
    assert axes["decoder_block_1/ffw_linear/kernel"] == ("model", "batch")
    assert axes["decoder_block_0/pre_ffw_norm/scale"] is None
    for path, layout in axes.items():
        if path.startswith(PTUNING_PREFIXES):
            assert layout is None, path

    # BERT has no family layout: the largest dimension "model" divides.
    model = PTuningTextClassifier(
        FAMILIES["bert"](), 2, prompt_config=PromptEncoderConfig(3)
    )
    layouts = layout_map(model.backbone, _mesh())
    for variable in model.weights:
        layout = layouts[variable.path]
        if (
            variable.path.startswith(PTUNING_PREFIXES)
            or len(variable.shape) < 2
        ):
            assert layout is None, variable.path
            continue
        dim = layout.axes.index("model")
        assert layout.axes.count("model") == 1
        assert variable.shape[dim] == max(variable.shape), variable.path


@only_on("jax")
def test_layout_map_of_a_class_never_matches_ptuning_variables():
    layouts = layout_map(keras_hub.models.LlamaBackbone, _mesh())
    model = PTuningTextClassifier(
        FAMILIES["llama"](), 2, prompt_config=PromptEncoderConfig(3)
    )
    family = keras_hub.models.LlamaBackbone.get_layout_map(_mesh())
    for variable in model.weights:
        layout = layouts[variable.path]
        if variable.path.startswith(PTUNING_PREFIXES):
            assert layout is None, variable.path
        else:
            expected = family[variable.path]
            assert (layout and layout.axes) == (expected and expected.axes)
    with pytest.raises(ValueError, match="get_layout_map"):
        layout_map(keras_hub.models.BertBackbone, _mesh())
    with pytest.raises(ValueError, match="no axis 'tensor'"):
        layout_map(model, _mesh(), model_dim_name="tensor")
    with pytest.raises(TypeError, match="DeviceMesh"):
        layout_map(model, "2x2")


# === TensorFlow: tf.distribute.MirroredStrategy ===


@pytest.fixture(scope="module")
def tf_results(tmp_path_factory):
    output = tmp_path_factory.mktemp("tf") / "results.json"
    script = os.path.join(REPO_ROOT, "tests", "distributed", "tf_mirrored.py")
    return run([script], "tensorflow", output)


@only_on("tensorflow")
def test_tf_mirrored_fit_matches_one_device(tf_results):
    assert tf_results["num_replicas_in_sync"] == 2
    (case,) = tf_results["cases"]
    check_matches_one_device(case)
    # Every variable, the prompt encoder's included, has a copy per replica.
    assert len(case["mirrored_paths"]) == case["num_weights"]


# === PyTorch: DistributedDataParallel ===


@only_on("torch")
def test_torch_ddp_example(tmp_path):
    results = run(
        [
            os.path.join(REPO_ROOT, "examples", "ddp_ptuning.py"),
            "--world-size",
            "2",
            "--steps",
            "6",
            "--optimizer",
            "sgd",
            "--learning-rate",
            "0.1",
            "--adapter",
            str(tmp_path / "ddp.adapter.h5"),
            "--output",
        ],
        "torch",
        tmp_path / "results.json",
    )
    assert results["backend"] == "torch"
    assert results["world_size"] == 2
    assert len(results["losses"]) == 6
    assert np.all(np.isfinite(results["losses"]))
    # DDP averaged the same gradients on both ranks: bit-identical weights.
    assert results["max_difference_between_ranks"] == 0.0
    assert results["ranks_identical"]
    assert results["backbone_unchanged"]
    assert results["training_moved_weights_by"] > 1e-2
    assert results["max_difference_vs_single_process"] < TOLERANCE
    assert all(
        p.startswith(("prompt_encoder/", "logits/"))
        for p in results["trainable_paths"]
    )
    assert os.path.exists(tmp_path / "ddp.adapter.h5")

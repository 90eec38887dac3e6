"""Every private Keras / keras-hub API of `keras_ptuning.compat.keras_internals`
still exists and still does what keras_ptuning relies on. A release that
moves one fails here, instead of turning a workaround into a no-op."""

import inspect
import re

import keras
import keras_hub
import numpy as np
from keras.src.backend.common import global_state
from keras.src.saving import serialization_lib

import keras_ptuning
from keras_ptuning.compat import keras_internals
from tests.backbones import CAUSAL
from tests.backbones import FAMILIES
from tests.support import byte_level_llama3_tokenizer


def _minor(version):
    return ".".join(version.split(".")[:2])


def test_checked_versions_are_the_installed_ones():
    """The versions named in the module are the ones this suite runs on;
    pyproject's bounds stop at the next minor of each."""
    assert _minor(keras.__version__) == keras_internals.KERAS_CHECKED
    assert _minor(keras_hub.__version__) == keras_internals.KERAS_HUB_CHECKED
    with open(f"{keras_ptuning.__path__[0]}/../pyproject.toml") as f:
        pyproject = f.read()
    for name, checked in (
        ("keras", keras_internals.KERAS_CHECKED),
        ("keras-hub", keras_internals.KERAS_HUB_CHECKED),
    ):
        major, minor = checked.split(".")
        bound = re.search(rf'"{name}>=[0-9.]+,<([0-9.]+)"', pyproject)
        assert bound, f"{name} has no upper bound in pyproject.toml"
        assert bound.group(1) == f"{major}.{int(minor) + 1}"


def test_object_sharing_scope_uses_the_cleared_keys():
    # `outside_object_sharing` clears these keys; if Keras renames them,
    # clearing does nothing and the `Bidirectional` bug returns.
    with serialization_lib.ObjectSharingScope():
        for key in keras_internals.SHARED_OBJECT_KEYS:
            assert global_state.get_global_attribute(key) is not None, key
        with keras_internals.outside_object_sharing():
            for key in keras_internals.SHARED_OBJECT_KEYS:
                assert global_state.get_global_attribute(key) is None
        for key in keras_internals.SHARED_OBJECT_KEYS:
            assert global_state.get_global_attribute(key) is not None
    source = inspect.getsource(serialization_lib.ObjectSharingScope)
    for key in keras_internals.SHARED_OBJECT_KEYS:
        assert f'"{key}"' in source


def test_symbolic_scope():
    from keras.src.backend.common.symbolic_scope import SymbolicScope

    assert not keras_internals.in_symbolic_scope()
    with SymbolicScope():
        assert keras_internals.in_symbolic_scope()


def test_graph_and_layer_accessors():
    backbone = FAMILIES["bert"]()
    nodes = keras_internals.functional_nodes(backbone)
    layers = {node.operation for node in nodes}
    assert backbone.token_embedding in layers
    sublayers = keras_internals.sublayers(backbone)
    assert sublayers[0] is backbone
    assert backbone.get_layer("token_embedding") in sublayers
    # A built layer takes a new sublayer only while unlocked; its
    # variables are then tracked.
    holder = keras.layers.Dense(2)
    holder.build((None, 3))
    extra = keras.layers.Dense(1)
    extra.build((None, 3))
    with keras_internals.tracking_unlocked(holder):
        holder.extras = [extra]
    assert len(holder.weights) == 4


def test_special_token_names():
    tokenizer = byte_level_llama3_tokenizer([" the", " film"])
    names = keras_internals.special_token_names(tokenizer)
    assert {"start_token", "end_token"} <= set(names)
    assert all(isinstance(getattr(tokenizer, n), str) for n in names)


def test_compiled_metrics():
    model = keras.Sequential([keras.layers.Dense(2)])
    assert keras_internals.compiled_metrics(model) is None
    model.compile(loss="mse", weighted_metrics=["mae"])
    assert not keras_internals.compiled_metrics(model)
    model.compile(loss="mse", metrics=["mae"])
    assert keras_internals.compiled_metrics(model) == ["mae"]


def test_subclassed_tasks_keep_model_methods_after_functional_injection():
    """Building a functional keras-hub task makes Keras put `Functional`
    among `PipelineModel`'s bases; the subclassed classifier must keep
    `keras.Model`'s methods (its symbolic build fails on `Functional`'s)."""
    from keras.src.models.functional import Functional

    backbone = FAMILIES["gpt2"]()
    keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    assert Functional in keras_hub.models.Task.__mro__  # What is relied on.
    cls = keras_ptuning.PTuningCausalLMClassifier
    assert Functional in cls.__mro__
    for name in ("_assert_input_compatibility", "compute_output_spec"):
        assert getattr(cls, name) is not getattr(Functional, name)
        assert inspect.getattr_static(cls, name) is inspect.getattr_static(
            keras.Model, name
        )
    # keras-hub's and our own definitions still come first.
    assert cls.build is keras_hub.models.Task.build
    assert cls.call.__qualname__ == "PTuningCausalLMClassifier.call"


def test_lora_rank():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=16,
        num_layers=1,
        num_heads=2,
        hidden_dim=4,
        intermediate_dim=8,
        max_sequence_length=8,
    )
    assert keras_internals.lora_rank(backbone) is None
    assert keras_internals.lora_config(backbone) is None
    backbone.enable_lora(3)
    assert keras_internals.lora_rank(backbone) == 3
    config = keras_internals.lora_config(backbone)
    assert config["rank"] == 3
    assert sorted(config["target_layer_names"]) == ["query", "value"]
    again = keras_hub.models.BertBackbone.from_config(backbone.get_config())
    again.enable_lora(**{"rank": 3, **config})
    assert [v.path for v in again.trainable_weights] == [
        v.path for v in backbone.trainable_weights
    ]


def test_preset_task_class(tmp_path):
    backbone = FAMILIES["bert"]()
    backbone.save_to_preset(str(tmp_path / "backbone"))
    assert keras_internals.preset_task_class(str(tmp_path / "backbone")) is None
    classifier = keras_ptuning.PTuningTextClassifier(
        backbone, 2, prompt_config=keras_ptuning.PromptEncoderConfig(2)
    )
    classifier.save_to_preset(str(tmp_path / "task"))
    found = keras_internals.preset_task_class(str(tmp_path / "task"))
    assert found is keras_ptuning.PTuningTextClassifier
    loader = keras_internals.preset_loader(str(tmp_path / "task"))
    assert loader.check_backbone_class() is keras_ptuning.PTuningBackbone


def test_every_decoder_family_has_the_cached_decoding_we_reuse():
    """`generate_step` calls `self._build_cache`, which calls
    `self.call_with_cache`; the sampler's loop variables `(prompt, cache,
    index, mask)` keep the cache at `SAMPLER_LOOP_CACHE`."""
    from keras_ptuning.backbones.backbone_split import causal_lm_class

    for family in sorted(CAUSAL):
        cls = causal_lm_class(FAMILIES[family]())
        assert "self._build_cache(" in inspect.getsource(cls.generate_step)
        assert "self.call_with_cache(" in inspect.getsource(cls._build_cache)
    sampler_call = inspect.getsource(keras_hub.samplers.Sampler.__call__)
    assert "self.run_loop(" in sampler_call
    assert "loop_vars=(prompt, cache, index, mask)" in sampler_call
    assert keras_internals.SAMPLER_LOOP_CACHE == 1
    assert keras_internals.runs_plain_loop(keras_hub.samplers.GreedySampler())
    assert not keras_internals.runs_plain_loop(keras_hub.samplers.BeamSampler())


def test_run_sampler_returns_the_final_cache():
    """A greedy loop over a toy "model" whose cache counts the steps."""

    def next(prompt, cache, index):
        logits = keras.ops.one_hot(
            keras.ops.full((2,), 3, "int32"), 5, dtype="float32"
        )
        return logits, None, cache + 1

    prompt = np.zeros((2, 4), "int32")
    cache = np.zeros((2,), "float32")
    out, final = keras_internals.run_sampler(
        keras_hub.samplers.GreedySampler(), next, prompt, cache, index=1
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out)[:, 1:], 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(final), 3.0)


def test_layer_weights_round_trip(tmp_path):
    """`save_weights_only` / `load_weights_only` take one layer (not a
    model) and write only its variables."""
    layer = keras.layers.Dense(3)
    layer.build((None, 2))
    path = str(tmp_path / "dense.weights.h5")
    keras_internals.save_layer_weights(layer, path)
    other = keras.layers.Dense(3)
    other.build((None, 2))
    keras_internals.load_layer_weights(other, path)
    for a, b in zip(layer.weights, other.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )

import os

import keras_hub
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningMaskedLM
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES
from tests.round_trip_models import OFFERED
from tests.round_trip_models import assert_same_predictions
from tests.round_trip_models import build as build_matrix_model
from tests.round_trip_models import predictions
from tests.round_trip_models import prompt_state
from tests.support import BACKEND
from tests.support import check_exports_in_tensorflow_only_process
from tests.support import model_input_names
from tests.support import run_models_eagerly
from tests.support import run_on_one_backend
from tests.support import run_python
from tests.support import served_inputs
from tests.support import to_numpy


def _models():
    return {
        "classifier_bert": lambda: PTuningTextClassifier(
            FAMILIES["bert"](), 3, prompt_config=PromptEncoderConfig(4)
        ),
        "causal_lm_gpt2": lambda: PTuningCausalLM(
            FAMILIES["gpt2"](),
            prompt_config=PromptEncoderConfig(
                4, encoder_reparameterization_type="LSTM"
            ),
        ),
        "backbone_distil_bert": lambda: PTuningBackbone(
            FAMILIES["distil_bert"](), PromptEncoderConfig(4)
        ),
        "classifier_slots_roberta": lambda: PTuningTextClassifier(
            FAMILIES["roberta"](),
            2,
            prompt_config=PromptEncoderConfig(3),
            placeholder_id=-1,
        ),
        "classifier_multi_task_gpt2": lambda: PTuningTextClassifier(
            FAMILIES["gpt2"](),
            2,
            prompt_config=PromptEncoderConfig(3),
            task_names=["a", "b"],
        ),
        "masked_lm_slots_bert": lambda: PTuningMaskedLM(
            keras_hub.models.BertMaskedLM(FAMILIES["bert"]()),
            PromptEncoderConfig(3),
            verbalizer=[[5, 6], [7]],
            placeholder_id=-1,
        ),
    }


def _prompt_table_model():
    # A hidden size of 7 gives encoder shapes no backbone weight has.
    return PTuningTextClassifier(
        FAMILIES["bert"](),
        3,
        prompt_config=PromptEncoderConfig(4, encoder_hidden_size=7),
    )


def _matrix_name(case):
    return "matrix_" + "_".join(case)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every model of `_models()`, the prompt-table one and the offered
    round-trip matrix models, exported in one batch and served by one
    TensorFlow-only process: `{name: (model, prompt table before export,
    what the server saw, and for the matrix's models their prompt state
    and predictions before export)}`. `test_existing_path_and_bad_arguments`
    calls `export_saved_model` itself."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        if BACKEND == "tensorflow":
            # Module fixtures start before conftest's eager switch: the
            # predictions here (about 80) would each trace a function.
            run_models_eagerly(monkeypatch)
        return _export_and_serve(tmp_path_factory.mktemp("exported"))


def _export_and_serve(tmp_path):
    models = {kind: build() for kind, build in _models().items()}
    models["prompt_table"] = _prompt_table_model()
    for case in OFFERED:
        models[_matrix_name(case)] = build_matrix_model(*case)
    tables = {name: model_table(m) for name, m in models.items()}
    # What the matrix's models predict, for after the export.
    before = {}
    for case in OFFERED:
        model = models[_matrix_name(case)]
        inputs = served_inputs(model, 2, 5, 3)
        before[_matrix_name(case)] = (
            prompt_state(model),
            predictions(model, inputs),
        )
    paths = {name: str(tmp_path / name) for name in models}
    for name, model in models.items():
        keras_ptuning.export_saved_model(model, paths[name])
    results = check_exports_in_tensorflow_only_process(
        [(models[name], paths[name]) for name in models], tmp_path
    )
    return {
        name: (models[name], tables[name], result, before.get(name))
        for name, result in zip(models, results)
    }


# Exporting from JAX or PyTorch saves a `.keras` file that a TensorFlow
# child process loads and exports: the graph TensorFlow traces is the same
# whichever backend wrote the file. So JAX and PyTorch export one model
# through that child process (`serving_test.py`: the next-token LM with
# its text signature), the chain (`saving_test.py`) carries every model
# kind and every prompt state from JAX through PyTorch to TensorFlow with
# the same predictions, and TensorFlow exports and serves every model.
ONLY_FROM_TENSORFLOW = run_on_one_backend(
    "tensorflow",
    "JAX and PyTorch export through a TensorFlow child process "
    "(serving_test.py); the chain carries their .keras files to TensorFlow",
)


@pytest.mark.slow  # exports and a TensorFlow-only process
@ONLY_FROM_TENSORFLOW
@pytest.mark.parametrize("kind", sorted(_models()))
def test_export_is_served_by_tensorflow_alone(kind, exported):
    model, table_before, result, _ = exported[kind]
    outputs = _check_served(model, result)
    if kind.startswith(("classifier", "masked_lm")):
        assert outputs == ["logits", "probabilities"]
    elif kind.startswith("causal_lm"):
        assert outputs == ["logits"]
    # Two batch sizes and sequence lengths, each output checked.
    assert len(result) == 2 * len(outputs)
    # The model is unchanged: still trains through its encoder.
    ptuning = model._ptuning_backbone()
    assert ptuning.prompt_source == "encoder"
    np.testing.assert_array_equal(model_table(model), table_before)


def _check_served(model, result):
    """What a TensorFlow-only server saw of `model`'s export: no keras
    import, the model's input names, its outputs within 1e-4 on every
    batch. Leaves the per-output differences in `result`; returns the
    output names."""
    assert result.pop("imported") == []
    assert result.pop("inputs") == sorted(model_input_names(model))
    result.pop("variable_shapes")
    outputs = result.pop("outputs")
    for name, difference in result.items():
        assert difference < 1e-4, (name, difference)
    return outputs


def model_table(model):
    return to_numpy(model._ptuning_backbone().prompt_injection.prompt_table)


@pytest.mark.slow  # exports and a TensorFlow-only process
@ONLY_FROM_TENSORFLOW
def test_export_holds_the_prompt_table_not_the_encoder(exported):
    model, _, result, _ = exported["prompt_table"]
    shapes = result["variable_shapes"]
    assert [4, 16] in shapes  # the prompt table
    assert not any(7 in shape for shape in shapes), shapes
    for name, difference in result.items():
        if ":" in name:
            assert difference < 1e-4, name


@pytest.mark.slow  # an export
@run_on_one_backend(
    "tensorflow",
    "path handling is the same Python on every backend; serving_test.py "
    "exports through the child process from JAX and PyTorch",
)
def test_existing_path_and_bad_arguments(tmp_path):
    model = _models()["backbone_distil_bert"]()
    path = tmp_path / "exported"
    path.mkdir()
    (path / "keep.txt").write_text("old")
    with pytest.raises(ValueError, match="overwrite=True"):
        keras_ptuning.export_saved_model(model, str(path))
    assert (path / "keep.txt").read_text() == "old"
    keras_ptuning.export_saved_model(model, str(path), overwrite=True)
    assert (path / "saved_model.pb").exists()
    assert not (path / "keep.txt").exists()
    with pytest.raises(TypeError, match="PTuningTextClassifier"):
        keras_ptuning.export_saved_model(
            FAMILIES["bert"](), str(tmp_path / "x")
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # a TensorFlow child process and a TensorFlow-only one
@run_on_one_backend(
    "torch",
    "the command runs in its own TensorFlow process whichever backend "
    "saved the .keras files",
)
def test_export_command_exports_every_pair(tmp_path):
    """`python -m keras_ptuning.export M1.keras OUT1 M2.keras OUT2` (one
    TensorFlow process for any number of models, documented in
    export-serving.md; `export_saved_model` from JAX and PyTorch passes it
    one pair) writes both SavedModels, each served with its model's
    outputs."""
    kinds = ["classifier_bert", "backbone_distil_bert"]
    models = {kind: _models()[kind]() for kind in kinds}
    args = ["-m", "keras_ptuning.export"]
    for kind, model in models.items():
        model.save(tmp_path / f"{kind}.keras")
        args += [tmp_path / f"{kind}.keras", tmp_path / kind]
    run_python(args, "tensorflow")
    results = check_exports_in_tensorflow_only_process(
        [(models[kind], str(tmp_path / kind)) for kind in kinds], tmp_path
    )
    outputs = [_check_served(models[k], r) for k, r in zip(kinds, results)]
    assert outputs == [["logits", "probabilities"], ["sequence_output"]]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    from keras_ptuning.saving import export

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(export, "write_saved_model", broken)
    monkeypatch.setattr(export, "_export_in_tensorflow_process", broken)
    model = _models()["backbone_distil_bert"]()
    with pytest.raises(RuntimeError, match="boom"):
        export.export_saved_model(model, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # exports and a TensorFlow-only process
@ONLY_FROM_TENSORFLOW
@pytest.mark.parametrize("case", OFFERED, ids="-".join)
def test_round_trip_matrix_models_are_served_by_tensorflow_alone(
    case, exported
):
    """Each model of the round-trip matrix (`round_trip_models.py`) exports
    to a SavedModel that a TensorFlow-only process serves with the model's
    predictions, and the model is unchanged by it."""
    model, table_before, result, before = exported[_matrix_name(case)]
    _check_served(model, result)
    assert result
    state, outputs = before
    assert prompt_state(model) == state
    inputs = served_inputs(model, 2, 5, 3)
    assert_same_predictions(model, inputs, outputs, atol=0)
    np.testing.assert_array_equal(model_table(model), table_before)


@pytest.mark.parametrize("activation", [None, "softmax", "sigmoid"])
def test_served_class_outputs_are_what_predict_returns(activation):
    """No softmax on top of another activation: a sigmoid classifier
    serves its scores as `predict` gives them, and the argmax as `label`."""
    from keras_ptuning.saving.export import _serving_outputs

    model = PTuningTextClassifier(
        FAMILIES["bert"](),
        3,
        prompt_config=PromptEncoderConfig(2),
        activation=activation,
    )
    inputs = served_inputs(model, 4, 6, seed=0)
    predicted = model.predict(inputs, verbose=0)
    served = {
        name: to_numpy(value)
        for name, value in _serving_outputs(
            model, model(inputs, training=False), with_label=True
        ).items()
    }
    np.testing.assert_array_equal(served["label"], predicted.argmax(-1))
    if activation == "sigmoid":
        assert sorted(served) == ["label", "scores"]
        np.testing.assert_allclose(served["scores"], predicted, atol=1e-6)
        return
    logits = predicted if activation is None else np.log(predicted)
    np.testing.assert_allclose(served["logits"], logits, atol=1e-5)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(
        served["probabilities"], probabilities, atol=1e-6
    )

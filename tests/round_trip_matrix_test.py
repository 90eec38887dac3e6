"""Every model kind in every prompt state keeps its prompt through every
save, load and export path (see `tests/round_trip_models.py`), or the path
refuses it with a clear error. `.keras` files across backends are in
`tests/cross_backend_save.py`."""

import json
import os

import keras
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningTextClassifier
from keras_ptuning import load_peft_adapter
from keras_ptuning import save_peft_adapter
from tests.round_trip_models import KINDS
from tests.round_trip_models import NOT_OFFERED
from tests.round_trip_models import STATES
from tests.round_trip_models import build
from tests.support import BACKEND
from tests.support import check_exports_in_tensorflow_only_process
from tests.support import run_python
from tests.support import served_inputs
from tests.support import to_numpy

CASES = [(kind, state) for kind in KINDS for state in STATES]
OFFERED = [case for case in CASES if case not in NOT_OFFERED]
# Every offered case is exported from TensorFlow, and every case's `.keras`
# file crosses all three backends in the chain (`cross_backend_save.py`),
# so JAX and PyTorch export one case per kind, one state each, through the
# command `export_saved_model` runs there: the graph TensorFlow traces from
# a `.keras` file is the same whichever backend wrote it.
EXPORTED_FROM_EVERY_BACKEND = [
    ("backbone", "multi_task"),
    ("classifier", "slots"),
    ("causal_lm", "peft_table"),
    ("masked_lm", "table"),
]
TOLERANCE = 1e-5


def predictions(model, inputs):
    """The model's outputs on `inputs` as a dict of numpy arrays."""
    outputs = model.predict(inputs, verbose=0)
    if not isinstance(outputs, dict):
        outputs = {"output": outputs}
    return {name: np.asarray(value) for name, value in outputs.items()}


def assert_same_predictions(model, inputs, expected, atol=TOLERANCE):
    got = predictions(model, inputs)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=atol)


def prompt_state(model):
    ptuning = model._ptuning_backbone()
    return (
        ptuning.prompt_source,
        ptuning.placeholder_id,
        ptuning.task_names,
        ptuning.trainable_tasks,
        ptuning.prompt_config,
    )


def _same_placement(kind, state):
    """A fresh model that can take `state`'s adapter: same placement."""
    return build(kind, "slots" if state == "slots" else "encoder")


@pytest.mark.parametrize("kind,state", NOT_OFFERED)
def test_combinations_not_offered_are_refused(kind, state):
    with pytest.raises((TypeError, ValueError)):
        build(kind, state)


@pytest.mark.parametrize("kind,state", OFFERED)
def test_keras_file_round_trip(kind, state, tmp_path):
    """Predictions, prompt state and config survive `.keras`; a classifier
    also resumes training with its optimizer state."""
    model = build(kind, state)
    inputs = served_inputs(model, 3, 6, seed=0)
    if isinstance(model, PTuningTextClassifier):
        model.fit(inputs, np.array([0, 1, 2]), epochs=1, verbose=0)
    expected = predictions(model, inputs)
    config = model.get_config()
    again = type(model).from_config(json.loads(json.dumps(config)))
    assert json.dumps(again.get_config(), sort_keys=True) == json.dumps(
        config, sort_keys=True
    )
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert prompt_state(loaded) == prompt_state(model)
    assert_same_predictions(loaded, inputs, expected)
    np.testing.assert_array_equal(
        to_numpy(loaded._ptuning_backbone().prompt_table()),
        to_numpy(model._ptuning_backbone().prompt_table()),
    )
    if isinstance(model, PTuningTextClassifier):
        assert int(to_numpy(loaded.optimizer.iterations)) == 1
        for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
        loaded.fit(inputs, np.array([0, 1, 2]), epochs=1, verbose=0)
        assert int(to_numpy(loaded.optimizer.iterations)) == 2


@pytest.mark.parametrize("kind,state", OFFERED)
def test_adapter_round_trips(kind, state, tmp_path):
    """Our adapter and PEFT's carry the prompt into a fresh model, or are
    refused naming why."""
    model = build(kind, state)
    inputs = served_inputs(model, 3, 6, seed=0)
    expected = predictions(model, inputs)
    path = str(tmp_path / "a.adapter.h5")
    peft_dir = str(tmp_path / "peft")
    if state == "multi_task":
        with pytest.raises(ValueError, match="Adapters hold one task's"):
            model.save_adapter(path)
        with pytest.raises(ValueError, match="A PEFT adapter holds one"):
            save_peft_adapter(model, peft_dir)
        assert not os.path.exists(path) and not os.path.exists(peft_dir)
        return
    model.save_adapter(path)
    fresh = _same_placement(kind, state)
    fresh.load_adapter(path)
    assert fresh._ptuning_backbone().prompt_source == "table"
    assert_same_predictions(fresh, inputs, expected)
    if model._ptuning_backbone().prompt_source == "table":
        with pytest.raises(ValueError, match="include_encoder=True needs"):
            model.save_adapter(str(tmp_path / "b.h5"), include_encoder=True)
    if state == "slots":
        with pytest.raises(ValueError, match="only prepends virtual tokens"):
            save_peft_adapter(model, peft_dir)
        assert not os.path.exists(peft_dir)
        return
    save_peft_adapter(model, peft_dir)
    fresh = _same_placement(kind, state)
    load_peft_adapter(fresh, peft_dir)
    assert_same_predictions(fresh, inputs, expected)


@pytest.mark.slow  # TensorFlow child processes
def test_saved_models_are_served_by_tensorflow_alone(tmp_path):
    """Every offered combination (on JAX and PyTorch, one per kind) exports
    from this backend to a SavedModel that a TensorFlow-only process serves
    with the model's predictions, and the model is unchanged by it."""
    cases = OFFERED if BACKEND == "tensorflow" else EXPORTED_FROM_EVERY_BACKEND
    models = {case: build(*case) for case in cases}
    before = {
        case: (prompt_state(m), predictions(m, served_inputs(m, 2, 5, 3)))
        for case, m in models.items()
    }
    paths = {case: str(tmp_path / "_".join(case)) for case in cases}
    if BACKEND == "tensorflow":
        for case, model in models.items():
            keras_ptuning.export_saved_model(model, paths[case])
    else:
        # What `export_saved_model` does from JAX and PyTorch, for all the
        # models in one TensorFlow process.
        pairs = []
        for case, model in models.items():
            keras_file = str(tmp_path / ("_".join(case) + ".keras"))
            model.save(keras_file)
            pairs += [keras_file, paths[case]]
        run_python(["-m", "keras_ptuning.export", *pairs], "tensorflow")
    exports = [(models[case], paths[case]) for case in cases]
    results = check_exports_in_tensorflow_only_process(exports, tmp_path)
    for case, result in zip(cases, results):
        assert result.pop("imported") == [], case
        names = result.pop("inputs")
        model = models[case]
        expected_names = (
            model.input_names
            if isinstance(model, PTuningBackbone)
            else model.model_input_names
        )
        assert names == sorted(expected_names), case
        result.pop("outputs")
        result.pop("variable_shapes")
        assert result, case
        for name, difference in result.items():
            assert difference < 1e-4, (case, name, difference)
        state, outputs = before[case]
        model = models[case]
        assert prompt_state(model) == state, case
        inputs = served_inputs(model, 2, 5, 3)
        assert_same_predictions(model, inputs, outputs, atol=0)

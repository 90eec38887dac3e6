"""Every model kind in every prompt state keeps its prompt through every
save, load and export path (see `tests/round_trip_models.py`), or the path
refuses it with a clear error. `.keras` files across backends are in
`tests/cross_backend_save.py`, SavedModels in `export_test.py`."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning import PTuningTextClassifier
from keras_ptuning import load_peft_adapter
from keras_ptuning import save_peft_adapter
from tests.round_trip_models import NOT_OFFERED
from tests.round_trip_models import OFFERED
from tests.round_trip_models import assert_same_predictions
from tests.round_trip_models import build
from tests.round_trip_models import predictions
from tests.round_trip_models import prompt_state
from tests.support import BACKEND
from tests.support import served_inputs
from tests.support import to_numpy


def _same_placement(kind, state):
    """A fresh model that can take `state`'s adapter: same placement."""
    return build(kind, "slots" if state == "slots" else "encoder")


@pytest.mark.parametrize("kind,state", NOT_OFFERED)
def test_combinations_not_offered_are_refused(kind, state):
    with pytest.raises(
        (TypeError, ValueError), match=NOT_OFFERED[(kind, state)]
    ):
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


# What plain keras-hub `from_preset` a p-tuned preset loads through.
KERAS_HUB_BASES = {
    "backbone": keras_hub.models.Backbone,
    "classifier": keras_hub.models.TextClassifier,
    "causal_lm": keras_hub.models.CausalLM,
}


# Preset loading is backend-independent: TensorFlow's suite (the shortest)
# runs every case, the others every kind in the state a loaded prompt is.
PRESET_CASES = (
    OFFERED
    if BACKEND == "tensorflow"
    else [case for case in OFFERED if case[1] == "table"]
)


@pytest.mark.parametrize("kind,state", PRESET_CASES)
def test_preset_round_trip(kind, state, tmp_path):
    """`save_to_preset` writes a preset that `from_preset` loads with the
    same prompt state and predictions (keras-hub's own base class too)."""
    model = build(kind, state)
    inputs = served_inputs(model, 3, 6, seed=0)
    expected = predictions(model, inputs)
    model.save_to_preset(str(tmp_path))
    for cls in (type(model), KERAS_HUB_BASES.get(kind)):
        if cls is None:
            continue
        loaded = cls.from_preset(str(tmp_path))
        assert type(loaded) is type(model)
        assert prompt_state(loaded) == prompt_state(model)
        assert_same_predictions(loaded, inputs, expected)


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

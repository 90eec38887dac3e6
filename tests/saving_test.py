import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES
from tests.conftest import REPO_ROOT
from tests.conftest import make_inputs


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.mark.parametrize("family", ["bert", "distil_bert", "gemma", "llama"])
def test_classifier_keras_round_trip_resumes_training(family, tmp_path):
    model = PTuningTextClassifier(
        FAMILIES[family](),
        2,
        PromptEncoderConfig(3, encoder_reparameterization_type="LSTM"),
    )
    inputs = make_inputs(model.backbone.input_names, batch_size=4, length=5)
    labels = np.array([0, 1, 0, 1])
    model.fit(inputs, labels, batch_size=2, epochs=1, verbose=0)
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, PTuningTextClassifier)
    np.testing.assert_array_equal(
        loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0)
    )
    assert int(_numpy(loaded.optimizer.iterations)) == 2
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))
    assert not loaded.backbone.backbone.trainable
    loaded.fit(inputs, labels, batch_size=2, epochs=1, verbose=0)
    assert int(_numpy(loaded.optimizer.iterations)) == 4


def test_backbone_keras_round_trip(tmp_path):
    model = PTuningBackbone(FAMILIES["roberta"](), PromptEncoderConfig(2))
    path = str(tmp_path / "backbone.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, PTuningBackbone)
    inputs = make_inputs(model.input_names)
    np.testing.assert_array_equal(
        loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0)
    )


@pytest.mark.skipif(
    keras.config.backend() != "jax",
    reason="one JAX -> torch -> TensorFlow chain, run from the JAX suite",
)
def test_save_on_one_backend_load_on_another(tmp_path):
    script = os.path.join(REPO_ROOT, "tests", "cross_backend_save.py")
    chain = ["jax", "torch", "tensorflow"]
    for i, backend in enumerate(chain):
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO_ROOT)
        args = [sys.executable, script, str(tmp_path), str(i)]
        result = subprocess.run(args, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"ok {backend}" in result.stdout

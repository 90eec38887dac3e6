import os

import keras
import numpy as np
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES
from tests.support import REPO_ROOT
from tests.support import everywhere_or_on_tensorflow
from tests.support import make_inputs
from tests.support import run_on_one_backend
from tests.support import run_python
from tests.support import to_numpy


# An encoder and a decoder everywhere; what a `.keras` file keeps of the
# optimizer is the same for every family, and TensorFlow checks four.
@pytest.mark.parametrize(
    "family",
    everywhere_or_on_tensorflow(
        ["bert", "distil_bert", "gemma", "llama"],
        {"bert", "gemma"},
        "the optimizer state a .keras file keeps is family-independent; "
        "JAX and PyTorch resume bert and gemma",
    ),
)
def test_classifier_keras_round_trip_resumes_training(family, tmp_path):
    model = PTuningTextClassifier(
        FAMILIES[family](),
        2,
        prompt_config=PromptEncoderConfig(
            3, encoder_reparameterization_type="LSTM"
        ),
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
    assert int(to_numpy(loaded.optimizer.iterations)) == 2
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert not loaded.backbone.backbone.trainable
    loaded.fit(inputs, labels, batch_size=2, epochs=1, verbose=0)
    assert int(to_numpy(loaded.optimizer.iterations)) == 4


@pytest.mark.parametrize("jit_compile", ["auto", False])
def test_saved_jit_compile_is_the_argument_not_its_resolution(
    jit_compile, tmp_path
):
    # Keras saves what "auto" resolved to on the saving backend (True on
    # JAX), which would wrap the model in torch.compile when loaded on
    # PyTorch; the cross-backend chain checks the loaded model's setting.
    model = PTuningTextClassifier(
        FAMILIES["bert"](), 2, prompt_config=PromptEncoderConfig(2)
    )
    model.compile(jit_compile=jit_compile)
    assert model.get_compile_config()["jit_compile"] == jit_compile
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_compile_config()["jit_compile"] == jit_compile
    assert loaded.jit_compile == model.jit_compile


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


@pytest.mark.slow
@run_on_one_backend(
    "torch", "drives one JAX -> torch -> TensorFlow chain (lightest suite)"
)
def test_save_on_one_backend_load_on_another(tmp_path):
    script = os.path.join(REPO_ROOT, "tests", "cross_backend_save.py")
    backends = ["jax", "torch", "tensorflow"]
    last = len(backends) - 1
    for i, backend in enumerate(backends):
        result = run_python([script, tmp_path, i, last], backend=backend)
        assert f"ok {backend}" in result.stdout

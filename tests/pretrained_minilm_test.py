"""P-tuning the real pretrained all-MiniLM-L6-v2 on a few SST-2 rows."""

import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningTextClassifier
from keras_ptuning.datasets import load_sst2
from keras_ptuning.presets import minilm_preset_dir
from tests.support import REPO_ROOT
from tests.support import backbone_weights
from tests.support import run_on_one_backend

# Real checkpoints, real data or child processes of other backends.
pytestmark = pytest.mark.slow

SST2_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "sst2")


@run_on_one_backend(
    "tensorflow",
    "fit on real weights; the same fit path runs on tiny BERTs on every "
    "backend, and real weights run on every backend in "
    "pretrained_decoders_test (31 s here, 106 s on PyTorch)",
)
def test_fit_lowers_loss_and_leaves_minilm_unchanged():
    try:
        preset = minilm_preset_dir()
    except ImportError as error:
        pytest.skip(str(error))
    sentences, labels = load_sst2("train", data_dir=SST2_DIR, max_rows=16)
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    assert backbone.hidden_dim == 384
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        preset, sequence_length=16
    )
    model = PTuningTextClassifier(
        backbone,
        num_classes=2,
        prompt_config=PromptEncoderConfig(num_virtual_tokens=8),
        preprocessor=preprocessor,
        dropout=0.0,
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    frozen = backbone_weights(backbone)
    x, y = sentences, np.array(labels)
    before = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)
    after = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert after["loss"] < before["loss"]
    for a, b in zip(frozen, backbone_weights(backbone)):
        np.testing.assert_array_equal(a, b)

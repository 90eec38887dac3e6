"""The cloze example, on a tiny random masked LM saved as a local preset."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

import keras_ptuning  # noqa: F401  (registers the classes for loading)
from keras_ptuning.datasets import load_sst2
from tests.backbones import FAMILIES
from tests.support import REPO_ROOT
from tests.support import bert_tokenizer
from tests.support import run_on_one_backend
from tests.support import run_python

# Real checkpoints, real data or child processes of other backends.
pytestmark = pytest.mark.slow

SST2_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "sst2")


@run_on_one_backend(
    "tensorflow",
    "the example's masked-LM path is tested on every backend in "
    "ptuning_masked_lm_test.py; here its script runs once",
)
def test_sst2_cloze_example_on_a_tiny_preset(tmp_path):
    preset = str(tmp_path / "tiny_bert_mlm")
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
        bert_tokenizer(), sequence_length=32
    )
    keras_hub.models.BertMaskedLM(
        FAMILIES["bert"](), preprocessor=preprocessor
    ).save_to_preset(preset)
    output_dir = tmp_path / "run"
    run_python(
        [
            os.path.join(REPO_ROOT, "examples", "sst2_cloze.py"),
            "--preset",
            preset,
            "--data-dir",
            SST2_DIR,
            "--train-rows",
            "48",
            "--dev-rows",
            "24",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            # Two length buckets (8, 16): few shapes for JAX to compile.
            "--sequence-length",
            "16",
            "--output-dir",
            str(output_dir),
        ],
        timeout=600,
    )
    with open(output_dir / "results.json") as f:
        results = json.load(f)
    assert results["backend"] == keras.config.backend()
    assert results["num_virtual_tokens"] == 4
    # 4 x 16 embeddings + three 16 x 16 Dense layers: the prompt encoder only.
    assert results["trainable_params"] == 4 * 16 + 3 * (16 * 16 + 16)
    assert results["pretrained_head"] is False  # random, freshly built
    assert 1 <= len(results["history"]["loss"]) <= 2
    model = keras.saving.load_model(output_dir / "model.keras")
    scores = model.predict({"sentence": ["a witty film"]}, verbose=0)
    assert scores.shape == (1, 2) and model.activation is None  # logits
    # The reported accuracy is the saved model's, recomputed on raw text.
    dev_x, dev_y = load_sst2("dev", SST2_DIR, 24)
    scores = model.predict({"sentence": dev_x}, verbose=0)
    assert results["dev_accuracy"] == pytest.approx(
        np.mean(scores.argmax(-1) == np.array(dev_y))
    )

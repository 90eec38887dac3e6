"""The causal-LM SST-2 example, on a tiny random Llama 3 saved as a preset
with SmolLM2's kind of tokenizer (tied embeddings, its own special tokens)."""

import argparse
import json
import os
import sys

import keras
import keras_hub
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning.datasets import load_sst2
from tests.backbones import _ROPE
from tests.support import REPO_ROOT
from tests.support import byte_level_llama3_tokenizer
from tests.support import run_on_one_backend
from tests.support import run_python

# Real data and a child process.
pytestmark = pytest.mark.slow

SST2_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "sst2")
sys.path.insert(0, os.path.join(REPO_ROOT, "examples"))
import sst2_causal_lm  # noqa: E402


@run_on_one_backend(
    "tensorflow",
    "the example runs in a JAX child process; TensorFlow's suite ends "
    "first, and its checks of the child's numbers cross backends",
)
def test_sst2_causal_lm_example_on_a_tiny_preset(tmp_path):
    tokenizer = byte_level_llama3_tokenizer([" positive", " negative"])
    backbone = keras_hub.models.Llama3Backbone(
        **{**_ROPE, "vocabulary_size": tokenizer.vocabulary_size()},
        tie_word_embeddings=True,
    )
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer, add_start_token=False
    )
    preset = str(tmp_path / "tiny_llama3")
    keras_hub.models.Llama3CausalLM(backbone, preprocessor).save_to_preset(
        preset
    )
    output_dir = tmp_path / "run"
    arguments = {
        "--train-rows": 32,
        "--dev-rows": 16,
        "--epochs": 2,
        "--batch-size": 16,
        "--max-sentence-tokens": 8,
        "--samples": 2,
    }
    run_python(
        [
            os.path.join(REPO_ROOT, "examples", "sst2_causal_lm.py"),
            "--preset",
            preset,
            "--data-dir",
            SST2_DIR,
            "--output-dir",
            output_dir,
            *[str(v) for item in arguments.items() for v in item],
        ],
        backend="jax",
        timeout=600,
    )
    with open(output_dir / "results.json") as f:
        results = json.load(f)
    assert results["backend"] == "jax"
    # The template's words are the virtual tokens (byte-level: one a byte).
    tokenizer = keras_hub.models.CausalLM.from_preset(preset).preprocessor
    prefix, suffix = sst2_causal_lm.template_ids(tokenizer.tokenizer)
    n = len(prefix + suffix)
    # n x 16 embeddings + three 16 x 16 Dense layers: the prompt encoder only.
    assert results["trainable_params"] == n * 16 + 3 * (16 * 16 + 16)
    # Started from the text prompt: exactly its accuracy before training.
    assert results["dev_accuracy_text_start"] == results["dev_accuracy_before"]
    assert len(results["history"]["loss"]) == 2
    assert len(results["samples"]) == 2
    assert all(isinstance(s["after"], str) for s in results["samples"])

    # "Before" equals keras-hub's own full next-token logits, read at the
    # prompt's last token, on the same ids.
    causal_lm = keras_hub.models.CausalLM.from_preset(preset)
    label_ids = sst2_causal_lm.label_token_ids(causal_lm.preprocessor.tokenizer)
    assert len(set(label_ids)) == 2
    args = argparse.Namespace(max_sentence_tokens=8)
    dev_x, dev_y = load_sst2("dev", SST2_DIR, 16)
    x, _, _, positions = sst2_causal_lm.encode(
        causal_lm.preprocessor, dev_x, dev_y, label_ids, args
    )
    logits = keras.ops.convert_to_numpy(causal_lm(x))
    scores = logits[np.arange(16), positions][:, label_ids]
    expected = np.mean(scores.argmax(-1) == np.array(dev_y))
    assert results["dev_accuracy_before"] == pytest.approx(expected)

    # The adapter resumes into a fresh model of the same shape.
    model = keras_ptuning.PTuningCausalLM(
        causal_lm.backbone,
        prompt_config=keras_ptuning.PromptEncoderConfig(n, prompt_init="text"),
        placeholder_id=-1,
    )
    model.load_adapter(str(output_dir / "adapter.adapter.h5"))
    assert model.backbone.prompt_source == "encoder"
    # "After" is that model's accuracy, from its full next-token logits.
    x, _, _, positions = sst2_causal_lm.encode(
        causal_lm.preprocessor, dev_x, dev_y, label_ids, args, slots=True
    )
    logits = keras.ops.convert_to_numpy(model(x))
    scores = logits[np.arange(16), positions][:, label_ids]
    assert results["dev_accuracy_after"] == pytest.approx(
        np.mean(scores.argmax(-1) == np.array(dev_y))
    )
    assert (output_dir / "sst2_causal_lm.png").stat().st_size > 0

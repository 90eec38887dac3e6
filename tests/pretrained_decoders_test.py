"""The real decoders of `keras_ptuning.presets`: keras-hub's logits equal
transformers' on the same converted weights."""

import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning import presets
from tests.support import run_on_one_backend

# Real checkpoints (converted once per machine into the user cache).
pytestmark = pytest.mark.slow

# Largest difference measured over the sentences below (float32, logits
# up to ~29 in size): SmolLM2 1.6e-4 (JAX), 7e-5 (TensorFlow), 6e-5
# (PyTorch); Gemma 3 4.5e-5. keras-hub's default RMS-norm epsilon instead
# of SmolLM2's 1e-5 moves them by 1.9e-2.
ATOL = 5e-4
# Each model's greedy continuation of a fact, as transformers gives it.
CASES = {
    "smollm2": ("The capital of France is", " Paris"),
    "gemma3": ("Paris is the capital of", " France"),
}
OTHER_TEXT = "Review: a gripping, funny and moving film. Sentiment: positive"


@pytest.mark.parametrize(
    "name",
    [
        "smollm2",
        pytest.param(
            "gemma3",
            marks=run_on_one_backend(
                "tensorflow",
                "loading Gemma 3 costs 25 s a backend; SmolLM2 checks the "
                "same keras-hub code paths on every backend",
            ),
        ),
    ],
)
def test_keras_hub_logits_match_transformers(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    preset_dir = getattr(presets, f"{name}_preset_dir")
    causal_lm = keras_hub.models.CausalLM.from_preset(preset_dir())
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        preset_dir("transformers"), dtype=torch.float32
    ).eval()
    fact, answer = CASES[name]
    # Two lengths in one batch: the padded positions must not matter.
    inputs = causal_lm.preprocessor.generate_preprocess(
        [fact, OTHER_TEXT], sequence_length=24
    )
    inputs = {
        k: keras.ops.convert_to_numpy(inputs[k])
        for k in ("token_ids", "padding_mask")
    }
    mask = inputs["padding_mask"].astype(bool)
    assert 0 < mask[0].sum() < mask[1].sum() < 24

    hidden = causal_lm.backbone(inputs)
    logits = keras.ops.convert_to_numpy(
        causal_lm.backbone.token_embedding(hidden, reverse=True)
    )
    with torch.no_grad():
        expected = reference(
            input_ids=torch.as_tensor(inputs["token_ids"]),
            attention_mask=torch.as_tensor(inputs["padding_mask"]),
        ).logits.numpy()
    np.testing.assert_allclose(logits[mask], expected[mask], atol=ATOL, rtol=0)

    last = mask[0].sum() - 1
    tokenizer = causal_lm.preprocessor.tokenizer
    assert tokenizer.detokenize([int(expected[0, last].argmax())]) == answer
    assert int(logits[0, last].argmax()) == int(expected[0, last].argmax())

"""The real decoders of `keras_ptuning.presets`: keras-hub's logits equal
transformers' on the same converted weights, and PEFT's causal-LM P-tuning
adapters cross both ways on SmolLM2."""

import functools

import keras
import keras_hub
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningCausalLM
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


@functools.cache
def _causal_lm(name):
    preset_dir = getattr(presets, f"{name}_preset_dir")
    return keras_hub.models.CausalLM.from_preset(preset_dir())


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
    causal_lm = _causal_lm(name)
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


# PEFT against keras_ptuning on SmolLM2, next-token logits at every real
# position (PEFT's outputs start with its virtual tokens' positions).
NUM_TOKENS = 5
# Measured largest differences: JAX 4.3e-3 (a fresh encoder's prompt; 9e-5
# for PEFT's trained one), TensorFlow 1.6e-4, PyTorch 6.7e-5, logits up to
# 33 in size. keras-hub on JAX against transformers differs most: XLA:CPU's
# own math functions, not the prompt (the same model from its table and
# from its encoder agree exactly).
PEFT_ATOL = 1e-2
PEFT_TEXTS = ["The capital of France is", "Review: a dull, tired film."]


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2 in keras-hub and in transformers, and a padded batch."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    causal_lm = _causal_lm("smollm2")
    inputs = causal_lm.preprocessor.generate_preprocess(
        PEFT_TEXTS, sequence_length=12
    )
    inputs = {
        k: keras.ops.convert_to_numpy(inputs[k]).astype("int32")
        for k in ("token_ids", "padding_mask")
    }

    def hf_model():
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_pretrained(
            presets.smollm2_preset_dir("transformers"), dtype=torch.float32
        ).eval()

    return causal_lm.backbone, hf_model, inputs


def _peft_logits(peft_model, inputs):
    import torch

    with torch.no_grad():
        logits = peft_model(
            input_ids=torch.as_tensor(inputs["token_ids"]),
            attention_mask=torch.as_tensor(inputs["padding_mask"]),
        ).logits.numpy()
    return logits[:, NUM_TOKENS:]


def _assert_close_at_real_positions(ours, theirs, inputs):
    mask = inputs["padding_mask"].astype(bool)
    assert ours.shape == theirs.shape == inputs["token_ids"].shape + (49152,)
    gap = float(np.abs(ours[mask] - theirs[mask]).max())
    print({"peft_vs_keras_logits": gap})  # the README's figure
    assert gap < PEFT_ATOL
    np.testing.assert_array_equal(
        ours[mask].argmax(-1), theirs[mask].argmax(-1)
    )


def test_peft_causal_lm_adapter_loads_with_matching_logits(smollm2, tmp_path):
    peft = pytest.importorskip("peft")
    import torch

    backbone, hf_model, inputs = smollm2
    config = peft.PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=NUM_TOKENS,
        encoder_hidden_size=64,
    )
    peft_model = peft.get_peft_model(hf_model(), config)
    peft_model.train()
    optimizer = torch.optim.Adam(
        [p for p in peft_model.parameters() if p.requires_grad], lr=1e-2
    )
    token_ids = torch.as_tensor(inputs["token_ids"]).long()
    mask = torch.as_tensor(inputs["padding_mask"])
    labels = token_ids.masked_fill(mask == 0, -100)
    for _ in range(2):
        loss = peft_model(
            input_ids=token_ids, attention_mask=mask, labels=labels
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    directory = str(tmp_path / "adapter")
    peft_model.save_pretrained(directory)

    model = keras_ptuning.load_peft_adapter(backbone, directory)
    assert isinstance(model, PTuningCausalLM)
    assert model.backbone.prompt_source == "table"
    ours = keras.ops.convert_to_numpy(model(inputs))
    _assert_close_at_real_positions(
        ours, _peft_logits(peft_model, inputs), inputs
    )
    # The adapter's prompt, exactly.
    from safetensors.numpy import load_file

    table = load_file(f"{directory}/adapter_model.safetensors")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.backbone.prompt_table()),
        table["prompt_embeddings"],
    )


def test_our_causal_lm_adapter_loads_in_peft(smollm2, tmp_path):
    peft = pytest.importorskip("peft")

    backbone, hf_model, inputs = smollm2
    model = PTuningCausalLM(
        backbone,
        prompt_config=PromptEncoderConfig(NUM_TOKENS, encoder_hidden_size=32),
    )
    directory = str(tmp_path / "ours")
    keras_ptuning.save_peft_adapter(model, directory)
    with open(f"{directory}/adapter_config.json") as f:
        assert '"task_type": "CAUSAL_LM"' in f.read()
    peft_model = peft.PeftModel.from_pretrained(hf_model(), directory).eval()
    ours = keras.ops.convert_to_numpy(model(inputs))
    _assert_close_at_real_positions(
        ours, _peft_logits(peft_model, inputs), inputs
    )

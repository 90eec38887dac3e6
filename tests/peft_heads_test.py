"""PEFT `SEQ_CLS` heads, per family, against PEFT itself (needs peft, torch
and transformers).

Each family's tiny HF `*ForSequenceClassification` model is converted to
keras-hub by keras-hub's own converter; PEFT trains nothing, its prompt
encoder and head get random weights, and the logits of HF+PEFT are the
reference. HF's one-layer heads (BERT's `classifier` on the pooler,
decoder-only models' bias-free `score` on the last token) cross both ways;
DistilBERT's and RoBERTa's two-layer heads have no place in a
`PTuningTextClassifier` and are refused, never loaded in part.

Mistral's head is Llama's, but keras-hub 0.32's Mistral port differs from
HF's by 7e-4 on these weights before any prompt, so it is not compared here.
Gemma's prompts, which the two libraries scale differently, are compared in
`peft_gemma_test.py`.
"""

import copy
import os

import keras_hub
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES
from tests.support import to_numpy

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

VOCABULARY_SIZE = 64
HIDDEN_DIM = 16
NUM_CLASSES = 3
NUM_TOKENS = 3
TOLERANCE = 1e-5

_ENCODER = dict(
    vocab_size=VOCABULARY_SIZE,
    hidden_size=HIDDEN_DIM,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
)
_DECODER = dict(
    vocab_size=VOCABULARY_SIZE,
    hidden_size=HIDDEN_DIM,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    intermediate_size=32,
    tie_word_embeddings=True,
)
# Family: (config class, model class, config). BERT uses the tanh GELU that
# keras-hub's port uses, so that the ports agree to float32 rounding.
HF_MODELS = {
    "bert": (
        "BertConfig",
        "BertForSequenceClassification",
        dict(_ENCODER, max_position_embeddings=32, hidden_act="gelu_new"),
    ),
    "distil_bert": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        dict(
            vocab_size=VOCABULARY_SIZE,
            dim=HIDDEN_DIM,
            n_layers=2,
            n_heads=2,
            hidden_dim=32,
            max_position_embeddings=32,
        ),
    ),
    "roberta": (
        "RobertaConfig",
        "RobertaForSequenceClassification",
        dict(_ENCODER, max_position_embeddings=34),
    ),
    "gpt2": (
        "GPT2Config",
        "GPT2ForSequenceClassification",
        dict(
            vocab_size=VOCABULARY_SIZE,
            n_embd=HIDDEN_DIM,
            n_layer=2,
            n_head=2,
            n_positions=32,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "llama": ("LlamaConfig", "LlamaForSequenceClassification", _DECODER),
    "qwen": ("Qwen2Config", "Qwen2ForSequenceClassification", _DECODER),
}
ONE_LAYER_HEADS = ["bert", "gpt2", "llama", "qwen"]
DECODERS = {"gpt2", "llama", "qwen"}


def _hf_model(family):
    config_class, model_class, config = HF_MODELS[family]
    config = getattr(transformers, config_class)(
        **config, num_labels=NUM_CLASSES, pad_token_id=0
    )
    torch.manual_seed(0)
    return getattr(transformers, model_class)(config).eval()


def _keras_backbone(hf_model, directory):
    """The keras-hub port of `hf_model`'s weights, by keras-hub's
    converter."""
    os.makedirs(directory)
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    safetensors_torch.save_file(
        {k: v.detach().clone() for k, v in state.items()},
        os.path.join(directory, "model.safetensors"),
        metadata={"format": "pt"},
    )
    hf_model.config.to_json_file(os.path.join(directory, "config.json"))
    return keras_hub.models.Backbone.from_preset(directory)


def _inputs(family):
    """Two rows, one padded: on the right for encoders, on the left for
    decoders (PEFT runs HF's decoders on `inputs_embeds`, where they read
    the last position whatever the padding)."""
    rng = np.random.default_rng(0)
    token_ids = rng.integers(3, VOCABULARY_SIZE, (2, 6))
    padding_mask = np.ones((2, 6), "int64")
    if family in DECODERS:
        padding_mask[1, :2] = 0
    else:
        padding_mask[1, 4:] = 0
    token_ids = np.where(padding_mask, token_ids, 0)
    return token_ids, padding_mask


def _keras_inputs(family, backbone):
    token_ids, padding_mask = _inputs(family)
    inputs = {
        "token_ids": token_ids.astype("int32"),
        "padding_mask": padding_mask.astype("int32"),
    }
    if "segment_ids" in backbone.input.keys():
        inputs["segment_ids"] = np.zeros_like(inputs["token_ids"])
    return inputs


@torch.no_grad()
def _peft_logits(peft_model, family):
    token_ids, padding_mask = _inputs(family)
    return peft_model(
        input_ids=torch.from_numpy(token_ids),
        attention_mask=torch.from_numpy(padding_mask),
    ).logits.numpy()


def _peft_adapter(hf_model, directory, task_type="SEQ_CLS"):
    """A PEFT P-tuning adapter (`SEQ_CLS`: with a head) with random prompt
    encoder and head; returns the PEFT model."""
    config = peft.PromptEncoderConfig(
        task_type=task_type,
        num_virtual_tokens=NUM_TOKENS,
        encoder_hidden_size=8,
        token_dim=HIDDEN_DIM,
        num_attention_heads=2,
        num_layers=2,
    )
    peft_model = peft.get_peft_model(copy.deepcopy(hf_model), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn_like(parameter) * 0.5)
    peft_model.eval()
    peft_model.save_pretrained(directory)
    return peft_model


def _weights(model):
    return [to_numpy(v) for v in model.weights]


def _assert_unchanged(before, model):
    after = _weights(model)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family", ONE_LAYER_HEADS)
def test_peft_head_loads_with_peft_logits(family, tmp_path):
    hf_model = _hf_model(family)
    backbone = _keras_backbone(hf_model, str(tmp_path / "hf"))
    directory = str(tmp_path / "adapter")
    expected = _peft_logits(_peft_adapter(hf_model, directory), family)
    model = keras_ptuning.load_peft_adapter(backbone, directory)
    assert isinstance(model, PTuningTextClassifier)
    assert model.pooling == ("last" if family in DECODERS else "pooled")
    ours = to_numpy(model(_keras_inputs(family, backbone)))
    # A head read wrong or left untrained misses by far more (logits ~1).
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE)


@pytest.mark.parametrize("family", ONE_LAYER_HEADS)
def test_our_head_loads_in_peft_with_our_logits(family, tmp_path):
    hf_model = _hf_model(family)
    backbone = _keras_backbone(hf_model, str(tmp_path / "hf"))
    model = PTuningTextClassifier(
        backbone,
        NUM_CLASSES,
        prompt_config=PromptEncoderConfig(NUM_TOKENS, encoder_hidden_size=8),
        pooling=keras_ptuning.hf_pooling(backbone),
    )
    rng = np.random.default_rng(2)
    head = {
        "kernel": rng.normal(size=(HIDDEN_DIM, NUM_CLASSES)),
        # HF's decoder-only heads (`score`) have no bias.
        "bias": np.zeros(NUM_CLASSES)
        if family in DECODERS
        else rng.normal(size=NUM_CLASSES),
    }
    model.set_trained_weights(
        rng.normal(size=(NUM_TOKENS, HIDDEN_DIM)).astype("float32"),
        {k: v.astype("float32") for k, v in head.items()},
    )
    directory = str(tmp_path / "ours")
    keras_ptuning.save_peft_adapter(model, directory)
    peft_model = peft.PeftModel.from_pretrained(
        copy.deepcopy(hf_model), directory
    ).eval()
    expected = _peft_logits(peft_model, family)
    ours = to_numpy(model(_keras_inputs(family, backbone)))
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE)


@pytest.mark.parametrize(
    "family,tensors",
    [
        ("distil_bert", "base_model.pre_classifier.bias"),
        ("roberta", "base_model.classifier.dense.bias"),
    ],
)
def test_two_layer_peft_heads_are_refused(family, tensors, tmp_path):
    """DistilBERT's `pre_classifier` -> ReLU -> `classifier` and RoBERTa's
    `classifier.dense` -> tanh -> `classifier.out_proj` are refused, into a
    plain backbone (no model comes back without its head) as into a
    classifier (left unchanged)."""
    directory = str(tmp_path / "adapter")
    _peft_adapter(_hf_model(family), directory)
    backbone = FAMILIES[family]()
    with pytest.raises(ValueError, match=f"{tensors}.*two layers"):
        keras_ptuning.load_peft_adapter(backbone, directory)
    model = PTuningTextClassifier(
        backbone,
        NUM_CLASSES,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        pooling=keras_ptuning.hf_pooling(backbone),
    )
    before = _weights(model)
    with pytest.raises(ValueError, match=f"{tensors}.*two layers"):
        keras_ptuning.load_peft_adapter(model, directory)
    _assert_unchanged(before, model)


@pytest.mark.parametrize("family", ["distil_bert", "roberta"])
def test_heads_peft_would_read_wrong_are_not_written(family, tmp_path):
    """HF's DistilBERT and RoBERTa heads are two layers on the first token:
    a one-layer head written for them would load in PEFT as part of a head."""
    backbone = FAMILIES[family]()
    model = PTuningTextClassifier(
        backbone,
        NUM_CLASSES,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        pooling="first",
    )
    directory = tmp_path / "peft"
    with pytest.raises(ValueError, match="two layers.*model.pooling='first'"):
        keras_ptuning.save_peft_adapter(model, str(directory))
    assert not directory.exists()


def test_a_decoder_head_with_a_bias_is_not_written(tmp_path):
    """HF's decoder-only heads (`score`) have no bias; PEFT would drop ours."""
    model = PTuningTextClassifier(
        FAMILIES["gpt2"](),
        NUM_CLASSES,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
    )
    head = {name: to_numpy(v) for name, v in model._head_variables().items()}
    head["bias"] = np.array([0.0, 0.5, 0.0], "float32")
    model.set_trained_weights(
        np.ones((NUM_TOKENS, HIDDEN_DIM), "float32"), head
    )
    directory = tmp_path / "peft"
    with pytest.raises(ValueError, match="no bias.*max \\|bias\\| = 0.5"):
        keras_ptuning.save_peft_adapter(model, str(directory))
    assert not directory.exists()


def test_a_head_of_another_family_is_refused(tmp_path):
    """A BERT head (`classifier`, on the pooler) into a decoder, and a
    decoder's `score` into BERT: each reads what the other never trained
    on."""
    bert = PTuningTextClassifier(
        FAMILIES["bert"](),
        NUM_CLASSES,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        pooling="pooled",
    )
    keras_ptuning.save_peft_adapter(bert, str(tmp_path / "bert"))
    gpt2 = PTuningTextClassifier(
        FAMILIES["gpt2"](),
        NUM_CLASSES,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
    )
    keras_ptuning.save_peft_adapter(gpt2, str(tmp_path / "gpt2"))
    with pytest.raises(ValueError, match="`classifier` head.*GPT2Backbone"):
        keras_ptuning.load_peft_adapter(
            FAMILIES["gpt2"](), str(tmp_path / "bert")
        )
    before = _weights(gpt2)
    with pytest.raises(ValueError, match="`classifier` head.*GPT2Backbone"):
        keras_ptuning.load_peft_adapter(gpt2, str(tmp_path / "bert"))
    _assert_unchanged(before, gpt2)
    with pytest.raises(ValueError, match="`score` head.*BertBackbone"):
        keras_ptuning.load_peft_adapter(bert, str(tmp_path / "gpt2"))

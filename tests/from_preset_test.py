"""`from_preset` on every task: from a base keras-hub preset (tiny ones,
saved here) as keras-hub's own tasks do, and the errors."""

import json
import os

import h5py
import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningCausalLMClassifier
from keras_ptuning import PTuningMaskedLM
from keras_ptuning import PTuningNextTokenLM
from keras_ptuning import PTuningTextClassifier
from tests.backbones import _ENCODER
from tests.backbones import _ROPE
from tests.support import backbone_weights
from tests.support import bert_tokenizer
from tests.support import byte_level_llama3_tokenizer
from tests.support import run_on_one_backend

SENTENCES = ["the film was good", "a bad plot"]


@pytest.fixture(scope="module")
def bert_preset(tmp_path_factory):
    """A tiny BERT masked LM preset (backbone, tokenizer, preprocessor)."""
    path = str(tmp_path_factory.mktemp("bert"))
    backbone = keras_hub.models.BertBackbone(**_ENCODER)
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
        bert_tokenizer(), sequence_length=32
    )
    keras_hub.models.BertMaskedLM(backbone, preprocessor).save_to_preset(path)
    return path, backbone


@pytest.fixture(scope="module")
def llama3_preset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llama3"))
    tokenizer = byte_level_llama3_tokenizer([" yes", " no", " the"])
    backbone = keras_hub.models.Llama3Backbone(
        **{**_ROPE, "vocabulary_size": tokenizer.vocabulary_size()},
        tie_word_embeddings=True,
    )
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer, sequence_length=16, add_start_token=False
    )
    keras_hub.models.Llama3CausalLM(backbone, preprocessor).save_to_preset(path)
    return path, backbone


def _same_weights(model_backbone, reference):
    for a, b in zip(
        backbone_weights(model_backbone), backbone_weights(reference)
    ):
        np.testing.assert_array_equal(a, b)


def test_text_classifier_from_a_base_preset(bert_preset):
    path, reference = bert_preset
    model = PTuningTextClassifier.from_preset(
        path, num_classes=3, num_virtual_tokens=4
    )
    assert model.backbone.num_virtual_tokens == 4
    _same_weights(model.backbone.backbone, reference)
    # The preset's 32 positions, 4 of them the prepended prompt's.
    assert model.preprocessor.sequence_length == 28
    assert model.predict(SENTENCES, verbose=0).shape == (2, 3)
    assert model.backbone.backbone.trainable is False
    config = PromptEncoderConfig(2, encoder_reparameterization_type="LSTM")
    model = PTuningTextClassifier.from_preset(
        path, num_classes=2, prompt_config=config, sequence_length=12
    )
    assert model.backbone.prompt_config.encoder_reparameterization_type == (
        "LSTM"
    )
    assert model.preprocessor.sequence_length == 12
    # A template with slots sets the prompt and takes its fields.
    model = PTuningTextClassifier.from_preset(
        path, num_classes=2, template="{sentence} [P:3] it was"
    )
    assert model.backbone.uses_slots and model.backbone.num_virtual_tokens == 3
    assert model.predict({"sentence": SENTENCES}, verbose=0).shape == (2, 2)


@run_on_one_backend(
    "tensorflow",
    "loading presets is backend-independent; the tasks' calls are tested on "
    "every backend in their own files",
)
def test_masked_lm_from_a_base_preset(bert_preset):
    path, reference = bert_preset
    model = PTuningMaskedLM.from_preset(
        path,
        template="{sentence} [P:2] it was [MASK] .",
        verbalizer={"neg": ["bad"], "pos": ["good"]},
    )
    _same_weights(model.backbone.backbone, reference)
    scores = model.predict({"sentence": SENTENCES}, verbose=0)
    assert scores.shape == (2, 2) and np.isfinite(scores).all()


@run_on_one_backend(
    "tensorflow",
    "loading presets is backend-independent; the tasks' calls are tested on "
    "every backend in their own files",
)
def test_decoder_tasks_from_a_base_preset(llama3_preset):
    path, reference = llama3_preset
    lm = PTuningCausalLM.from_preset(path, num_virtual_tokens=2)
    _same_weights(lm.backbone.backbone, reference)
    assert lm.preprocessor.sequence_length == 16
    assert isinstance(lm.generate(["the"], max_length=6), list)
    next_token = PTuningNextTokenLM.from_preset(
        path, template="{subject} [P:2]"
    )
    assert next_token.backbone.prompt_config.prompt_init == "random"
    top = next_token.predict_top_k({"subject": ["yes"]}, top_k=2)
    assert top["token_ids"].shape == (1, 2)
    classifier = PTuningCausalLMClassifier.from_preset(
        path,
        template='{text} [P:" the"]',
        choices={"no": " no", "yes": " yes"},
    )
    assert classifier.backbone.prompt_config.prompt_init == "text"
    assert classifier.predict({"text": SENTENCES}, verbose=0).shape == (2, 2)


def test_from_preset_errors(bert_preset, tmp_path):
    path, _ = bert_preset
    with pytest.raises(ValueError, match="needs the prompt"):
        PTuningTextClassifier.from_preset(path, num_classes=2)
    with pytest.raises(ValueError, match="not both"):
        PTuningTextClassifier.from_preset(
            path,
            num_classes=2,
            num_virtual_tokens=2,
            prompt_config=PromptEncoderConfig(2),
        )
    with pytest.raises(TypeError, match="`template` must be a str"):
        PTuningTextClassifier.from_preset(path, num_classes=2, template=3)
    with pytest.raises(ValueError, match="sequence_length=40"):
        PTuningTextClassifier.from_preset(
            path, num_classes=2, num_virtual_tokens=2, sequence_length=40
        )
    model = PTuningTextClassifier.from_preset(
        path, num_classes=2, num_virtual_tokens=2
    )
    model.save_to_preset(str(tmp_path))
    with pytest.raises(ValueError, match="p-tuned PTuningTextClassifier"):
        PTuningTextClassifier.from_preset(str(tmp_path), num_virtual_tokens=3)
    loaded = PTuningTextClassifier.from_preset(str(tmp_path))
    np.testing.assert_allclose(
        loaded.predict(SENTENCES, verbose=0),
        model.predict(SENTENCES, verbose=0),
        atol=1e-6,
    )


@run_on_one_backend(
    "tensorflow",
    "loading presets is backend-independent; templates are tested on every "
    "backend in their own file",
)
def test_prompt_template_from_preset_as_keras_hub_preprocessors(
    bert_preset, tmp_path
):
    from keras_ptuning import PromptTemplate

    path, _ = bert_preset
    template = "{sentence} [P:2] it was [MASK] ."
    # A new template over a base preset's tokenizer.
    fresh = PromptTemplate.from_preset(path, template, sequence_length=12)
    assert fresh.template == template and fresh.sequence_length == 12
    # A base preset's own preprocessor is keras-hub's, not a template.
    with pytest.raises(ValueError, match="found: BertMaskedLMPreprocessor"):
        PromptTemplate.from_preset(path)
    with pytest.raises(TypeError, match="`template` must be a str"):
        PromptTemplate.from_preset(path, template=3)
    # The template a p-tuned task saved loads back whole, with overrides.
    model = PTuningMaskedLM.from_preset(
        path, template=template, verbalizer={"neg": ["bad"], "pos": ["good"]}
    )
    model.save_to_preset(str(tmp_path))
    loaded = PromptTemplate.from_preset(str(tmp_path))
    assert loaded.get_config() == model.preprocessor.get_config()
    inputs = {"sentence": SENTENCES}
    for name, value in model.preprocessor(inputs).items():
        np.testing.assert_array_equal(loaded(inputs)[name], value)
    shorter = PromptTemplate.from_preset(str(tmp_path), sequence_length=10)
    assert shorter.sequence_length == 10


def _point_at(preset, base):
    """Makes a prompt-only preset name another base (as a user's typo or a
    moved checkpoint would)."""
    for name, keys in (
        ("config.json", ("config", "backbone")),
        ("task.json", ("config", "backbone", "config", "backbone")),
    ):
        path = os.path.join(preset, name)
        with open(path) as f:
            config = json.load(f)
        entry = config
        for key in keys:
            entry = entry[key]
        entry["base_preset"] = base
        with open(path, "w") as f:
            json.dump(config, f)


def _stored_shapes(weights_file):
    shapes = []
    with h5py.File(weights_file, "r") as f:
        f.visititems(
            lambda name, item: (
                shapes.append(item.shape)
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return shapes


def test_prompt_only_presets(bert_preset, llama3_preset, tmp_path):
    """`save_to_preset(dir, base_preset=)` writes kilobytes (no backbone
    weights, no vocabulary) in keras-hub's preset files, which load back
    through our and keras-hub's `from_preset` with the same predictions,
    refusing another base."""
    path, _ = bert_preset
    model = PTuningTextClassifier.from_preset(
        path, num_classes=2, num_virtual_tokens=3
    )
    model.fit(SENTENCES, np.array([1, 0]), epochs=1, verbose=0)
    expected = model.predict(SENTENCES, verbose=0)
    small = str(tmp_path / "small")
    model.save_to_preset(small, base_preset=path)
    # What `keras_hub.upload_preset` requires is there; the backbone's
    # weights and the tokenizer's vocabulary (`assets/`) are not.
    files = set(os.listdir(small))
    assert {"config.json", "model.weights.h5", "task.json"} <= files
    assert "assets" not in files
    # The weights file holds the collapsed prompt table, nothing else: the
    # loaded model runs on it, as one loading a prompt-only adapter does.
    assert _stored_shapes(os.path.join(small, "model.weights.h5")) == [
        (3, model.backbone.hidden_dim)
    ]
    for cls in (PTuningTextClassifier, keras_hub.models.TextClassifier):
        loaded = cls.from_preset(small)
        assert type(loaded) is PTuningTextClassifier
        assert loaded.backbone.prompt_source == "table"
        np.testing.assert_allclose(
            loaded.predict(SENTENCES, verbose=0), expected, atol=1e-6
        )
    assert model.backbone.prompt_source == "encoder"  # saving changed none
    # The backbone alone, from the task's preset or its own.
    model.backbone.save_to_preset(str(tmp_path / "backbone"), base_preset=path)
    for preset in (small, str(tmp_path / "backbone")):
        backbone = keras_hub.models.Backbone.from_preset(preset)
        assert backbone.base_preset == os.path.abspath(path)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(backbone.prompt_table()),
            keras.ops.convert_to_numpy(model.backbone.prompt_table()),
            atol=1e-6,
        )
    # With the encoder, training resumes where it stopped.
    resumable = str(tmp_path / "resumable")
    model.save_to_preset(resumable, base_preset=path, include_encoder=True)
    assert sorted(
        _stored_shapes(os.path.join(resumable, "model.weights.h5"))
    ) == sorted(tuple(v.shape) for v in model.backbone.prompt_injection.weights)
    loaded = PTuningTextClassifier.from_preset(resumable)
    assert loaded.backbone.prompt_source == "encoder"
    np.testing.assert_allclose(
        loaded.predict(SENTENCES, verbose=0), expected, atol=1e-6
    )
    with pytest.raises(ValueError, match="include_encoder` is for prompt"):
        model.save_to_preset(resumable, include_encoder=True)
    # A decoder with a prompt template: the template comes back whole, its
    # vocabulary from the base.
    llama_path, _ = llama3_preset
    classifier = PTuningCausalLMClassifier.from_preset(
        llama_path,
        template="{text} [P:2] answer:",
        choices={"no": " no", "yes": " yes"},
    )
    classifier.save_to_preset(str(tmp_path / "lm"), base_preset=llama_path)
    loaded = PTuningCausalLMClassifier.from_preset(str(tmp_path / "lm"))
    np.testing.assert_allclose(
        loaded.predict({"text": SENTENCES}, verbose=0),
        classifier.predict({"text": SENTENCES}, verbose=0),
        atol=1e-6,
    )
    # Another checkpoint of the same architecture, another class.
    other = str(tmp_path / "other")
    keras_hub.models.BertBackbone(**_ENCODER).save_to_preset(other)
    _point_at(small, other)
    with pytest.raises(ValueError, match="another checkpoint"):
        PTuningTextClassifier.from_preset(small)
    _point_at(small, llama_path)
    with pytest.raises(ValueError, match="trained on a BertBackbone"):
        PTuningTextClassifier.from_preset(small)
    # The prompt weights alone refuse a model on another backbone.
    other_model = PTuningBackbone(
        keras_hub.models.Backbone.from_preset(other), PromptEncoderConfig(3)
    )
    with pytest.raises(ValueError, match="another checkpoint"):
        other_model.load_weights(os.path.join(small, "model.weights.h5"))


def test_prompt_only_preset_errors(llama3_preset, tmp_path):
    path, _ = llama3_preset
    lm = PTuningCausalLM.from_preset(path, num_virtual_tokens=2)
    target = str(tmp_path / "small")
    with pytest.raises(TypeError, match="base_preset=3"):
        lm.save_to_preset(target, base_preset=3)
    lm.backbone.enable_lora(2)
    with pytest.raises(ValueError, match="LoRA weights sit in its backbone"):
        lm.save_to_preset(target, base_preset=path)
    # Nothing written, and no staging folder left behind.
    assert os.listdir(str(tmp_path)) == []

"""`PTuningMaskedLM` and `Verbalizer`: cloze-style P-tuning."""

import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PromptTemplate
from keras_ptuning import PTuningMaskedLM
from keras_ptuning import Verbalizer
from tests.backbones import FAMILIES
from tests.support import BERT_VOCAB
from tests.support import backbone_weights
from tests.support import bert_tokenizer
from tests.support import make_identity_prompt
from tests.support import run_on_one_backend
from tests.support import to_numpy

MASKED_LMS = {
    "bert": keras_hub.models.BertMaskedLM,
    "distil_bert": keras_hub.models.DistilBertMaskedLM,
    "roberta": keras_hub.models.RobertaMaskedLM,
}
VIRTUAL_IDS = [21, 22, 23]
# BERT_VOCAB ids: bad 10, terrible 17 | good 9, great 8.
VERBALIZER = {"negative": ["bad", "terrible"], "positive": ["good", "great"]}
WORD_IDS = [[10, 17], [9, 8]]
SENTENCES = ["the movie was great", "a terrible film", "it was bad", "good"]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _masked_lm(family="bert"):
    return MASKED_LMS[family](FAMILIES[family](), preprocessor=None)


def _template(sequence_length=16):
    return PromptTemplate(
        "{sentence} [P:2] it was [MASK] . [P]",
        bert_tokenizer(),
        sequence_length=sequence_length,
    )


def _reference_logits(masked_lm, inputs):
    """The plain keras-hub masked LM on the virtual tokens' real ids."""
    reference = {k: np.array(to_numpy(v)) for k, v in inputs.items()}
    ids = reference["token_ids"]
    for row in range(len(ids)):
        ids[row, ids[row] == -1] = VIRTUAL_IDS
    if "segment_ids" not in masked_lm.backbone.input:
        reference.pop("segment_ids", None)
    return masked_lm.predict(reference, verbose=0)


# The class scores are family-independent: TensorFlow's suite checks four
# cases, JAX's and PyTorch's one per reduction.
_TENSORFLOW_ONLY = run_on_one_backend(
    "tensorflow",
    "the class scores are family-independent; JAX and PyTorch check one "
    "case per reduction",
)


@pytest.mark.parametrize(
    "family,reduction",
    [
        ("bert", "mean"),
        pytest.param("bert", "max", marks=_TENSORFLOW_ONLY),
        pytest.param("distil_bert", "mean", marks=_TENSORFLOW_ONLY),
        ("roberta", "max"),
    ],
)
def test_class_scores_equal_the_plain_masked_lm(family, reduction):
    """Class logits by default, as the classifiers; probabilities with
    `activation="softmax"`."""
    masked_lm = _masked_lm(family)
    model = PTuningMaskedLM(
        masked_lm,
        verbalizer=VERBALIZER,
        preprocessor=_template(),
        score_reduction=reduction,
    )
    probabilities_model = PTuningMaskedLM(
        masked_lm,
        verbalizer=VERBALIZER,
        preprocessor=_template(),
        score_reduction=reduction,
        activation="softmax",
        backbone=model.backbone,
    )
    assert model.class_names == ["negative", "positive"]
    assert model.verbalizer.word_ids == WORD_IDS
    make_identity_prompt(model.backbone, VIRTUAL_IDS)
    inputs = model.preprocessor({"sentence": SENTENCES})
    logits = _reference_logits(masked_lm, inputs)[:, 0]
    reduce = np.mean if reduction == "mean" else np.max
    scores = np.stack(
        [reduce(logits[:, ids], axis=-1) for ids in WORD_IDS], axis=-1
    )
    np.testing.assert_allclose(
        model.predict({"sentence": SENTENCES}, verbose=0),
        scores,
        atol=1e-4,
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        probabilities_model.predict({"sentence": SENTENCES}, verbose=0),
        _softmax(scores),
        atol=1e-5,
        rtol=1e-4,
    )


def test_verbalizer_layer_against_numpy():
    logits = np.random.default_rng(0).normal(size=(4, 30)).astype("float32")
    word_ids = [[3, 7, 11], [2], [29, 0]]
    for reduction, reduce in (("mean", np.mean), ("max", np.max)):
        layer = Verbalizer(word_ids, score_reduction=reduction)
        expected = np.stack(
            [reduce(logits[:, ids], -1) for ids in word_ids], -1
        )
        np.testing.assert_allclose(to_numpy(layer(logits)), expected, rtol=1e-6)
    assert Verbalizer.from_config(layer.get_config()).word_ids == word_ids


def test_verbalizer_reduction_is_score_reduction():
    """One name on the layer and the tasks; the old one still reads, with a
    warning, and configs written with it still load."""
    with pytest.warns(DeprecationWarning, match="score_reduction"):
        layer = Verbalizer([[1], [2]], reduction="max")
    assert layer.score_reduction == "max" == layer.reduction
    config = dict(layer.get_config())
    assert config["score_reduction"] == "max" and "reduction" not in config
    config["reduction"] = config.pop("score_reduction")  # an older file
    assert Verbalizer.from_config(config).score_reduction == "max"
    with pytest.raises(ValueError, match="Pass `score_reduction` only"):
        Verbalizer([[1], [2]], score_reduction="max", reduction="mean")
    with pytest.raises(ValueError, match="reduction='median'"):
        Verbalizer([[1], [2]], reduction="median")


def test_fill_mask_returns_the_reference_top_k():
    masked_lm = _masked_lm()
    model = PTuningMaskedLM(masked_lm, preprocessor=_template())
    make_identity_prompt(model.backbone, VIRTUAL_IDS)
    inputs = model.preprocessor({"sentence": SENTENCES})
    reference = _softmax(_reference_logits(masked_lm, inputs))
    top = model.fill_mask({"sentence": SENTENCES}, top_k=4)
    expected_ids = np.argsort(-reference, axis=-1)[..., :4]
    np.testing.assert_array_equal(top["token_ids"], expected_ids)
    np.testing.assert_allclose(
        top["probabilities"],
        np.take_along_axis(reference, expected_ids, -1),
        atol=1e-5,
    )
    assert top["tokens"].shape == (4, 1, 4)
    tokenizer = bert_tokenizer()
    expected_tokens = [
        tokenizer.id_to_token(int(i)) if i < len(BERT_VOCAB) else None
        for i in expected_ids.reshape(-1)
    ]
    assert list(top["tokens"].reshape(-1)) == expected_tokens
    # Without a verbalizer the model's output is the vocabulary logits.
    np.testing.assert_allclose(
        _softmax(model.predict({"sentence": SENTENCES}, verbose=0)),
        reference,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="top_k"):
        model.fill_mask({"sentence": SENTENCES}, top_k=0)
    # In batches of 3 (3 rows, then 1): the same tokens, in row order.
    batched = model.fill_mask({"sentence": SENTENCES}, top_k=4, batch_size=3)
    np.testing.assert_array_equal(batched["token_ids"], expected_ids)
    np.testing.assert_allclose(
        batched["probabilities"], top["probabilities"], atol=1e-6
    )
    assert list(batched["tokens"].reshape(-1)) == expected_tokens
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match=f"batch_size={bad!r}"):
            model.fill_mask({"sentence": SENTENCES}, batch_size=bad)


@pytest.mark.compiled  # the traced functions users get
def test_fit_trains_the_prompt_encoder_only():
    masked_lm = _masked_lm()
    before = backbone_weights(masked_lm)
    model = PTuningMaskedLM(
        masked_lm,
        PromptEncoderConfig(3, encoder_hidden_size=8),
        verbalizer=VERBALIZER,
        preprocessor=_template(),
    )
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {
        "prompt_encoder"
    }
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    labels = np.array([1, 0, 0, 1])
    history = model.fit(
        {"sentence": SENTENCES}, labels, batch_size=4, epochs=8, verbose=0
    )
    loss = history.history["loss"]
    assert loss[-1] < loss[0]
    assert "sparse_categorical_accuracy" in history.history
    for a, b in zip(before, backbone_weights(masked_lm)):
        np.testing.assert_array_equal(a, b)


def test_fill_in_mode_trains_on_target_token_ids():
    model = PTuningMaskedLM(_masked_lm(), preprocessor=_template())
    targets = np.array([[8], [17], [10], [9]])
    history = model.fit(
        {"sentence": SENTENCES}, targets, batch_size=2, epochs=1, verbose=0
    )
    assert "sparse_categorical_accuracy" in history.history


def test_keras_round_trip_with_template_and_adapter(tmp_path):
    model = PTuningMaskedLM(
        _masked_lm("roberta"),
        PromptEncoderConfig(3, encoder_reparameterization_type="LSTM"),
        verbalizer=VERBALIZER,
        preprocessor=_template(),
    )
    model.fit({"sentence": SENTENCES}, np.array([1, 0, 0, 1]), verbose=0)
    expected = model.predict({"sentence": SENTENCES}, verbose=0)
    path = str(tmp_path / "cloze.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.preprocessor, PromptTemplate)
    assert loaded.class_names == ["negative", "positive"]
    np.testing.assert_allclose(
        loaded.predict({"sentence": SENTENCES}, verbose=0), expected, atol=1e-6
    )
    adapter = str(tmp_path / "cloze.adapter.h5")
    model.save_adapter(adapter)
    fresh = PTuningMaskedLM(
        _masked_lm("roberta"),
        PromptEncoderConfig(3, encoder_reparameterization_type="LSTM"),
        verbalizer=VERBALIZER,
        preprocessor=_template(),
    )
    # A fresh model on another random backbone: only the prompt moves over.
    fresh.load_adapter(adapter)
    np.testing.assert_allclose(
        to_numpy(fresh.backbone.prompt_table()),
        to_numpy(model.backbone.prompt_table()),
    )


def test_errors_before_any_compute():
    masked_lm = _masked_lm()
    with pytest.raises(ValueError, match=r"'unbelievable' .* 3 tokens"):
        PTuningMaskedLM(
            masked_lm,
            verbalizer={"neg": ["bad"], "pos": ["unbelievable"]},
            preprocessor=_template(),
        )
    with pytest.raises(ValueError, match="at least 2 classes"):
        PTuningMaskedLM(
            masked_lm, verbalizer={"pos": ["good"]}, preprocessor=_template()
        )
    with pytest.raises(ValueError, match="outside the vocabulary of 64"):
        PTuningMaskedLM(
            masked_lm, PromptEncoderConfig(2), verbalizer=[[1], [64]]
        )
    with pytest.raises(ValueError, match="no tokenizer"):
        PTuningMaskedLM(
            masked_lm, PromptEncoderConfig(2), verbalizer=VERBALIZER
        )
    with pytest.raises(TypeError, match="keras-hub `MaskedLM`"):
        PTuningMaskedLM(FAMILIES["bert"](), PromptEncoderConfig(2))
    no_mask = PromptTemplate("{sentence} [P:2]", bert_tokenizer())
    with pytest.raises(ValueError, match="Missing: \\['mask_positions'\\]"):
        PTuningMaskedLM(masked_lm, preprocessor=no_mask)
    with pytest.raises(ValueError, match="score_reduction"):
        PTuningMaskedLM(
            masked_lm, preprocessor=_template(), score_reduction="sum"
        )


def test_a_verbalizer_reads_exactly_one_mask():
    """It reads the first mask only: a template or inputs with two are
    refused, before any compute."""
    masked_lm = _masked_lm()
    two_masks = PromptTemplate(
        "{sentence} [P:2] [MASK] it was [MASK] .",
        bert_tokenizer(),
        sequence_length=16,
    )
    with pytest.raises(ValueError, match="the template has 2"):
        PTuningMaskedLM(
            masked_lm, verbalizer=VERBALIZER, preprocessor=two_masks
        )
    # Fill-in mode reads every mask: accepted.
    PTuningMaskedLM(masked_lm, preprocessor=two_masks)
    model = PTuningMaskedLM(
        masked_lm, PromptEncoderConfig(2), verbalizer=[[5], [6]]
    )
    inputs = {
        "token_ids": np.ones((2, 6), "int32"),
        "segment_ids": np.zeros((2, 6), "int32"),
        "padding_mask": np.ones((2, 6), "int32"),
        "mask_positions": np.array([[1, 3], [2, 4]], "int32"),
    }
    with pytest.raises(ValueError, match="must be \\(batch, 1\\).*\\(2, 2\\)"):
        model(inputs)
    with pytest.raises(ValueError, match="must be \\(batch, 1\\).*\\(2, 2\\)"):
        model.predict(inputs, verbose=0)
    inputs["mask_positions"] = inputs["mask_positions"][:, :1]
    assert model.predict(inputs, verbose=0).shape == (2, 2)

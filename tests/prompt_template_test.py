"""`PromptTemplate`: slots, anchors, masks and truncation, per tokenizer."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PromptTemplate
from keras_ptuning.preprocessing.verbalizer import label_word_ids
from keras_ptuning.preprocessing.vocabulary import spaces_word_starts
from keras_ptuning.preprocessing.vocabulary import word_token_ids
from tests.support import bert_tokenizer
from tests.support import gpt2_tokenizer
from tests.support import run_on_one_backend
from tests.support import sentencepiece_proto
from tests.support import sentencepiece_tokenizer
from tests.support import to_numpy

# Templates are TensorFlow graph code on every backend: checked once here;
# the task tests run them end to end on each backend.
pytestmark = run_on_one_backend(
    "tensorflow", "tokenization is TensorFlow code whatever the backend"
)


def _as_numpy(outputs):
    return {k: to_numpy(v) for k, v in outputs.items()}


def test_wordpiece_ids_by_hand():
    template = PromptTemplate(
        "{sentence} [P:2] It was [MASK] .", bert_tokenizer(), sequence_length=12
    )
    out = _as_numpy(template({"sentence": ["the movie was great", "it"]}))
    # [CLS] the movie was great [P][P] it was [MASK] . [SEP]
    np.testing.assert_array_equal(
        out["token_ids"],
        [
            [2, 5, 6, 7, 8, -1, -1, 11, 7, 4, 13, 3],
            [2, 11, -1, -1, 11, 7, 4, 13, 3, 0, 0, 0],
        ],
    )
    np.testing.assert_array_equal(out["padding_mask"].sum(1), [12, 9])
    np.testing.assert_array_equal(out["mask_positions"], [[9], [6]])
    np.testing.assert_array_equal(out["segment_ids"], np.zeros((2, 12)))
    assert template.num_virtual_tokens == 2
    assert template.prompt_config(encoder_hidden_size=8) == PromptEncoderConfig(
        2, encoder_hidden_size=8
    )


def test_byte_pair_ids_by_hand_with_word_boundaries():
    template = PromptTemplate(
        "[P:2] {sentence} [P] the", gpt2_tokenizer(), sequence_length=9
    )
    assert template.output_names == ["token_ids", "padding_mask"]
    out = _as_numpy(template(["the the"]))
    # <|endoftext|> [P][P] Ġthe Ġthe [P] Ġthe <|endoftext|>, padded with 0.
    np.testing.assert_array_equal(
        out["token_ids"], [[0, -1, -1, 1, 1, -1, 1, 0, 0]]
    )
    np.testing.assert_array_equal(
        out["padding_mask"], [[1, 1, 1, 1, 1, 1, 1, 1, 0]]
    )
    # A field that starts the template has no space before it.
    first = PromptTemplate(
        "{sentence}[P]", gpt2_tokenizer(), sequence_length=5,
        add_start_token=False,
    )  # fmt: skip
    np.testing.assert_array_equal(
        to_numpy(first(["the"])["token_ids"]), [[2, -1, 0, 0, 0]]
    )


def test_sentencepiece_ids_by_hand():
    tokenizer = sentencepiece_tokenizer()
    template = PromptTemplate(
        "[P] {premise} [P:2] {hypothesis} good [MASK]",
        tokenizer,
        sequence_length=12,
        truncate="waterfall",
    )
    piece = tokenizer.token_to_id
    out = _as_numpy(
        template({"premise": ["the movie"], "hypothesis": ["it was bad"]})
    )
    # The anchor is a word of this tiny vocabulary ("?" is not: refused).
    expected = (
        [2, -1, piece("▁the"), piece("▁movie"), -1, -1]
        + [piece("▁it"), piece("▁was"), piece("▁bad"), piece("▁good")]
        + [4, 3]
    )
    expected += [0] * (12 - len(expected))
    np.testing.assert_array_equal(out["token_ids"][0], expected)
    assert out["token_ids"][0][out["mask_positions"][0, 0]] == 4


@pytest.mark.parametrize("truncate", ["round_robin", "waterfall"])
def test_truncation_cuts_only_field_text(truncate):
    template_text = "[P:3] {premise} [P:3] {hypothesis} ? [P:3] [MASK]"
    tokenizer = bert_tokenizer()
    premise = "the movie was great the movie was great a film"
    hypothesis = "it was terrible it was bad it was good"
    full_premise = list(np.asarray(tokenizer(premise)))
    full_hypothesis = list(np.asarray(tokenizer(hypothesis)))
    for length in (15, 16, 18, 21, 25, 31):
        template = PromptTemplate(
            template_text, tokenizer, sequence_length=length, truncate=truncate
        )
        out = _as_numpy(
            template({"premise": [premise], "hypothesis": [hypothesis]})
        )
        ids = list(out["token_ids"][0][out["padding_mask"][0]])
        assert ids[0] == 2 and ids[-1] == 3  # [CLS] ... [SEP]
        assert ids[1:4] == [-1] * 3  # leading slots kept
        assert ids[-6:-1] == [12, -1, -1, -1, 4]  # ? [P][P][P] [MASK]
        assert ids.count(-1) == 9
        assert out["mask_positions"][0, 0] == len(ids) - 2
        # Fields: prefixes of their full tokenization, filling the budget.
        second = ids.index(-1, 4)
        kept_premise = ids[4:second]
        kept_hypothesis = ids[second + 3 : -6]
        assert kept_premise == full_premise[: len(kept_premise)]
        assert kept_hypothesis == full_hypothesis[: len(kept_hypothesis)]
        assert len(kept_premise) + len(kept_hypothesis) == min(
            length - 15 + 2, len(full_premise) + len(full_hypothesis)
        )
        if truncate == "waterfall" and len(kept_hypothesis) > 0:
            assert len(kept_premise) == len(full_premise)


def test_tf_data_equals_eager_and_labels_pass_through():
    template = PromptTemplate(
        "{sentence} [P:2] It was [MASK] .", bert_tokenizer(), sequence_length=14
    )
    sentences = ["the movie was great", "it", "a terrible film"]
    eager = _as_numpy(template({"sentence": sentences}))
    ds = tf.data.Dataset.from_tensor_slices(
        ({"sentence": sentences}, [1, 0, 0])
    )
    x, y = next(iter(ds.batch(3).map(template)))
    for name, value in eager.items():
        np.testing.assert_array_equal(x[name].numpy(), value)
    np.testing.assert_array_equal(y.numpy(), [1, 0, 0])
    single = _as_numpy(template("the movie"))
    assert single["token_ids"].shape == (14,)


def test_config_round_trip():
    template = PromptTemplate(
        "{a} [P:2] ? {b} [P]",
        bert_tokenizer(),
        sequence_length=10,
        truncate="waterfall",
        segment_ids=False,
    )
    config = template.get_config()
    # As keras-hub does: the vocabulary is an asset, not config.
    assert config["tokenizer"]["config"]["vocabulary"] is None
    clone = PromptTemplate.from_config(dict(config, tokenizer=bert_tokenizer()))
    inputs = {"a": ["the movie was great"], "b": ["it was bad"]}
    for name, value in _as_numpy(template(inputs)).items():
        np.testing.assert_array_equal(to_numpy(clone(inputs)[name]), value)
    assert clone.output_names == ["token_ids", "padding_mask"]


def test_errors_name_the_argument_and_limit():
    tokenizer = bert_tokenizer()
    with pytest.raises(ValueError, match=r"take 9 tokens, leaving 0 for 1"):
        PromptTemplate(
            "{s} [P:3] it was [MASK] .", tokenizer, sequence_length=9
        )
    # One token more leaves room for the field.
    PromptTemplate("{s} [P:3] it was [MASK] .", tokenizer, sequence_length=10)
    with pytest.raises(ValueError, match="has no mask token"):
        PromptTemplate("{s} [P] [MASK]", gpt2_tokenizer(), sequence_length=8)
    with pytest.raises(ValueError, match="collides with the tokenizer's pad"):
        PromptTemplate("{s} [P]", tokenizer, placeholder_id=0)
    with pytest.raises(ValueError, match="tokenizes to placeholder_id=5"):
        PromptTemplate("{s} [P] the", tokenizer, placeholder_id=5)
    with pytest.raises(ValueError, match="at least one prompt slot"):
        PromptTemplate("{s} it was", tokenizer)
    with pytest.raises(ValueError, match="at least one `{field}`"):
        PromptTemplate("[P:2] it was", tokenizer)
    with pytest.raises(ValueError, match="at least 1"):
        PromptTemplate("{s} [P:0]", tokenizer)
    with pytest.raises(ValueError, match="appear once"):
        PromptTemplate("{s} [P] {s}", tokenizer)
    with pytest.raises(ValueError, match="`truncate`"):
        PromptTemplate("{s} [P]", tokenizer, truncate="left")
    with pytest.raises(TypeError, match="keras-hub tokenizer"):
        PromptTemplate("{s} [P]", "bert")
    template = PromptTemplate("{a} [P] {b}", tokenizer, sequence_length=8)
    with pytest.raises(ValueError, match=r"lacks \['b'\]"):
        template({"a": ["the"]})
    with pytest.raises(ValueError, match="pass a dict"):
        template(["the"])


def test_field_text_hitting_an_in_vocabulary_placeholder_is_caught():
    # "good" is id 9: a template using 9 as its placeholder sees a row with
    # too many placeholders when the text holds "good".
    template = PromptTemplate("{s} [P:2]", bert_tokenizer(), placeholder_id=9)
    np.testing.assert_array_equal(
        to_numpy(template(["the movie"])["token_ids"])[0, :6],
        [2, 5, 6, 9, 9, 3],
    )
    with pytest.raises(ValueError, match=r"row 0: 3\..*collides"):
        template(["a good movie"])
    ds = tf.data.Dataset.from_tensor_slices(["a good movie"]).batch(1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rows must"):
        next(iter(ds.map(template)))


@pytest.mark.parametrize("tokenizer", ["wordpiece", "sentencepiece"])
def test_unknown_anchor_text_and_label_words_are_refused(tokenizer):
    """Text the tokenizer maps to its unknown token cannot mean what the
    user wrote: refused at construction, naming the text and the token."""
    tokenizer = (
        bert_tokenizer()
        if tokenizer == "wordpiece"
        else sentencepiece_tokenizer()
    )
    unknown = "\\[UNK\\]" if hasattr(tokenizer, "oov_token") else "<unk>"
    with pytest.raises(ValueError, match=f"anchor text 'zebra'.*{unknown}"):
        PromptTemplate("{s} [P:2] zebra [MASK]", tokenizer, sequence_length=16)
    with pytest.raises(ValueError, match=f"label word.*'zebra'.*{unknown}"):
        label_word_ids({"neg": ["bad"], "pos": ["zebra"]}, tokenizer)
    # Known words pass.
    PromptTemplate("{s} [P:2] movie [MASK]", tokenizer, sequence_length=16)
    assert label_word_ids([["bad"], ["good"]], tokenizer)[1][0]


def test_a_label_word_of_two_classes_is_refused():
    with pytest.raises(ValueError, match=r"token id 9.*\['neg', 'pos'\]"):
        label_word_ids(
            {"neg": ["bad", "good"], "pos": ["good"]}, bert_tokenizer()
        )
    with pytest.raises(ValueError, match=r"token id 5.*\[0, 1\]"):
        label_word_ids([[5, 6], [5]])


def _gemma_style_tokenizer():
    """SentencePiece without a dummy prefix, as Gemma's: a word after a
    space is its own piece ("▁the"), unlike the same word alone ("the")."""
    proto = sentencepiece_proto(
        ["the movie was great", "it was bad", "good movie the the"],
        12,
        bos_piece="<bos>",
        eos_piece="<eos>",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
    )
    return keras_hub.tokenizers.GemmaTokenizer(proto=proto)


def test_which_tokenizers_carry_the_space_before_a_word():
    assert spaces_word_starts(gpt2_tokenizer())
    assert spaces_word_starts(_gemma_style_tokenizer())
    assert not spaces_word_starts(bert_tokenizer())
    assert not spaces_word_starts(sentencepiece_tokenizer())  # dummy prefix
    tokenizer = _gemma_style_tokenizer()
    piece = tokenizer.token_to_id
    assert word_token_ids("movie", tokenizer) == [piece("▁movie")]
    assert word_token_ids("movie", bert_tokenizer()) == [6]


def test_parts_after_a_space_read_as_running_text_without_dummy_prefix():
    tokenizer = _gemma_style_tokenizer()
    piece = tokenizer.token_to_id
    template = PromptTemplate(
        "{a} [P] the {b} [P]", tokenizer, 10, add_end_token=False
    )
    out = _as_numpy(template({"a": ["the movie"], "b": ["movie"]}))
    # The same ids as "the movie ... the movie" in a sentence.
    expected = [2, piece("the"), piece("▁movie"), -1, piece("▁the")]
    expected += [piece("▁movie"), -1, 0, 0, 0]
    np.testing.assert_array_equal(out["token_ids"][0], expected)


def test_empty_field_text_gives_no_tokens():
    template = PromptTemplate(
        "[P] {a} {b} [P]", gpt2_tokenizer(), 6, add_start_token=False
    )
    out = _as_numpy(template({"a": ["", "the"], "b": ["the", ""]}))
    # No lone "Ġ" (id 3) for the empty field.
    np.testing.assert_array_equal(
        out["token_ids"], [[-1, 1, -1, 0, 0, 0], [-1, 1, -1, 0, 0, 0]]
    )


def test_a_template_keeps_working_after_set_random_seed():
    """TensorFlow's `set_seed` (`keras.utils.set_random_seed`) drops the
    SentencePiece op's resource a tokenizer made eagerly; a template traced
    before (or after) it used to fail with an empty RuntimeError."""
    from tests.support import sentencepiece_tokenizer

    template = PromptTemplate(
        '{sentence} [P:"it was"] [MASK]',
        sentencepiece_tokenizer(),
        sequence_length=16,
    )
    x = {"sentence": ["the movie was great", "it was bad"]}
    before = template(x)
    keras.utils.set_random_seed(7)
    after = template(x)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)

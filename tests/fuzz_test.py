"""Property-based fuzzing of the public inputs (Hypothesis).

Fuzzed, on every backend:

- `PromptTemplate` template strings (fields, `[P]`/`[P:n]`/`[P:"text"]`
  slots, `[MASK]`, anchors, junk) and arguments, on WordPiece,
  SentencePiece and byte-level BPE tokenizers; and the field inputs of two
  fixed templates (templates trace a `tf.function` each, so only fixed ones
  are called).
- `PromptEncoderConfig(...)` keyword arguments and `from_dict(...)`.
- `Verbalizer` word ids (and its outputs against NumPy), the `verbalizer=`
  label words the models resolve (`label_word_ids`), `ChoiceTemplate`
  choices, inputs and labels.
- Adapter files (`save_adapter`/`load_adapter`) and PEFT adapter
  directories (`save_peft_adapter`/`load_peft_adapter`): one valid file
  written on a tiny model, then copies with config entries removed or
  mangled, arrays removed, of other dtypes or shapes, or bytes cut off;
  target paths of every kind for the savers.
- `export_saved_model` arguments, with its writer stubbed (the path and
  argument handling around it is the same on every backend); from the
  TensorFlow suite, also a few real exports.

The property: every input works, or raises a `ValueError`/`TypeError` whose
message names the argument (or quotes the offending part); never another
exception, a hang, or a half-written file: after a refused save or export
the target does not exist or is unchanged, and a refused load leaves the
model unchanged. Successful calls are checked too (template outputs,
verbalizer scores, round trips).

Bugs found: the suite found 23 library bugs, all fixed; each is now a
regression test at the end of this file (`test_regression_*`), and the
property tests check their inputs like any other. By area: templates 4
(huge `[P:n]` counts, non-string fields, fields of different row counts,
and arrays passed for string or bool arguments, there and in configs,
verbalizers and the savers), configs and verbalizers 5 (`from_dict` keys
of mixed types, flat word ids, ids past int32, label words not a list,
choice format syntax), adapter files 6 (config structure, array
structure, unreadable files, half-applied loads, save paths, load path
types), PEFT adapters 6 (config not an object, unreadable safetensors,
heads not 2-D, directories not paths, base names not JSON, saves under a
file) and export 2 (a path that is a file, a parent that is a file).

Budget: fixed seeds (`derandomize=True`), no example database, no
deadline (a call answering in more than `fuzz_support.HANG_SECONDS` is a
hang), `max_examples` per test from `fuzz_support` (about 1000 inputs in
all); about 30 s per backend on two CPU cores. Each test prints how many
inputs it tried and what they were mostly refused for (`pytest -s`), and
asserts a minimum.
"""

import dataclasses
import json
import os
import pathlib
import shutil

import h5py
import keras_hub
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_ptuning import ChoiceTemplate
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PromptTemplate
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningTextClassifier
from keras_ptuning import Verbalizer
from keras_ptuning import export_saved_model
from keras_ptuning import load_peft_adapter
from keras_ptuning import save_peft_adapter
from keras_ptuning.preprocessing.verbalizer import label_word_ids
from keras_ptuning.saving import export
from keras_ptuning.saving.adapter import read_adapter_config
from tests import fuzz_support as fuzz
from tests.backbones import FAMILIES
from tests.fuzz_support import LARGE
from tests.fuzz_support import MEDIUM
from tests.fuzz_support import ODD_VALUES
from tests.fuzz_support import SMALL
from tests.fuzz_support import Violation
from tests.fuzz_support import fuzz_settings
from tests.fuzz_support import refuse_cleanly
from tests.support import BERT_VOCAB
from tests.support import bert_tokenizer
from tests.support import byte_level_llama3_tokenizer
from tests.support import gpt2_tokenizer
from tests.support import run_on_one_backend
from tests.support import sentencepiece_tokenizer
from tests.support import to_numpy


def check_property(test, call, names):
    """The property for one input: `call()` works (returns `(True,
    result)`) or refuses naming one of `names` (`(False, error)`); any
    other outcome raises `Violation`."""
    return fuzz.works_or_refuses(test, call, names)


# === Tokenizers and words ===

SENTENCEPIECE_WORDS = ["the", "movie", "was", "great", "it", "bad", "good"]
WORDPIECE_WORDS = [w for w in BERT_VOCAB if not w.startswith(("[", "##"))]
BYTE_PAIR_WORDS = ["the", " the", " movie", " was", " good"]


# SentencePiece tokenizers are built per test: `keras.utils.set_random_seed`
# (conftest's `_seeded`, before each test) clears TensorFlow's kernel cache,
# and with it the kernel-private resource of a SentencePiece tokenizer built
# earlier, so its next trace fails with NotFoundError (eager calls rebuild
# it). WordPiece and byte-pair tokenizers hold their tables themselves.
@pytest.fixture
def tokenizers():
    return {
        "wordpiece": bert_tokenizer(),
        "sentencepiece": sentencepiece_tokenizer(),
        "byte_pair": byte_level_llama3_tokenizer(BYTE_PAIR_WORDS),
    }


def words_text(words, max_size=6):
    return st.lists(st.sampled_from(words), max_size=max_size).map(" ".join)


ALL_WORDS = sorted(set(SENTENCEPIECE_WORDS + WORDPIECE_WORDS))
TEXT = st.one_of(words_text(ALL_WORDS), st.text(max_size=24))


# === PromptTemplate: template strings and arguments ===

TEMPLATE_ARGUMENTS = (
    "template",
    "tokenizer",
    "sequence_length",
    "placeholder_id",
    "add_start_token",
    "add_end_token",
    "truncate",
    "segment_ids",
    "text_slots",
    "anchor text",  # a part of `template`, quoted
)
HUGE_SLOT_COUNT = 10**20  # Past an index-sized integer.

FIELD = st.one_of(
    st.sampled_from(["premise", "hypothesis", "a", "b", "x1", "0", "é"]),
    st.text(alphabet="ab_-. 0", max_size=3),
).map(lambda name: "{" + name + "}")
SLOTS = st.one_of(
    st.just("[P]"),
    st.integers(0, 12).map(lambda k: f"[P:{k}]"),
    st.just("[P:01]"),
    st.just(f"[P:{HUGE_SLOT_COUNT}]"),
)
TEXT_SLOTS = st.one_of(words_text(ALL_WORDS, 3), st.text(max_size=5)).map(
    lambda text: f'[P:"{text}"]'
)
ANCHOR = st.one_of(st.sampled_from(ALL_WORDS), st.text(max_size=6))
JUNK = st.sampled_from(
    ["[P", "[P:]", "[P:x]", '[P:"', "{", "}", "{}", "[MASK", "]", '"']
    + ["[p]", "[P:-1]", "{{a}}", "[mask]", "[SEP]", "[CLS]", "\x00"]
)
PIECE = st.one_of(FIELD, SLOTS, TEXT_SLOTS, st.just("[MASK]"), ANCHOR, JUNK)


@st.composite
def templates(draw):
    """Mostly a field and a slot kind among other pieces, shuffled and
    joined by spaces or nothing; sometimes raw text or a non-string."""
    form = draw(st.sampled_from(["structured"] * 8 + ["text", "odd"]))
    if form == "text":
        return draw(st.text(max_size=30))
    if form == "odd":
        return draw(ODD_VALUES)
    pieces = [draw(FIELD), draw(st.one_of(SLOTS, TEXT_SLOTS))]
    pieces += draw(st.lists(PIECE, max_size=4))
    pieces = draw(st.permutations(pieces))
    separators = draw(
        st.lists(
            st.sampled_from([" ", " ", "", "\n", "  "]),
            min_size=len(pieces),
            max_size=len(pieces),
        )
    )
    return "".join(s + p for s, p in zip(separators, pieces)).strip(" ")


with_odd = fuzz.with_odd
mostly = fuzz.mostly


TEMPLATE_KWARGS = st.fixed_dictionaries(
    {},
    optional={
        "sequence_length": with_odd(st.integers(-2, 48)),
        "placeholder_id": with_odd(
            st.one_of(
                st.integers(-5, 70),
                st.sampled_from([2**31 - 1, 2**31, -(2**31), -(2**31) - 1]),
            )
        ),
        "add_start_token": with_odd(st.booleans()),
        "add_end_token": with_odd(st.booleans()),
        "truncate": with_odd(st.sampled_from(["round_robin", "waterfall"])),
        "segment_ids": with_odd(st.sampled_from([None, True, False])),
        "text_slots": with_odd(st.sampled_from(["prompt", "text"])),
    },
)


def test_template_strings_and_arguments(tokenizers):
    test = "template_strings_and_arguments"

    @fuzz_settings(LARGE)
    @given(
        tokenizer=st.sampled_from(sorted(tokenizers)),
        template=templates(),
        kwargs=TEMPLATE_KWARGS,
    )
    def check(tokenizer, template, kwargs):
        tokenizer = tokenizers[tokenizer]
        outcome = check_property(
            test,
            lambda: PromptTemplate(template, tokenizer, **kwargs),
            TEMPLATE_ARGUMENTS,
        )
        if outcome[0]:
            _check_built_template(test, outcome[1], tokenizer)

    check()
    fuzz.report(test, LARGE // 2)


def _check_built_template(test, template, tokenizer):
    """What a template that built promises without being called."""
    names = template.field_names
    assert names and len(set(names)) == len(names)
    assert all("{" + name + "}" in template.template for name in names)
    text_mode = template.text_slots == "text"
    if not text_mode:
        assert template.num_virtual_tokens >= 1
    outputs = template.output_names
    assert outputs[:2] == ["token_ids", "padding_mask"]
    assert ("mask_positions" in outputs) == (template.num_masks > 0)
    outcome = check_property(
        test, template.prompt_config, ["num_virtual_tokens"]
    )
    if outcome[0]:
        config = outcome[1]
        assert config.num_virtual_tokens == template.num_virtual_tokens
        assert (config.prompt_init == "text") == template.has_text_slots
    # The config rebuilds the same template.
    config = template.get_config()
    config.pop("name")
    config.pop("tokenizer", None)
    rebuilt = PromptTemplate(tokenizer=tokenizer, **config)
    assert rebuilt.field_names == names
    assert rebuilt.num_virtual_tokens == template.num_virtual_tokens
    assert rebuilt.prompt_init_ids == template.prompt_init_ids
    outcome = check_property(
        test, template.as_text_prompt, ["as_text_prompt", "template"]
    )
    assert outcome[0] == template.has_text_slots
    if outcome[0]:
        text_prompt = outcome[1]
        assert text_prompt.num_virtual_tokens == 0
        assert text_prompt.field_names == names


# === PromptTemplate: field inputs of fixed templates ===


@pytest.fixture
def field_templates(tokenizers):
    """Two templates, each called twice so that its `tf.function` is
    traced for any batch size: every later call of the fuzz reuses it."""
    sentencepiece = tokenizers["sentencepiece"]
    good = int(np.asarray(sentencepiece("good")).reshape(-1)[0])
    templates = {
        "wordpiece": PromptTemplate(
            "{premise} [P:2] it was [MASK] . {hypothesis} [P]",
            tokenizers["wordpiece"],
            sequence_length=16,
        ),
        # A real token id as placeholder: text with "good" must raise.
        "sentencepiece": PromptTemplate(
            '[P:"the movie"] {sentence} was [MASK]',
            sentencepiece,
            sequence_length=10,
            truncate="waterfall",
            placeholder_id=good,
        ),
    }
    for template in templates.values():
        for batch in (["the"], ["it", "the movie"]):
            template({name: batch for name in template.field_names})
    return templates


@st.composite
def field_inputs(draw, names):
    """`(form, x)`: the input of a template with fields `names`."""
    batch = draw(st.integers(1, 4))
    rows = st.lists(TEXT, min_size=batch, max_size=batch)
    form = draw(
        st.sampled_from(
            ["lists"] * 4
            + ["arrays", "scalars", "missing", "extra", "positional"]
            + ["non_strings", "other_sizes"]
        )
    )
    x = {name: draw(rows) for name in names}
    if form == "arrays":
        x = {name: np.array(value) for name, value in x.items()}
    elif form == "scalars":
        x = {name: value[0] for name, value in x.items()}
    elif form == "missing":
        del x[draw(st.sampled_from(names))]
    elif form == "extra":
        x[draw(st.sampled_from(["task_id", "label", "other"]))] = draw(
            ODD_VALUES
        )
    elif form == "positional":
        x = x[names[0]]
    elif form == "non_strings":
        x[draw(st.sampled_from(names))] = draw(
            st.sampled_from([[1, 2], [1.5], None, ["a", 1], [[b"a"], []], []])
        )
    elif form == "other_sizes":
        x[names[0]] = x[names[0]] + ["the"]
    return form, x


def test_template_field_inputs(field_templates):
    test = "template_field_inputs"

    @fuzz_settings(MEDIUM)
    @given(kind=st.sampled_from(sorted(field_templates)), data=st.data())
    def check(kind, data):
        template = field_templates[kind]
        form, x = data.draw(field_inputs(template.field_names))
        names = [repr(n) for n in template.field_names]
        names += ["field", "placeholder_id"]
        outcome = check_property(test, lambda: template(x), names)
        if outcome[0]:
            _check_packed(template, x, outcome[1])
        else:
            refused = ("missing", "positional", "non_strings", "other_sizes")
            assert form in refused or (
                kind == "sentencepiece" and "placeholder_id" in str(outcome[1])
            ), outcome[1]

    check()
    fuzz.report(test, MEDIUM // 2)


def _check_packed(template, x, outputs):
    """The template's outputs for `x`: shapes, special tokens, one slot
    per virtual token, masks at `[MASK]`, padding, and `task_id` passed
    through."""
    tokenizer = template.tokenizer
    first = x[template.field_names[0]] if isinstance(x, dict) else x
    scalar = isinstance(first, str)
    ids = to_numpy(outputs["token_ids"])
    mask = to_numpy(outputs["padding_mask"]).astype(bool)
    if scalar:
        ids, mask = ids[None], mask[None]
    length = template.sequence_length
    assert ids.shape == (len(np.reshape(first, -1)), length)
    assert mask.shape == ids.shape
    lengths = mask.sum(1)
    np.testing.assert_array_equal(mask, np.arange(length) < lengths[:, None])
    counts = (ids == template.placeholder_id).sum(1)
    np.testing.assert_array_equal(counts, template.num_virtual_tokens)
    assert (ids[~mask] == tokenizer.pad_token_id).all()
    rows = np.arange(len(ids))
    np.testing.assert_array_equal(ids[:, 0], tokenizer.start_token_id)
    np.testing.assert_array_equal(
        ids[rows, lengths - 1], tokenizer.end_token_id
    )
    positions = to_numpy(outputs["mask_positions"])
    if scalar:
        positions = positions[None]
    assert positions.shape == (len(ids), template.num_masks)
    np.testing.assert_array_equal(
        ids[rows[:, None], positions], tokenizer.mask_token_id
    )
    if isinstance(x, dict) and "task_id" in x:
        assert outputs["task_id"] is x["task_id"]


# === PromptEncoderConfig ===

CONFIG_FIELDS = [f.name for f in dataclasses.fields(PromptEncoderConfig)]
CONFIG_VALUES = {
    "num_virtual_tokens": st.integers(-2, 50),
    "token_dim": st.one_of(st.none(), st.integers(-2, 64)),
    "encoder_reparameterization_type": st.sampled_from(
        ["MLP", "LSTM", "mlp", "lstm", "Lstm", "GRU", ""]
    ),
    "encoder_hidden_size": st.one_of(st.none(), st.integers(-2, 64)),
    "encoder_num_layers": st.integers(-1, 4),
    "encoder_dropout": st.floats(-0.5, 1.5),
    "prompt_init": st.sampled_from(["random", "text", "TEXT", ""]),
}
CONFIG_KWARGS = st.fixed_dictionaries(
    {},
    optional={name: with_odd(values) for name, values in CONFIG_VALUES.items()},
)
# Mostly with `num_virtual_tokens` (the one required field).
CONFIG_KWARGS_WITH_TOKENS = mostly(
    st.tuples(with_odd(st.integers(1, 50)), CONFIG_KWARGS).map(
        lambda t: {**t[1], "num_virtual_tokens": t[0]}
    ),
    CONFIG_KWARGS,
)
EXTRA_KEYS = st.dictionaries(
    st.one_of(st.text(max_size=6), st.integers(-2, 2), st.none()),
    ODD_VALUES,
    max_size=2,
)


def _check_config(config):
    """A config that built: JSON and dict round trips, hash, token dim."""
    as_dict = config.to_dict()
    assert PromptEncoderConfig.from_dict(as_dict) == config
    assert PromptEncoderConfig.from_dict(json.loads(json.dumps(as_dict))) == (
        config
    )
    hash(config)
    assert config.encoder_reparameterization_type in ("MLP", "LSTM")
    assert isinstance(config.encoder_dropout, float)
    assert config.with_token_dim(16).token_dim == 16 or (
        config.token_dim not in (None, 16)
    )


def test_prompt_encoder_config_arguments():
    test = "prompt_encoder_config_arguments"
    # A missing or unknown keyword names itself in Python's TypeError.
    names = CONFIG_FIELDS + ["keyword argument"]

    @fuzz_settings(LARGE)
    @given(
        kwargs=CONFIG_KWARGS_WITH_TOKENS,
        extra=mostly(
            st.just({}),
            st.dictionaries(st.text(max_size=5), ODD_VALUES, max_size=1),
        ),
    )
    def check(kwargs, extra):
        names_here = names + [repr(k) for k in extra]
        outcome = check_property(
            test,
            lambda: PromptEncoderConfig(**kwargs, **extra),
            names_here,
        )
        if outcome[0]:
            _check_config(outcome[1])

    check()
    fuzz.report(test, LARGE // 2)


def test_prompt_encoder_config_from_dict():
    test = "prompt_encoder_config_from_dict"

    @fuzz_settings(MEDIUM)
    @given(
        form=st.sampled_from(["dict"] * 6 + ["config", "odd"]),
        values=CONFIG_KWARGS_WITH_TOKENS,
        extra=mostly(st.just({}), EXTRA_KEYS),
        odd=ODD_VALUES,
    )
    def check(form, values, extra, odd):
        if form == "dict":
            config = {**values, **extra}
        elif form == "config":
            config = PromptEncoderConfig(3)
        else:
            config = odd
        names = CONFIG_FIELDS + ["config", "PromptEncoderConfig"]
        outcome = check_property(
            test, lambda: PromptEncoderConfig.from_dict(config), names
        )
        if outcome[0]:
            _check_config(outcome[1])

    check()
    fuzz.report(test, MEDIUM // 2)


# === Verbalizers ===

WORD_ID = st.one_of(
    st.integers(-3, 70),
    st.integers(-3, 70),
    st.sampled_from([2**31, 2**40, True, "good", 1.5, None]),
)
CLASS_WORDS = st.one_of(st.lists(WORD_ID, max_size=3), WORD_ID)
VOCABULARY = 71  # Above every id of WORD_ID but the huge ones.


@st.composite
def valid_word_ids(draw, width=None):
    """2 to 4 classes of 1 to 3 distinct ids (`width` each if given)."""
    sizes = draw(
        st.lists(
            st.just(width) if width else st.integers(1, 3),
            min_size=2,
            max_size=4,
        )
    )
    ids = draw(
        st.lists(
            st.integers(0, VOCABULARY - 1),
            min_size=sum(sizes),
            max_size=sum(sizes),
            unique=True,
        )
    )
    ends = np.cumsum(sizes)
    return [ids[end - size : end] for size, end in zip(sizes, ends)]


def test_verbalizer_word_ids():
    test = "verbalizer_word_ids"
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, VOCABULARY)).astype("float32")

    @fuzz_settings(MEDIUM)
    @given(
        word_ids=mostly(
            valid_word_ids(),
            st.lists(CLASS_WORDS, max_size=4),
            valid_word_ids(width=2).map(np.array),
            ODD_VALUES,
        ),
        reduction=with_odd(st.sampled_from(["mean", "max"])),
    )
    def check(word_ids, reduction):
        outcome = check_property(
            test,
            lambda: Verbalizer(word_ids, score_reduction=reduction),
            ["word_ids", "verbalizer", "label word", "Label word", "reduction"],
        )
        if not outcome[0]:
            return
        verbalizer = outcome[1]
        ids = verbalizer.word_ids
        assert verbalizer.num_classes == len(ids) >= 2
        flat = [i for class_ids in ids for i in class_ids]
        assert len(set(flat)) == len(flat) and min(flat) >= 0
        verbalizer.check_vocabulary_size(VOCABULARY)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            verbalizer.check_vocabulary_size(max(flat))
        reduce = np.max if reduction == "max" else np.mean
        expected = np.stack(
            [reduce(logits[:, class_ids], axis=-1) for class_ids in ids], -1
        )
        np.testing.assert_allclose(
            to_numpy(verbalizer(logits)), expected, rtol=1e-5, atol=1e-6
        )

    check()
    fuzz.report(test, MEDIUM // 2)


LABEL_WORD = st.one_of(
    st.sampled_from(ALL_WORDS),
    st.sampled_from(["unbelievable", "zzz", "", " ", "the movie", "é"]),
    st.text(max_size=4),
    st.integers(-1, 70),
    st.sampled_from([None, 1.5, True, [1], b"good"]),
)
CLASS_LABEL_WORDS = st.one_of(st.lists(LABEL_WORD, max_size=3), LABEL_WORD)


# One token on every tokenizer of `tokenizers` (after a space for BPE).
SHARED_WORDS = ["the", "movie", "was", "good"]


@st.composite
def valid_label_words(draw):
    """A dict or list of 2 or 3 classes of distinct one-token words."""
    words = draw(st.permutations(SHARED_WORDS))
    num_classes = draw(st.integers(2, 3))
    classes = [words[i::num_classes] for i in range(num_classes)]
    classes = [
        c[0] if len(c) == 1 and draw(st.booleans()) else c for c in classes
    ]
    if draw(st.booleans()):
        return classes
    names = draw(
        st.lists(
            st.text(max_size=4),
            min_size=num_classes,
            max_size=num_classes,
            unique=True,
        )
    )
    return dict(zip(names, classes))


def test_verbalizer_label_words(tokenizers):
    """The `verbalizer=` argument of the masked-LM models, as they resolve
    it with their tokenizer (`label_word_ids`)."""
    test = "verbalizer_label_words"

    @fuzz_settings(MEDIUM)
    @given(
        tokenizer=st.sampled_from(sorted(tokenizers)),
        verbalizer=mostly(
            valid_label_words(),
            st.dictionaries(
                st.one_of(st.text(max_size=4), st.integers(0, 3)),
                CLASS_LABEL_WORDS,
                max_size=4,
            ),
            st.lists(CLASS_LABEL_WORDS, max_size=4),
            ODD_VALUES,
        ),
    )
    def check(tokenizer, verbalizer):
        tokenizer = tokenizers[tokenizer]
        outcome = check_property(
            test,
            lambda: label_word_ids(verbalizer, tokenizer),
            ["verbalizer", "label word", "Label word"],
        )
        if not outcome[0]:
            return
        names, ids = outcome[1]
        assert len(ids) == len(verbalizer) >= 2
        assert names == (list(verbalizer) if names is not None else None)
        flat = [i for class_ids in ids for i in class_ids]
        assert len(set(flat)) == len(flat)
        assert all(isinstance(i, int) for i in flat)

    check()
    fuzz.report(test, MEDIUM // 2)


# === ChoiceTemplate ===


@pytest.fixture(scope="module")
def choice_context():
    """A template choices may follow, traced for any batch size."""
    template = PromptTemplate(
        "{premise} [P:2] {hypothesis} was",
        bert_tokenizer(),
        sequence_length=12,
        add_end_token=False,
    )
    for batch in (["the"], ["it", "the movie"]):
        template({"premise": batch, "hypothesis": batch})
    return template


CHOICE_TEXT = st.one_of(
    words_text(WORDPIECE_WORDS, 3).map(lambda text: " " + text),
    st.sampled_from(
        ["{premise}", " {hypothesis}", "{c1} was", " {c2}", "{0}", "{}"]
        + ["{a.b}", "{a[0]}", "{c1!r}", "{c1!z}", "{c1:>3}", "{c1:{c2}}"]
        + ["{", "}", "{{c1}}", "x{", " ", ""]
    ),
    st.text(max_size=8),
    st.sampled_from([None, 3, b" yes"]),
)
CHOICE_FIELDS = ["c1", "c2", "0", "a.b", "a[0]"]
CHOICE_NAMES = [
    "choices",
    "Choice",
    "choice",
    "max_choice_length",
    "field",
    "label",
    "Label",
]


VALID_CHOICE = mostly(
    words_text(WORDPIECE_WORDS, 3).filter(bool).map(lambda text: " " + text),
    st.sampled_from(["{c1}", " {c2} was", " {premise}", " {hypothesis} ."]),
)


@st.composite
def valid_choices(draw):
    """2 or 3 distinct choices, as a list or a dict of class names."""
    texts = draw(st.lists(VALID_CHOICE, min_size=2, max_size=3, unique=True))
    if draw(st.booleans()):
        return texts
    names = draw(
        st.lists(
            st.text(max_size=3),
            min_size=len(texts),
            max_size=len(texts),
            unique=True,
        )
    )
    return dict(zip(names, texts))


def test_choice_template_choices(choice_context):
    test = "choice_template_choices"

    @fuzz_settings(MEDIUM)
    @given(
        choices=mostly(
            valid_choices(),
            st.lists(CHOICE_TEXT, max_size=4),
            st.dictionaries(
                st.one_of(st.text(max_size=3), st.integers(0, 3)),
                CHOICE_TEXT,
                max_size=4,
            ),
            ODD_VALUES,
        ),
        max_choice_length=with_odd(st.integers(1, 5), fuzz.ODD_SMALL_VALUES),
        batch=st.integers(1, 3),
        extra_fields=mostly(
            st.just({"c1", "c2"}), st.sets(st.sampled_from(CHOICE_FIELDS))
        ),
        labels=mostly(
            st.none(), st.integers(-1, 4), st.text(max_size=3), ODD_VALUES
        ),
        data=st.data(),
    )
    def check(choices, max_choice_length, batch, extra_fields, labels, data):
        outcome = check_property(
            test,
            lambda: ChoiceTemplate(
                choice_context, choices, max_choice_length=max_choice_length
            ),
            CHOICE_NAMES,
        )
        if not outcome[0]:
            return
        choice_template = outcome[1]
        rows = st.lists(TEXT, min_size=batch, max_size=batch)
        x = {
            name: data.draw(rows)
            for name in ["premise", "hypothesis", *sorted(extra_fields)]
        }
        y = None if labels is None else [labels] * batch
        outcome = check_property(
            test, lambda: choice_template(x, y), CHOICE_NAMES
        )
        if outcome[0]:
            result = outcome[1]
            inputs = result[0] if y is not None else result
            _check_choice_inputs(choice_template, inputs, batch)

    check()
    fuzz.report(test, MEDIUM // 2)


def _check_choice_inputs(choice_template, inputs, batch):
    """Each choice token is predicted at the position before it (one row
    per choice), or all choices at the prompt's last token (one row)."""
    num_choices = choice_template.num_choices
    width = choice_template.max_choice_length
    ids = inputs["token_ids"]
    num_rows = 1 if choice_template.shares_one_row else num_choices
    assert ids.shape[:2] == (batch, num_rows)
    for name in ("choice_positions", "choice_ids", "choice_mask"):
        assert inputs[name].shape == (batch, num_choices, width), name
    choice_mask = inputs["choice_mask"].astype(bool)
    assert choice_mask[..., 0].all()
    flat = ids.reshape(batch, -1)
    positions = inputs["choice_positions"]
    for b in range(batch):
        real = inputs["padding_mask"][b].reshape(-1).astype(bool)
        for c in range(num_choices):
            where = positions[b, c][choice_mask[b, c]]
            assert real[where].all()
            if num_rows > 1:
                np.testing.assert_array_equal(
                    flat[b, where + 1],
                    inputs["choice_ids"][b, c][choice_mask[b, c]],
                )


# === Adapter files ===

ADAPTER_CONFIG = PromptEncoderConfig(4, encoder_hidden_size=8)


def _classifier():
    return PTuningTextClassifier(
        FAMILIES["bert"](), 3, prompt_config=ADAPTER_CONFIG, pooling="pooled"
    )


def _model_state(model):
    ptuning = model._ptuning_backbone()
    variables = [ptuning.prompt_injection.prompt_table]
    variables += list(model._head_variables().values())
    variables += list(ptuning.prompt_encoder.weights)
    return ptuning.prompt_source, [to_numpy(v).copy() for v in variables]


def _restore_state(model, state):
    ptuning = model._ptuning_backbone()
    source, values = state
    variables = [ptuning.prompt_injection.prompt_table]
    variables += list(model._head_variables().values())
    variables += list(ptuning.prompt_encoder.weights)
    for variable, value in zip(variables, values):
        variable.assign(value)
    ptuning.prompt_injection.set_prompt_source(source)


def _same_state(a, b):
    return a[0] == b[0] and all(
        np.array_equal(x, y, equal_nan=True) for x, y in zip(a[1], b[1])
    )


class AdapterCase:
    """A donor classifier's adapter files (with and without the encoder)
    and a target of the same shapes with other weights to load them into
    (reset before each input, so a half-done load shows)."""

    def __init__(self, directory):
        self.directory = directory
        self.donor = _classifier()
        self.target = _classifier()
        self.files = {
            "plain": os.path.join(directory, "plain.adapter.h5"),
            "encoder": os.path.join(directory, "encoder.adapter.h5"),
        }
        self.donor.save_adapter(self.files["plain"])
        self.donor.save_adapter(self.files["encoder"], include_encoder=True)
        self.baseline = _model_state(self.target)
        assert not _same_state(self.baseline, _model_state(self.donor))


@pytest.fixture(scope="module")
def adapter_case(tmp_path_factory):
    return AdapterCase(str(tmp_path_factory.mktemp("adapters")))


def test_adapter_files_mutated(adapter_case):
    test = "adapter_files_mutated"
    case = adapter_case
    config_keys = set(read_adapter_config(case.files["encoder"]))
    datasets = set(fuzz.h5_dataset_names(case.files["encoder"]))
    mutated = os.path.join(case.directory, "mutated.adapter.h5")

    @fuzz_settings(MEDIUM)
    @given(
        source=st.sampled_from(["plain", "encoder"]),
        mutations=st.lists(
            fuzz.adapter_mutations(config_keys, datasets),
            min_size=1,
            max_size=3,
        ),
    )
    def check(source, mutations):
        fuzz.mutate_adapter(case.files[source], mutated, mutations)
        _restore_state(case.target, case.baseline)
        outcome = check_property(
            test,
            lambda: case.target.load_adapter(mutated),
            [repr(mutated), "adapter", "filepath"],
        )
        if not outcome[0]:
            if not _same_state(_model_state(case.target), case.baseline):
                raise Violation(
                    f"a refused load changed the model: {mutations}"
                )
            return
        with h5py.File(mutated, "r") as f:
            table = np.asarray(f["prompt_table"][()], "float32")
        injection = case.target._ptuning_backbone().prompt_injection
        np.testing.assert_array_equal(to_numpy(injection.prompt_table), table)

    check()
    fuzz.report(test, MEDIUM // 2)


PATH_KINDS = [
    "new",
    "new",
    "existing_file",
    "existing_dir",
    "missing_parent",
    "under_file",
    "pathlike",
    "bytes",
    "none",
    "int",
]


def _target_path(root, kind, name):
    """A path of `kind` under `root` (made ready: an existing file holds
    "old", an existing directory a file "keep.txt")."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, name)
    if kind == "existing_file":
        with open(path, "w") as f:
            f.write("old")
    elif kind == "existing_dir":
        os.makedirs(path)
        with open(os.path.join(path, "keep.txt"), "w") as f:
            f.write("keep")
    elif kind == "missing_parent":
        path = os.path.join(root, "missing", name)
    elif kind == "under_file":
        with open(os.path.join(root, "a_file"), "w") as f:
            f.write("old")
        path = os.path.join(root, "a_file", name)
    elif kind == "pathlike":
        return pathlib.Path(path)
    elif kind == "bytes":
        return path.encode()
    elif kind == "none":
        return None
    elif kind == "int":
        return 7
    return path


def _watched(path):
    """`(snapshot, parent, its entries)` of a str or PathLike `path`, for
    checking a refused save; `None` for other values."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        return None
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    while not os.path.isdir(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    return fuzz.snapshot(path), parent, os.listdir(parent)


def _check_untouched(path, watched, what):
    if watched is None:
        return
    before, parent, entries = watched
    fuzz.check_unchanged(os.path.abspath(os.fspath(path)), before, what)
    if fuzz.leftovers(parent, entries):
        raise Violation(
            f"a refused {what} left {fuzz.leftovers(parent, entries)} in "
            f"{parent!r}"
        )


def test_adapter_save_and_load_paths(adapter_case, tmp_path):
    test = "adapter_save_and_load_paths"
    case = adapter_case
    counter = iter(range(10**6))

    @fuzz_settings(SMALL)
    @given(
        kind=st.sampled_from(PATH_KINDS),
        name=fuzz.path_names(),
        overwrite=with_odd(st.booleans()),
        include_encoder=with_odd(st.booleans()),
    )
    def check(kind, name, overwrite, include_encoder):
        root = os.path.join(str(tmp_path), str(next(counter)))
        path = _target_path(root, kind, name)
        watched = _watched(path)
        outcome = check_property(
            test,
            lambda: case.donor.save_adapter(
                path, include_encoder=include_encoder, overwrite=overwrite
            ),
            ["filepath", "overwrite", "include_encoder"],
        )
        if not outcome[0]:
            _check_untouched(path, watched, "save_adapter")
        else:
            assert isinstance(include_encoder, bool)
            assert isinstance(overwrite, bool)
            config = read_adapter_config(path)
            assert config["include_encoder"] == include_encoder
            assert fuzz.leftovers(root, watched[2]) in ([], [name])
        # Loading from the same kind of path.
        _restore_state(case.target, case.baseline)
        outcome = check_property(
            test,
            lambda: case.target.load_adapter(path),
            ["filepath", "adapter"],
        )
        if not outcome[0]:
            assert _same_state(_model_state(case.target), case.baseline)

    check()
    fuzz.report(test, SMALL // 2)


# === PEFT adapter directories ===

PEFT_NAMES = [
    "directory",
    "adapter",
    "PEFT",
    "model_or_backbone",
    "backbone",
    "peft_type",
    "num_transformer_submodules",
    "task_type",
    "num_virtual_tokens",
    "token_dim",
    "encoder_reparameterization_type",
    "encoder_hidden_size",
    "encoder_num_layers",
    "encoder_dropout",
]


class PeftCase:
    """A donor classifier's PEFT adapter directory, and a target model of
    the same shapes with other weights (reset before each input)."""

    def __init__(self, directory):
        self.directory = directory
        self.donor = _classifier()
        self.target = _classifier()
        self.adapter = os.path.join(directory, "adapter")
        save_peft_adapter(self.donor, self.adapter)
        self.baseline = _model_state(self.target)


@pytest.fixture(scope="module")
def peft_case(tmp_path_factory):
    pytest.importorskip("safetensors")
    return PeftCase(str(tmp_path_factory.mktemp("peft")))


def test_peft_directories_mutated(peft_case):
    from safetensors.numpy import load_file

    test = "peft_directories_mutated"
    case = peft_case
    with open(os.path.join(case.adapter, "adapter_config.json")) as f:
        config_keys = set(json.load(f))
    tensors_path = os.path.join(case.adapter, "adapter_model.safetensors")
    tensor_names = set(load_file(tensors_path))
    mutated = os.path.join(case.directory, "mutated")

    @fuzz_settings(MEDIUM)
    @given(
        target=st.sampled_from(["model", "model", "backbone"]),
        mutations=st.lists(
            fuzz.peft_mutations(config_keys, tensor_names),
            min_size=1,
            max_size=3,
        ),
    )
    def check(target, mutations):
        fuzz.mutate_peft(case.adapter, mutated, mutations)
        _restore_state(case.target, case.baseline)
        model = case.target if target == "model" else FAMILIES["bert"]()
        outcome = check_property(
            test,
            lambda: load_peft_adapter(model, mutated),
            PEFT_NAMES + [repr(mutated)],
        )
        if not outcome[0]:
            state = _model_state(case.target)
            if not _same_state(state, case.baseline):
                raise Violation(
                    f"a refused load changed the model: {mutations}"
                )
            return
        loaded = outcome[1]
        if target == "model":
            assert loaded is case.target
        table = load_file(os.path.join(mutated, "adapter_model.safetensors"))
        np.testing.assert_array_equal(
            to_numpy(loaded._ptuning_backbone().prompt_table()),
            table["prompt_embeddings"].astype("float32"),
        )

    check()
    fuzz.report(test, MEDIUM // 2)


def test_peft_save_and_load_paths(peft_case, tmp_path):
    test = "peft_save_and_load_paths"
    case = peft_case
    counter = iter(range(10**6))
    slot_model = PTuningTextClassifier(
        FAMILIES["bert"](), 3, prompt_config=ADAPTER_CONFIG, placeholder_id=-1
    )
    models = {
        "classifier": case.donor,
        "slots": slot_model,
        "mean_pooling": PTuningTextClassifier(
            FAMILIES["bert"](), 3, prompt_config=ADAPTER_CONFIG, pooling="mean"
        ),
        "backbone": FAMILIES["bert"](),
    }

    @fuzz_settings(SMALL)
    @given(
        model=mostly(st.just("classifier"), st.sampled_from(sorted(models))),
        kind=st.sampled_from(PATH_KINDS + ["existing_adapter"]),
        name=fuzz.path_names(),
        base=mostly(st.none(), st.text(max_size=8), ODD_VALUES),
        overwrite=with_odd(st.booleans()),
        transformers_version=mostly(
            st.none(), st.sampled_from(["4.50.0", "5.4", "x.y"]), ODD_VALUES
        ),
    )
    def check(model, kind, name, base, overwrite, transformers_version):
        root = os.path.join(str(tmp_path), str(next(counter)))
        if kind == "existing_adapter":
            path = os.path.join(root, name)
            shutil.copytree(case.adapter, path)
        else:
            path = _target_path(root, kind, name)
        watched = _watched(path)
        outcome = check_property(
            test,
            lambda: save_peft_adapter(
                models[model],
                path,
                base,
                overwrite=overwrite,
                transformers_version=transformers_version,
            ),
            ["directory", "model", "base_model_name_or_path", "overwrite"]
            + ["transformers_version", "placeholder_id", "pooling"],
        )
        if not outcome[0]:
            _check_untouched(path, watched, "save_peft_adapter")
            return
        assert isinstance(overwrite, bool)
        # Written: it loads back into a model of the same shapes.
        _restore_state(case.target, case.baseline)
        loaded = load_peft_adapter(case.target, path)
        np.testing.assert_array_equal(
            to_numpy(loaded._ptuning_backbone().prompt_table()),
            to_numpy(models[model]._ptuning_backbone().prompt_table()),
        )

    check()
    # Loading from paths that are not adapter directories.
    for value in [None, 7, b"/nonexistent", str(tmp_path / "missing")]:
        outcome = check_property(
            test,
            lambda: load_peft_adapter(case.target, value),
            ["directory"],
        )
        assert not outcome[0]
    fuzz.report(test, SMALL // 2)


# === export_saved_model ===


@pytest.fixture(scope="module")
def export_models():
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        gpt2_tokenizer(), sequence_length=8
    )
    return {
        "backbone": PTuningBackbone(
            FAMILIES["distil_bert"](), PromptEncoderConfig(3)
        ),
        "causal_lm": PTuningCausalLM(
            FAMILIES["gpt2"](),
            prompt_config=PromptEncoderConfig(2),
            preprocessor=preprocessor,
        ),
        "causal_lm_bare": PTuningCausalLM(
            FAMILIES["gpt2"](), prompt_config=PromptEncoderConfig(2)
        ),
        "keras_hub_backbone": FAMILIES["bert"](),
        "string": "model.keras",
        "none": None,
    }


EXPORT_NAMES = ["model", "path", "overwrite", "include_preprocessing"]
EXPORT_NAMES += ["max_length"]


def _stub_writers(monkeypatch, calls):
    """Replaces the SavedModel writers by one that records its arguments
    and writes a marker file."""

    def write(model, output, include_preprocessing=False, max_length=None):
        calls.append((include_preprocessing, max_length))
        os.makedirs(output)
        with open(os.path.join(output, "saved_model.pb"), "w") as f:
            f.write("stub")

    def write_in_child(model, staging, output, *args):
        write(model, output, *args)

    monkeypatch.setattr(export, "write_saved_model", write)
    monkeypatch.setattr(export, "_export_in_tensorflow_process", write_in_child)


def test_export_arguments(export_models, tmp_path):
    test = "export_arguments"
    counter = iter(range(10**6))
    calls = []

    @fuzz_settings(MEDIUM)
    @given(
        model=mostly(
            st.sampled_from(["backbone", "causal_lm"]),
            st.sampled_from(sorted(export_models)),
        ),
        kind=mostly(
            st.sampled_from(["new", "existing_dir", "existing_file"]),
            st.sampled_from(PATH_KINDS + ["empty"]),
        ),
        name=fuzz.path_names(),
        overwrite=with_odd(st.booleans()),
        include_preprocessing=with_odd(st.booleans()),
        max_length=mostly(st.none(), st.integers(-2, 40), ODD_VALUES),
    )
    def check(model, kind, name, overwrite, include_preprocessing, max_length):
        root = os.path.join(str(tmp_path), str(next(counter)))
        path = "" if kind == "empty" else _target_path(root, kind, name)
        watched = _watched(path)
        del calls[:]
        outcome = check_property(
            test,
            lambda: export_saved_model(
                export_models[model],
                path,
                overwrite=overwrite,
                include_preprocessing=include_preprocessing,
                max_length=max_length,
            ),
            EXPORT_NAMES,
        )
        if not outcome[0]:
            _check_untouched(path, watched, "export_saved_model")
            return
        assert isinstance(overwrite, bool)
        # Exported: the writer got checked arguments, the path holds it.
        [(include, length)] = calls
        assert include is include_preprocessing
        assert length is None or (isinstance(length, int) and length >= 1)
        assert outcome[1] == os.path.abspath(os.fspath(path))
        assert os.listdir(outcome[1]) == ["saved_model.pb"]
        assert not [n for n in os.listdir(root) if n.startswith(".export")]

    with pytest.MonkeyPatch.context() as monkeypatch:
        _stub_writers(monkeypatch, calls)
        check()
    fuzz.report(test, MEDIUM // 2)


@run_on_one_backend(
    "tensorflow",
    "real exports trace in TensorFlow on every backend (a child process "
    "from JAX and PyTorch, seconds each); the argument handling around "
    "them is fuzzed on every backend by test_export_arguments",
)
def test_export_writes_saved_models(export_models, tmp_path):
    test = "export_writes_saved_models"
    model = export_models["backbone"]
    counter = iter(range(10**6))

    @fuzz_settings(3)
    @given(
        kind=st.sampled_from(["new", "existing_dir"]), name=fuzz.path_names()
    )
    def check(kind, name):
        root = os.path.join(str(tmp_path), str(next(counter)))
        path = _target_path(root, kind, name)
        outcome = check_property(
            test,
            lambda: export_saved_model(model, path, overwrite=True),
            EXPORT_NAMES,
        )
        assert outcome[0]
        assert os.path.isfile(os.path.join(path, "saved_model.pb"))
        assert sorted(os.listdir(root)) == [name]
        assert model.prompt_source == "encoder"

    check()
    fuzz.report(test, 2)


# === Regressions: the bugs the fuzzing found, each fixed ===
#
# Each test is a bug's minimal reproducer: the input is now refused with a
# `ValueError`/`TypeError` naming the argument (`refuse_cleanly`), and
# nothing is written or changed.


def _tree(directory):
    """Every file's bytes and every directory under `directory`."""
    directories = sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, names, _ in os.walk(directory)
        for name in names
    )
    return fuzz.snapshot(directory), directories


def refuse_leaving(directory, call, names):
    """`refuse_cleanly(call, names)`, and `directory` holds the same files
    and directories afterwards."""
    before = _tree(directory)
    error = refuse_cleanly(call, names)
    if _tree(directory) != before:
        raise Violation(f"a refused call changed {directory!r}")
    return error


def refuse_loading(model, call, names):
    """`refuse_cleanly(call, names)` on a model reset to its state before,
    and the model is unchanged afterwards (`model`: a case's target)."""
    before = _model_state(model)
    error = refuse_cleanly(call, names)
    if not _same_state(_model_state(model), before):
        raise Violation("a refused load changed the model")
    return error


def test_regression_template_huge_slot_count(tokenizers):
    # Was an OverflowError (and gigabytes allocated for n near 1e9).
    refuse_cleanly(
        lambda: PromptTemplate(
            "{a} [P:99999999999999999999]",
            tokenizers["wordpiece"],
            sequence_length=16,
        ),
        ["sequence_length", "template"],
    )


def _wordpiece_template(**kwargs):
    return PromptTemplate("[P] {a}", bert_tokenizer(), **kwargs)


def _calling(make, **kwargs):
    """A `prepare(request, directory)` returning `lambda: make(**kwargs)`."""
    return lambda request, directory: lambda: make(**kwargs)


def _saving_adapter(**kwargs):
    """`save_adapter` to a new file of the directory."""

    def prepare(request, directory):
        case = request.getfixturevalue("adapter_case")
        path = os.path.join(directory, "new.adapter.h5")
        return lambda: case.donor.save_adapter(path, **kwargs)

    return prepare


def _saving_peft_adapter(**kwargs):
    """`save_peft_adapter` over a PEFT adapter the directory holds."""

    def prepare(request, directory):
        case = request.getfixturevalue("peft_case")
        path = os.path.join(directory, "adapter")
        shutil.copytree(case.adapter, path)
        return lambda: save_peft_adapter(case.donor, path, **kwargs)

    return prepare


def _exporting(**kwargs):
    """`export_saved_model` (writer stubbed) over an existing export."""

    def prepare(request, directory):
        model = request.getfixturevalue("export_models")["backbone"]
        _stub_writers(request.getfixturevalue("monkeypatch"), [])
        path = _target_path(directory, "existing_dir", "exported")
        return lambda: export_saved_model(model, path, **kwargs)

    return prepare


# Was numpy's "truth value of an array is ambiguous" ValueError, naming
# nothing (before anything was written, for the savers).
ARRAY_ARGUMENTS = {
    "truncate": _calling(
        _wordpiece_template, truncate=np.array(["round_robin", "waterfall"])
    ),
    "text_slots": _calling(
        _wordpiece_template, text_slots=np.array(["prompt", "text"])
    ),
    "segment_ids": _calling(
        _wordpiece_template, segment_ids=np.array([True, False])
    ),
    "add_start_token": _calling(
        _wordpiece_template, add_start_token=np.array([True, False])
    ),
    "add_end_token": _calling(
        _wordpiece_template, add_end_token=np.array([True, False])
    ),
    "prompt_init": _calling(
        PromptEncoderConfig,
        num_virtual_tokens=3,
        prompt_init=np.array(["random", "text"]),
    ),
    "reduction": _calling(
        Verbalizer,
        word_ids=[[1], [2]],
        score_reduction=np.array(["mean", "max"]),
    ),
    "include_encoder": _saving_adapter(include_encoder=np.array([1, 2])),
    "adapter_overwrite": _saving_adapter(overwrite=np.array([1, 2])),
    "peft_overwrite": _saving_peft_adapter(overwrite=np.array([1, 2])),
    "export_overwrite": _exporting(overwrite=np.array([1, 2])),
}


@pytest.mark.parametrize("case", sorted(ARRAY_ARGUMENTS))
def test_regression_arguments_given_arrays(request, tmp_path, case):
    # The case's name ends with the argument's (`peft_overwrite`).
    name = "overwrite" if case.endswith("_overwrite") else case
    call = ARRAY_ARGUMENTS[case](request, str(tmp_path))
    refuse_leaving(str(tmp_path), call, [name])


@pytest.mark.parametrize(
    "value",
    [[1, 2], None, ["a", 1], []],
    ids=["ints", "none", "mixed", "empty"],
)
def test_regression_template_non_string_fields(tokenizers, value):
    # Failed in TensorFlow's conversion or in the traced tokenizer,
    # naming no field.
    template = PromptTemplate(
        "{a} [P:2] the", tokenizers["sentencepiece"], sequence_length=8
    )
    refuse_cleanly(lambda: template({"a": value}), ["'a'", "field"])


@pytest.mark.parametrize("traced", [False, True], ids=["first", "traced"])
def test_regression_template_fields_of_different_sizes(tokenizers, traced):
    # The first call failed in TensorFlow (InvalidArgumentError); once
    # traced for any batch size, the same input returned rows read past
    # the shorter field's end or aborted the process.
    template = PromptTemplate(
        "{a} [P:2] {b}", tokenizers["sentencepiece"], sequence_length=12
    )
    if traced:
        for batch in (["the"], ["it", "the movie"]):
            template({"a": batch, "b": batch})
    refuse_cleanly(
        lambda: template({"a": ["the", "the"], "b": ["the"]}),
        ["'a'", "'b'", "field"],
    )


def test_regression_config_from_dict_mixed_key_types():
    # Sorting the unknown keys raised TypeError('<' not supported ...).
    refuse_cleanly(
        lambda: PromptEncoderConfig.from_dict({1: 2, "a": 3}),
        ["PromptEncoderConfig", "config"],
    )


@pytest.mark.parametrize("word_ids", [3, [3, 4]], ids=["int", "flat"])
def test_regression_verbalizer_flat_word_ids(word_ids):
    # Was TypeError('int' object is not iterable).
    refuse_cleanly(lambda: Verbalizer(word_ids), ["word_ids"])


def test_regression_verbalizer_ids_beyond_int32():
    # Overflowed the int32 id table (OverflowError).
    refuse_cleanly(lambda: Verbalizer([[2**31], [1]]), ["word_ids", "Label"])


def test_regression_label_words_not_a_list():
    # Iterated 1.5: TypeError('float' object is not iterable).
    refuse_cleanly(
        lambda: label_word_ids({"a": 1.5, "b": [3]}), ["verbalizer", "label"]
    )


@pytest.mark.parametrize(
    "choices, x",
    [
        (["{", " no"], None),
        (["{0}", " no"], {"0": ["the"]}),
        (["{}", "{c1}"], {"c1": ["the"]}),
        (["{c1!z}", " no"], {"c1": ["the"]}),
        (["{c1:{c2}}", " no"], {"c1": ["the"], "c2": ["the"]}),
    ],
    ids=["brace", "index", "positional", "conversion", "nested"],
)
def test_regression_choice_format_syntax(choice_context, choices, x):
    # Only `{name}` is supported: other syntax failed at construction
    # naming nothing, or at the call (IndexError, KeyError).
    def call():
        choice_template = ChoiceTemplate(choice_context, choices)
        inputs = {"premise": ["the"], "hypothesis": ["the"], **(x or {})}
        choice_template(inputs)

    refuse_cleanly(call, ["choices"])


def _mutated_adapter(case, source, mutations):
    path = os.path.join(case.directory, "reproducer.adapter.h5")
    fuzz.mutate_adapter(case.files[source], path, mutations)
    return path


def _refuse_adapter(case, path):
    """Loading `path` into the reset target is refused naming the path
    and leaves the target unchanged."""
    _restore_state(case.target, case.baseline)
    try:
        refuse_loading(
            case.target, lambda: case.target.load_adapter(path), [path]
        )
    finally:
        _restore_state(case.target, case.baseline)


@pytest.mark.parametrize(
    "source, mutation",
    [
        ("plain", ("config_delete", "include_encoder")),
        ("plain", ("config_delete", "task")),
        ("encoder", ("config_delete", "encoder_weights")),
        ("plain", ("config_raw", "[1]")),
        ("plain", ("config_raw", "{")),
        ("plain", ("config_set", "backbone_architecture", [1])),
        ("encoder", ("config_set", "encoder_weights", 3)),
        ("encoder", ("config_set", "encoder_weights", list("abcdefghij"))),
    ],
    ids=[
        "no_include_encoder",
        "no_task",
        "no_encoder_weights",
        "list",
        "invalid_json",
        "architecture_list",
        "encoder_weights_int",
        "encoder_weights_long",
    ],
)
def test_regression_adapter_config_structure(adapter_case, source, mutation):
    # The file's JSON config was trusted: KeyError, AttributeError, or an
    # unnamed TypeError/JSONDecodeError.
    _refuse_adapter(
        adapter_case, _mutated_adapter(adapter_case, source, [mutation])
    )


@pytest.mark.parametrize(
    "source, mutation",
    [
        ("plain", ("dataset_delete", "prompt_table")),
        ("encoder", ("dataset_delete", "encoder/0")),
        ("plain", ("dataset_group", "prompt_table")),
        ("plain", ("dataset_shape", "prompt_table", ("scalar",))),
        ("plain", ("dataset_shape", "prompt_table", ("empty",))),
        ("plain", ("dataset_dtype", "head/bias", "bytes")),
    ],
    ids=["no_prompt", "no_encoder_0", "group", "scalar", "empty", "bytes"],
)
def test_regression_adapter_array_structure(adapter_case, source, mutation):
    # The file's arrays were trusted: KeyError, IndexError (in the error
    # message's own formatting), an unnamed TypeError.
    _refuse_adapter(
        adapter_case, _mutated_adapter(adapter_case, source, [mutation])
    )


@pytest.mark.parametrize("size", [0, 500], ids=["empty", "truncated"])
def test_regression_adapter_unreadable_file(adapter_case, size):
    # Was h5py's OSError.
    path = _mutated_adapter(adapter_case, "plain", [("file_truncate", size)])
    _refuse_adapter(adapter_case, path)


@pytest.mark.parametrize("table", ["bytes", "complex64", "nan", "inf"])
def test_regression_adapter_load_not_half_applied(adapter_case, table):
    # The head was assigned before the prompt table failed to cast (a
    # backend error), leaving the model half-loaded.
    case = adapter_case
    if table in ("bytes", "complex64"):
        mutation = ("dataset_dtype", "prompt_table", table)
        path = _mutated_adapter(case, "plain", [mutation])
    else:  # One value of the prompt table NaN or inf.
        path = _mutated_adapter(case, "plain", [])
        with h5py.File(path, "r+") as f:
            values = f["prompt_table"][()]
            values.flat[0] = float(table)
            f["prompt_table"][...] = values
    _refuse_adapter(case, path)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize(
    "kind", ["existing_dir", "missing_parent", "under_file"]
)
def test_regression_adapter_save_paths(adapter_case, tmp_path, kind, overwrite):
    # Raised IsADirectoryError, FileNotFoundError or NotADirectoryError.
    path = _target_path(str(tmp_path), kind, "x.adapter.h5")
    refuse_leaving(
        str(tmp_path),
        lambda: adapter_case.donor.save_adapter(path, overwrite=overwrite),
        ["filepath"],
    )


@pytest.mark.parametrize("value", [None, 7, b"x.adapter.h5"])
def test_regression_adapter_load_path_type(adapter_case, value):
    # load_adapter(None) raised os.stat's TypeError, naming nothing.
    case = adapter_case
    _restore_state(case.target, case.baseline)
    refuse_loading(
        case.target, lambda: case.target.load_adapter(value), ["filepath"]
    )


def _mutated_peft(case, mutations):
    path = os.path.join(case.directory, "reproducer")
    fuzz.mutate_peft(case.adapter, path, mutations)
    return path


def _refuse_peft(case, path, model=None):
    """Loading the PEFT adapter `path` into the reset target (or into
    `model`) is refused naming it, the target unchanged."""
    _restore_state(case.target, case.baseline)
    target = case.target if model is None else model
    names = ["directory"] + ([path] if isinstance(path, str) else [])
    try:
        refuse_loading(
            case.target, lambda: load_peft_adapter(target, path), names
        )
    finally:
        _restore_state(case.target, case.baseline)


@pytest.mark.parametrize("raw", ["[1]", "{"], ids=["list", "invalid"])
def test_regression_peft_config_not_an_object(peft_case, raw):
    # Was AttributeError, or an unnamed JSONDecodeError.
    _refuse_peft(peft_case, _mutated_peft(peft_case, [("config_raw", raw)]))


def test_regression_peft_unreadable_safetensors(peft_case):
    # Was safetensors' SafetensorError.
    path = _mutated_peft(peft_case, [("file_truncate", 5)])
    _refuse_peft(peft_case, path)


def test_regression_peft_head_not_2d_into_a_backbone(peft_case):
    # The class count was read from kernel.shape[1]: IndexError.
    path = _mutated_peft(
        peft_case,
        [("tensor_shape", "base_model.classifier.weight", ("drop",))],
    )
    _refuse_peft(peft_case, path, FAMILIES["bert"]())


@pytest.mark.parametrize("value", [None, 7, b"adapter"])
def test_regression_peft_directory_not_a_path(peft_case, value):
    # load_peft_adapter(model, None) raised os.path.join's TypeError.
    _refuse_peft(peft_case, value)


def test_regression_peft_save_base_not_json(peft_case, tmp_path):
    # json.dump failed naming nothing, after os.makedirs had made the
    # parents (left behind).
    directory = str(tmp_path / "missing" / "adapter")
    refuse_leaving(
        str(tmp_path),
        lambda: save_peft_adapter(peft_case.donor, directory, object()),
        ["base_model_name_or_path"],
    )


def test_regression_peft_save_under_a_file(peft_case, tmp_path):
    # Was NotADirectoryError.
    path = _target_path(str(tmp_path), "under_file", "adapter")
    refuse_leaving(
        str(tmp_path),
        lambda: save_peft_adapter(peft_case.donor, path),
        ["directory"],
    )


def test_regression_export_path_is_a_file(export_models, tmp_path, monkeypatch):
    # Exported, then shutil.rmtree(path) raised NotADirectoryError.
    calls = []
    _stub_writers(monkeypatch, calls)
    path = _target_path(str(tmp_path), "existing_file", "exported")
    refuse_leaving(
        str(tmp_path),
        lambda: export_saved_model(
            export_models["backbone"], path, overwrite=True
        ),
        ["path"],
    )
    assert calls == []


def test_regression_export_parent_is_a_file(
    export_models, tmp_path, monkeypatch
):
    # Was os.makedirs' FileExistsError.
    calls = []
    _stub_writers(monkeypatch, calls)
    path = _target_path(str(tmp_path), "under_file", "exported")
    refuse_leaving(
        str(tmp_path),
        lambda: export_saved_model(export_models["backbone"], path),
        ["path"],
    )
    assert calls == []

"""Tiny random presets standing in for the real presets examples name.

The docstring examples (`tests/docstring_test.py`) and the README's quick
starts (`tests/readme_test.py`) load real presets (`"bert_base_en"`,
`minilm_preset_dir()`, ...), which cannot be downloaded or converted in
the tests: while `tiny_presets_in_place` is active, each resolves to a tiny
random preset saved by `build_tiny_presets`, and no other keras-hub preset
name resolves at all (nothing is downloaded). `run_example` runs a code
block so that tracebacks show its lines.
"""

import contextlib
import linecache

import keras
import keras_hub

from keras_ptuning import presets
from tests.backbones import _ENCODER
from tests.backbones import _ROPE
from tests.support import bert_tokenizer
from tests.support import byte_level_llama3_tokenizer
from tests.support import sentencepiece_proto

# The keras-hub preset names the examples use -> the tiny preset standing in
# for them (a family the name's `from_preset` calls accept).
BUILTIN_SUBSTITUTES = {
    "bert_tiny_en_uncased": "bert",
    "bert_base_en": "bert",
    "bert_base_en_uncased": "bert",
    "gpt2_base_en": "gpt2",
    "gemma_2b_en": "gemma",
}
# keras_ptuning.presets' offline checkpoints -> their tiny stand-ins. The
# decoder examples use only the API every keras-hub decoder shares
# (`CausalLM.from_preset`, its tokenizer, preprocessor and backbone), so
# SmolLM2 (Llama 3) stands in as a tiny Gemma: the trace of keras-hub's
# byte-level BPE takes ~3 s on 2 cores for every template and dataset,
# SentencePiece's 0.1 s (measured: 8 s against 2 s for
# `PTuningNextTokenLM`'s example; 41 s against 21 s for the README's quick
# starts). Not as a Gemma 3: its causal-LM preprocessor trains on
# `{"prompts", "responses"}` dicts, where SmolLM2's (and Gemma's) takes
# strings.
LOCAL_SUBSTITUTES = {
    "minilm_preset_dir": "bert",
    "smollm2_preset_dir": "gemma_lm",
    "gemma3_preset_dir": "gemma3",
}
# Words the decoder examples score or predict as one token each (all are
# one token of SmolLM2's vocabulary too).
DECODER_WORDS = [
    "yes", "no", "France", "Italy", "Germany", "is", "the", "capital", "of",
]  # fmt: skip
FAMILIES = ("bert", "gpt2", "gemma3", "gemma_lm", "gemma")


def _save(task, path):
    task.save_to_preset(path)
    return path


def _bert(path):
    # A masked LM (so `MaskedLM.from_preset` loads it too) with enough
    # positions for the examples' sequences and 20 virtual tokens.
    bert = keras_hub.models.BertBackbone(
        **{**_ENCODER, "max_sequence_length": 128}
    )
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
        bert_tokenizer(), sequence_length=32
    )
    return _save(keras_hub.models.BertMaskedLM(bert, preprocessor), path)


def _gpt2(path):
    # GPT-2's byte-level BPE: every byte, so any text.
    byte_level = byte_level_llama3_tokenizer([" the"])
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=byte_level.vocabulary, merges=byte_level.merges
    )
    gpt2 = keras_hub.models.GPT2Backbone(
        **{
            **_ENCODER,
            "vocabulary_size": tokenizer.vocabulary_size(),
            "max_sequence_length": 256,
        }
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=32
    )
    return _save(keras_hub.models.GPT2CausalLM(gpt2, preprocessor), path)


def _decoder_words_proto():
    """Gemma's SentencePiece (no dummy prefix, byte fallback, so any text)
    with `DECODER_WORDS` as single tokens."""
    return sentencepiece_proto(
        [" ".join(DECODER_WORDS)],
        4 + 256 + len(DECODER_WORDS),
        bos_piece="<bos>",
        eos_piece="<eos>",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        byte_fallback=True,
    )


def _gemma3(path):
    tokenizer = keras_hub.models.Gemma3Tokenizer(
        proto=_decoder_words_proto(),
        has_vision_tokens=False,
    )
    gemma3 = keras_hub.models.Gemma3Backbone(
        **{**_ROPE, "vocabulary_size": tokenizer.vocabulary_size()},
        head_dim=8,
        image_size=16,
        sliding_window_size=8,
    )
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=32
    )
    return _save(
        keras_hub.models.Gemma3CausalLM(
            backbone=gemma3, preprocessor=preprocessor
        ),
        path,
    )


def _gemma_lm(path):
    tokenizer = keras_hub.models.GemmaTokenizer(proto=_decoder_words_proto())
    gemma = keras_hub.models.GemmaBackbone(
        **{**_ROPE, "vocabulary_size": tokenizer.vocabulary_size()},
        head_dim=8,
    )
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(
        tokenizer, sequence_length=32
    )
    return _save(keras_hub.models.GemmaCausalLM(gemma, preprocessor), path)


def _gemma(path):
    # The backbone alone: the distribution example feeds token ids below
    # 1000.
    gemma = keras_hub.models.GemmaBackbone(
        **{**_ROPE, "vocabulary_size": 1000}, head_dim=8
    )
    return _save(gemma, path)


_BUILDERS = {
    "bert": _bert,
    "gpt2": _gpt2,
    "gemma3": _gemma3,
    "gemma_lm": _gemma_lm,
    "gemma": _gemma,
}


def build_tiny_presets(root, families=FAMILIES):
    """Saves the tiny presets of `families` under the folder `root`;
    returns `{family: folder}`."""
    return {
        family: _BUILDERS[family](str(root / family)) for family in families
    }


@contextlib.contextmanager
def tiny_presets_in_place(monkeypatch, folders, workdir):
    """The examples' presets resolve to `folders` (`build_tiny_presets`'
    result; names of other families resolve to nothing), files land in
    `workdir`, and a distribution the example sets is removed afterwards."""
    from keras_hub.src.utils import preset_utils

    builtin = {
        name: {"kaggle_handle": folders[family], "metadata": {}}
        for name, family in BUILTIN_SUBSTITUTES.items()
        if family in folders
    }
    # Only the substitutes: any other preset name fails, never downloads.
    monkeypatch.setattr(preset_utils, "BUILTIN_PRESETS", builtin)
    for name, family in LOCAL_SUBSTITUTES.items():
        if family in folders:
            monkeypatch.setattr(
                presets, name, lambda *a, _p=folders[family], **k: _p
            )
    monkeypatch.chdir(workdir)
    try:
        yield
    finally:
        keras.distribution.set_distribution(None)


def run_example(code, name, namespace):
    """Runs `code` in `namespace`; tracebacks show its lines, as
    `<name>`."""
    filename = f"<{name}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), "")
    exec(compile(code, filename, "exec"), namespace)

"""Every `Example:` block of keras_ptuning's docstrings runs, on tiny models.

As keras-hub's fenced docstring tests do, each ```python block under an
`Example:` (or `Examples:`) heading runs with `exec` in a namespace holding
`keras`, `keras_hub`, `keras_ptuning`, `np` and `numpy` (anything else the
block imports itself), in a temporary working directory. The docstrings
name real presets (`"bert_base_en"`, `minilm_preset_dir()`, ...), which
cannot be downloaded or converted here: for the test only, each resolves to
a tiny random preset saved in a temporary folder, and no other keras-hub
preset name resolves at all (nothing is downloaded). Shapes written in
comments are those of the real presets; the blocks' own `assert`s are
checked. Docstrings written as doctests (`>>>`) run as `doctest` runs them.
"""

import contextlib
import doctest
import importlib
import inspect
import linecache
import pkgutil
import re

import keras
import keras_hub
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import presets
from tests.backbones import _ENCODER
from tests.backbones import _ROPE
from tests.support import bert_tokenizer
from tests.support import byte_level_llama3_tokenizer
from tests.support import run_on_one_backend
from tests.support import sentencepiece_proto

# Blocks that cannot run in the test, by id, with the reason. Keep empty
# where possible: an excluded example is an unchecked claim.
EXCLUDED = {}

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
# (`CausalLM.from_preset`, its tokenizer and backbone), so SmolLM2 (Llama 3)
# stands in as a tiny Gemma 3 too: the trace of keras-hub's byte-level BPE
# takes ~3 s on 2 cores for every template and dataset, SentencePiece's
# 0.1 s (measured: 8 s against 2 s for `PTuningNextTokenLM`'s example).
LOCAL_SUBSTITUTES = {
    "minilm_preset_dir": "bert",
    "smollm2_preset_dir": "gemma3",
    "gemma3_preset_dir": "gemma3",
}
# Words the decoder examples score or predict as one token each.
DECODER_WORDS = ["yes", "no", "France", "Italy", "is", "the", "capital", "of"]

_EXAMPLE = re.compile(
    r"^(?P<indent>[ ]*)Examples?:[ ]*\n(?:[ ]*\n)*"
    r"(?P=indent)```python[ ]*\n(?P<code>.*?)\n(?P=indent)```[ ]*$",
    re.MULTILINE | re.DOTALL,
)


def _modules():
    yield keras_ptuning
    for info in pkgutil.iter_modules(keras_ptuning.__path__):
        yield importlib.import_module(f"keras_ptuning.{info.name}")


def _documented(module):
    """`(name, docstring)` of the public classes and functions `module`
    defines, and of their public methods."""
    short = module.__name__.removeprefix("keras_ptuning").lstrip(".")
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != (
            module.__name__
        ):
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        # Names exported by `keras_ptuning` go by their exported name.
        prefix = "" if getattr(keras_ptuning, name, None) is obj else short
        qualified = f"{prefix}.{name}".lstrip(".")
        yield qualified, obj.__doc__
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                member = getattr(member, "__func__", member)  # class/static
                member = getattr(member, "fget", member)  # properties
                if inspect.isfunction(member):
                    yield f"{qualified}.{attr}", member.__doc__


def _examples():
    """`{id: code}` of every ```python block under an `Example:` heading,
    and `{id: doctest.DocTest}` of the docstrings written as doctests."""
    blocks, doctests = {}, {}
    parser = doctest.DocTestParser()
    for module in _modules():
        for name, doc in _documented(module):
            if not doc:
                continue
            codes = [m.group("code") for m in _EXAMPLE.finditer(doc)]
            for i, code in enumerate(codes):
                block_id = name if len(codes) == 1 else f"{name}[{i}]"
                blocks[block_id] = inspect.cleandoc("\n" + code)
            if ">>>" in doc:
                # As `doctest` runs them: in the module's namespace.
                doctests[name] = parser.get_doctest(
                    doc, dict(vars(module)), name, module.__file__, 0
                )
    return blocks, doctests


EXAMPLES, DOCTESTS = _examples()


def test_every_example_heading_in_the_sources_is_collected():
    """No `Example:` block hides where the collection does not look
    (private objects, module docstrings, nested functions)."""
    headings = 0
    for module in _modules():
        if module.__file__.endswith("__init__.py"):
            continue
        with open(module.__file__) as f:
            source = f.read()
        headings += len(re.findall(r"^\s*Examples?:\s*$", source, re.M))
    assert len(EXAMPLES) + len(DOCTESTS) == headings >= 22


def test_exclusions_name_existing_blocks():
    assert set(EXCLUDED) <= set(EXAMPLES)
    assert all(isinstance(r, str) and r for r in EXCLUDED.values())


def test_every_exported_class_has_an_example():
    """Layers, models and the rest: a new class cannot skip its example."""
    classes = [
        name
        for name in keras_ptuning.__all__
        if inspect.isclass(getattr(keras_ptuning, name))
    ]
    assert {"PromptEncoder", "PTuningBackbone", "TaskHeads"} <= set(classes)
    missing = [name for name in classes if name not in EXAMPLES]
    assert not missing, f"No `Example:` block in the docstring of {missing}"


def test_substituted_presets_are_real_keras_hub_presets():
    """The docstrings name presets users can load."""
    from keras_hub.src.utils import preset_utils

    assert set(BUILTIN_SUBSTITUTES) <= set(preset_utils.BUILTIN_PRESETS)
    for name in LOCAL_SUBSTITUTES:
        assert callable(getattr(presets, name))


def _save(task, path):
    task.save_to_preset(path)
    return path


@pytest.fixture(scope="module")
def tiny_presets(tmp_path_factory):
    """`{family: folder}`: tiny random presets (task, tokenizer and
    preprocessor; the backbone alone for Gemma)."""
    root = tmp_path_factory.mktemp("tiny_presets")
    folders = {}
    # Enough positions for the examples' sequences and 20 virtual tokens.
    bert = keras_hub.models.BertBackbone(
        **{**_ENCODER, "max_sequence_length": 128}
    )
    folders["bert"] = _save(
        keras_hub.models.BertMaskedLM(
            bert,
            keras_hub.models.BertMaskedLMPreprocessor(
                bert_tokenizer(), sequence_length=32
            ),
        ),
        str(root / "bert"),
    )
    # GPT-2's byte-level BPE: every byte, so any text.
    byte_level = byte_level_llama3_tokenizer([" the"])
    gpt2_tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=byte_level.vocabulary, merges=byte_level.merges
    )
    gpt2 = keras_hub.models.GPT2Backbone(
        **{
            **_ENCODER,
            "vocabulary_size": gpt2_tokenizer.vocabulary_size(),
            "max_sequence_length": 256,
        }
    )
    folders["gpt2"] = _save(
        keras_hub.models.GPT2CausalLM(
            gpt2,
            keras_hub.models.GPT2CausalLMPreprocessor(
                gpt2_tokenizer, sequence_length=32
            ),
        ),
        str(root / "gpt2"),
    )
    # Gemma 3's SentencePiece (no dummy prefix, byte fallback, so any text)
    # with the examples' label and target words as single tokens.
    gemma3_tokenizer = keras_hub.models.Gemma3Tokenizer(
        proto=sentencepiece_proto(
            [" ".join(DECODER_WORDS)],
            4 + 256 + len(DECODER_WORDS),
            bos_piece="<bos>",
            eos_piece="<eos>",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            byte_fallback=True,
        ),
        has_vision_tokens=False,
    )
    gemma3 = keras_hub.models.Gemma3Backbone(
        **{**_ROPE, "vocabulary_size": gemma3_tokenizer.vocabulary_size()},
        head_dim=8,
        image_size=16,
        sliding_window_size=8,
    )
    folders["gemma3"] = _save(
        keras_hub.models.Gemma3CausalLM(
            backbone=gemma3,
            preprocessor=keras_hub.models.Gemma3CausalLMPreprocessor(
                tokenizer=gemma3_tokenizer, sequence_length=32
            ),
        ),
        str(root / "gemma3"),
    )
    # The distribution example feeds token ids below 1000.
    gemma = keras_hub.models.GemmaBackbone(
        **{**_ROPE, "vocabulary_size": 1000}, head_dim=8
    )
    folders["gemma"] = _save(gemma, str(root / "gemma"))
    return folders


@contextlib.contextmanager
def _tiny_presets_in_place(monkeypatch, folders, workdir):
    """The examples' presets resolve to `folders`, files land in `workdir`,
    and a distribution the example sets is removed afterwards."""
    from keras_hub.src.utils import preset_utils

    builtin = {
        name: {"kaggle_handle": folders[family], "metadata": {}}
        for name, family in BUILTIN_SUBSTITUTES.items()
    }
    # Only the substitutes: any other preset name fails, never downloads.
    monkeypatch.setattr(preset_utils, "BUILTIN_PRESETS", builtin)
    for name, family in LOCAL_SUBSTITUTES.items():
        monkeypatch.setattr(
            presets, name, lambda *a, _p=folders[family], **k: _p
        )
    monkeypatch.chdir(workdir)
    try:
        yield
    finally:
        keras.distribution.set_distribution(None)


@run_on_one_backend(
    "tensorflow",
    "the examples show backend-independent API; each one's calls are "
    "tested on every backend in its own test file",
)
@pytest.mark.parametrize("block_id", sorted(set(EXAMPLES) - set(EXCLUDED)))
def test_docstring_example_runs(block_id, tiny_presets, monkeypatch, tmp_path):
    code = EXAMPLES[block_id]
    namespace = {
        "keras": keras,
        "keras_hub": keras_hub,
        "keras_ptuning": keras_ptuning,
        "np": np,
        "numpy": np,
    }
    filename = f"<{block_id} example>"
    # Tracebacks then show the example's lines.
    linecache.cache[filename] = (len(code), None, code.splitlines(True), "")
    with _tiny_presets_in_place(monkeypatch, tiny_presets, tmp_path):
        exec(compile(code, filename, "exec"), namespace)


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_doctest(name):
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    report = []
    result = runner.run(DOCTESTS[name], out=report.append)
    assert result.attempted and not result.failed, "".join(report)

"""Every `Example:` block of keras_ptuning's docstrings runs, on tiny models.

As keras-hub's fenced docstring tests do, each ```python block under an
`Example:` (or `Examples:`) heading runs with `exec` in a namespace holding
`keras`, `keras_hub`, `keras_ptuning`, `np` and `numpy` (anything else the
block imports itself), in a temporary working directory. The docstrings
name real presets (`"bert_base_en"`, `minilm_preset_dir()`, ...), which
cannot be downloaded or converted here: for the test only, each resolves to
a tiny random preset saved in a temporary folder, and no other keras-hub
preset name resolves at all (nothing is downloaded; see
`tests/preset_substitutes.py`, shared with the README's test). Shapes written in
comments are those of the real presets; the blocks' own `assert`s are
checked. Docstrings written as doctests (`>>>`) run as `doctest` runs them.
"""

import doctest
import importlib
import inspect
import pkgutil
import re

import keras
import keras_hub
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import presets
from tests.preset_substitutes import BUILTIN_SUBSTITUTES
from tests.preset_substitutes import LOCAL_SUBSTITUTES
from tests.preset_substitutes import build_tiny_presets
from tests.preset_substitutes import run_example
from tests.preset_substitutes import tiny_presets_in_place
from tests.support import run_on_one_backend

# Blocks that cannot run in the test, by id, with the reason. Keep empty
# where possible: an excluded example is an unchecked claim.
EXCLUDED = {}

_EXAMPLE = re.compile(
    r"^(?P<indent>[ ]*)Examples?:[ ]*\n(?:[ ]*\n)*"
    r"(?P=indent)```python[ ]*\n(?P<code>.*?)\n(?P=indent)```[ ]*$",
    re.MULTILINE | re.DOTALL,
)


def _modules():
    yield keras_ptuning
    for info in pkgutil.walk_packages(keras_ptuning.__path__, "keras_ptuning."):
        yield importlib.import_module(info.name)


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
                if not inspect.isfunction(member):
                    continue
                # Defined here, not a base's method set on the class
                # (`keras_internals.subclassed_model`).
                if member.__qualname__.startswith(f"{obj.__name__}."):
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


@pytest.fixture(scope="module")
def tiny_presets(tmp_path_factory):
    """`{family: folder}`: the tiny presets standing in for the real ones."""
    return build_tiny_presets(tmp_path_factory.mktemp("tiny_presets"))


@run_on_one_backend(
    "tensorflow",
    "the examples show backend-independent API; each one's calls are "
    "tested on every backend in its own test file",
)
@pytest.mark.parametrize("block_id", sorted(set(EXAMPLES) - set(EXCLUDED)))
def test_docstring_example_runs(block_id, tiny_presets, monkeypatch, tmp_path):
    namespace = {
        "keras": keras,
        "keras_hub": keras_hub,
        "keras_ptuning": keras_ptuning,
        "np": np,
        "numpy": np,
    }
    with tiny_presets_in_place(monkeypatch, tiny_presets, tmp_path):
        run_example(EXAMPLES[block_id], f"{block_id} example", namespace)


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_doctest(name):
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    report = []
    result = runner.run(DOCTESTS[name], out=report.append)
    assert result.attempted and not result.failed, "".join(report)

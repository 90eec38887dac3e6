"""Loading GLUE SST-2 (the default P-tuning benchmark data), LAMA and
SuperGLUE (FewGLUE)."""

import csv
import json
import os

import keras

SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
SST2_SPLITS = ("train", "dev")
LAMA_SPLITS = ("train", "dev")
DATA_DIR_ENV = "KERAS_PTUNING_DATA"
# The checkout's sibling `shared/data` (this package's source tree, not the
# working directory: run from elsewhere, another folder's data would be
# read, or SST-2 downloaded, without a word).
SHARED_DATA_DIR = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


def _default_candidates(name, *aliases):
    """`$KERAS_PTUNING_DATA` (itself where `aliases` says, then its `name`
    and `aliases` subfolders) first, then `SHARED_DATA_DIR/<name>`."""
    candidates = []
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir:
        candidates += [env_dir] if aliases else []
        candidates += [os.path.join(env_dir, n) for n in (name, *aliases)]
    return candidates + [os.path.join(SHARED_DATA_DIR, name)]


def find_sst2_dir(data_dir=None):
    """Returns a directory holding SST-2's `train.tsv` and `dev.tsv`.

    Looks, in order, at `data_dir`, at `$KERAS_PTUNING_DATA` (the directory
    itself, or its `sst2` or `SST-2` subdirectory), at `shared/data/sst2`
    beside this checkout (`SHARED_DATA_DIR`; never relative to the working
    directory), and otherwise downloads GLUE SST-2 with
    `keras.utils.get_file` (needs a network).
    """
    if data_dir is not None:
        if not os.path.isfile(os.path.join(data_dir, "dev.tsv")):
            raise ValueError(
                f"`data_dir` must hold SST-2's train.tsv and dev.tsv. "
                f"Received: data_dir={data_dir!r}"
            )
        return data_dir
    for candidate in _default_candidates("sst2", "SST-2"):
        if os.path.isfile(os.path.join(candidate, "dev.tsv")):
            return candidate
    archive = keras.utils.get_file(
        "SST-2.zip", SST2_URL, extract=True, cache_subdir="datasets"
    )
    for root, _, files in os.walk(archive):
        if "dev.tsv" in files:
            return root
    raise FileNotFoundError(f"No dev.tsv in the SST-2 download at {archive}")


def load_sst2(split, data_dir=None, max_rows=None):
    """Reads one SST-2 split.

    Args:
        split: `"train"` or `"dev"`.
        data_dir: optional directory holding the TSV files; see
            `find_sst2_dir` for where it looks otherwise.
        max_rows: optional int, read only the first rows.

    Returns:
        `(sentences, labels)`: a list of str and a list of int (0 or 1).
    """
    if split not in SST2_SPLITS:
        raise ValueError(
            f"`split` must be one of {SST2_SPLITS}. Received: split={split!r}"
        )
    path = os.path.join(find_sst2_dir(data_dir), f"{split}.tsv")
    sentences, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            if max_rows is not None and len(sentences) >= max_rows:
                break
            sentences.append(row["sentence"].strip())
            labels.append(int(row["label"]))
    return sentences, labels


def find_lama_dir(data_dir=None):
    """Returns a directory holding LAMA T-REx's `train.jsonl` and `dev.jsonl`.

    Looks at `data_dir`, at `$KERAS_PTUNING_DATA/lama`, and at `lama` in
    `SHARED_DATA_DIR` (beside this checkout, not the working directory).
    The split (50% train, 15%
    dev of each relation's LAMA T-REx facts; see that directory's README)
    has no public download.
    """
    return _find_data_dir("lama", "dev.jsonl", data_dir, "LAMA")


def _find_data_dir(name, marker, data_dir, what):
    """`data_dir`, else `$KERAS_PTUNING_DATA/<name>` or
    `SHARED_DATA_DIR/<name>`: the first that holds `marker`."""
    candidates = _default_candidates(name)
    if data_dir is not None:
        candidates = [data_dir]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, marker)):
            return candidate
    raise FileNotFoundError(
        f"No {what} data ({marker}) in {candidates}: pass data_dir or set "
        f"${DATA_DIR_ENV} to a directory with a `{name}` subdirectory."
    )


def load_lama(split, data_dir=None):
    """Reads one LAMA T-REx split: a list of dicts with `uid`, `rel_id`,
    `subj`, `input` (the manual template, `[MASK]` for the object) and
    `output` (the object)."""
    if split not in LAMA_SPLITS:
        raise ValueError(
            f"`split` must be one of {LAMA_SPLITS}. Received: split={split!r}"
        )
    path = os.path.join(find_lama_dir(data_dir), f"{split}.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


SUPERGLUE_TASKS = ("BoolQ", "CB", "COPA", "RTE", "WiC", "WSC")
SUPERGLUE_SPLITS = ("train", "dev32", "val", "train_full")


def find_superglue_dir(data_dir=None):
    """Returns a directory holding SuperGLUE task folders (`<Task>/*.jsonl`).

    Looks at `data_dir`, at `$KERAS_PTUNING_DATA/superglue`, and at
    `superglue` in `SHARED_DATA_DIR` (beside this checkout, not the working
    directory). FewGLUE's splits
    (see that directory's README) have no single public download.
    """
    return _find_data_dir(
        "superglue", os.path.join("RTE", "val.jsonl"), data_dir, "SuperGLUE"
    )


def load_superglue(task, split, data_dir=None):
    """Reads one split of a SuperGLUE task: a list of dicts in SuperGLUE's
    own JSON-lines fields (`label` included).

    Args:
        task: one of `SUPERGLUE_TASKS`.
        split: `"train"` (FewGLUE's 32), `"dev32"`, `"val"` (SuperGLUE
            dev) or `"train_full"` (CB, COPA, RTE).
        data_dir: optional directory holding the task folders.
    """
    if task not in SUPERGLUE_TASKS:
        raise ValueError(
            f"`task` must be one of {SUPERGLUE_TASKS}. Received: task={task!r}"
        )
    if split not in SUPERGLUE_SPLITS:
        raise ValueError(
            f"`split` must be one of {SUPERGLUE_SPLITS}. Received: "
            f"split={split!r}"
        )
    path = os.path.join(find_superglue_dir(data_dir), task, f"{split}.jsonl")
    if not os.path.isfile(path):
        raise ValueError(
            f"{task} has no {split!r} split here (train_full exists for CB, "
            f"COPA and RTE). Received: task={task!r}, split={split!r}"
        )
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

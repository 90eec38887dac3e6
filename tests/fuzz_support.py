"""Support for `fuzz_test.py`: settings, the refusal property, counters,
odd values and file mutations.

The property: an input either works, or raises a `ValueError` or
`TypeError` whose message names the argument (or quotes the offending
part of it); never another exception type, a hang, or a half-written file.
"""

import atexit
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile

import h5py
import numpy as np
from hypothesis import HealthCheck
from hypothesis import configuration
from hypothesis import settings
from hypothesis import strategies as st

# No example database (`database=None` below), and Hypothesis' other
# caches (constants, unicode tables) go to a temporary directory, not to
# `.hypothesis/` in the checkout.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    _STORAGE = tempfile.mkdtemp(prefix="keras-ptuning-hypothesis-")
    configuration.set_hypothesis_home_dir(_STORAGE)
    atexit.register(shutil.rmtree, _STORAGE, ignore_errors=True)

# Inputs per property test; the sum is the file's budget (module docstring
# of `fuzz_test.py`).
SMALL, MEDIUM, LARGE = 40, 60, 150
# A call that takes longer is a hang (the tiny models answer in well under
# a second, traces included).
HANG_SECONDS = 20


def fuzz_settings(max_examples):
    """Fixed seeds, no example database, no deadline, `max_examples`."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# === Counting the inputs ===

# `TRIED[test]`: how many inputs worked or were refused cleanly.
TRIED = collections.defaultdict(collections.Counter)
# `REFUSALS[test]`: the refusals' messages (first words), most common
# first in `report`, to see what the inputs mostly run into.
REFUSALS = collections.defaultdict(collections.Counter)


def count(test, key):
    TRIED[test][key] += 1


def report(test, minimum):
    """Prints what `test` tried and checks it tried at least `minimum`."""
    counts = TRIED[test]
    total = sum(counts.values())
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"{test}: {total} inputs ({shown})")
    for message, count in REFUSALS[test].most_common(4):
        print(f"    {count} x {message}")
    assert total >= minimum, (test, dict(counts))
    return total


# === The property ===


class Violation(AssertionError):
    """An input broke the property: wrong exception type, a message that
    names no argument, a hang or a half-written file."""


def core_message(error):
    """`error`'s message without Keras' `Exception encountered when
    calling ...` wrapper (whose `Arguments received` part would name
    every argument)."""
    message = str(error)
    if "Exception encountered when calling" in message:
        match = re.search(r"\x1b\[1m(.*?)\x1b\[0m", message, re.S)
        if match:
            return match.group(1)
    return message


@contextlib.contextmanager
def no_hang(seconds=HANG_SECONDS):
    """Raises `Violation` if the block runs longer than `seconds` (Python
    code only: a C++ op that never returns is not interrupted)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def alarm(signum, frame):
        raise Violation(f"hang: no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def works_or_refuses(test, call, names):
    """Runs `call()`; returns `(True, result)` if it works, `(False,
    error)` for a `ValueError`/`TypeError` naming one of `names`.

    Raises `Violation` for any other outcome (with the offending exception
    as its cause), except for `Violation`s raised inside `call`.
    """
    try:
        with no_hang():
            result = call()
    except Violation:
        raise
    except (ValueError, TypeError) as error:
        message = core_message(error)
        if not any(str(name) in message for name in names):
            raise Violation(
                f"{type(error).__name__} names none of {sorted(names)}: "
                f"{message[:500]!r}"
            ) from error
        count(test, "refused")
        REFUSALS[test][" ".join(message.split())[:70]] += 1
        return False, error
    except Exception as error:
        raise Violation(
            f"{type(error).__name__} (not ValueError/TypeError): "
            f"{core_message(error)[:500]!r}"
        ) from error
    count(test, "worked")
    return True, result


def refuse_cleanly(call, names):
    """For the regression tests: `call()` must raise a `ValueError` or
    `TypeError` naming one of `names` (returned). Another exception
    propagates as is; an unnamed message or no error raises
    `Violation`."""
    try:
        call()
    except (ValueError, TypeError) as error:
        message = core_message(error)
        if not any(str(name) in message for name in names):
            raise Violation(f"names none of {names}: {message[:300]!r}")
        return error
    raise Violation("accepted")


# === Values ===

# Values of the wrong type for almost any argument.
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.binary(max_size=4),
    st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.builds(object),
    st.builds(np.int64, st.integers(-5, 70)),
    st.builds(np.float32, st.floats(-2, 2, width=32)),
)


def _small(value):
    return not (
        isinstance(value, (int, np.integer))
        and not isinstance(value, bool)
        and abs(int(value)) > 64
    )


# For arguments that size an allocation (a choice length, an encoder built
# from a config): huge ints would allocate without bound, which is the
# caller's request rather than a refusal to fuzz.
ODD_SMALL_VALUES = ODD_VALUES.filter(_small)
# Array values: numpy's "truth value of an array is ambiguous".
ARRAY_VALUES = st.sampled_from(
    [np.array([1, 2]), np.array(["a", "b"]), np.array([], "float32")]
)


def weighted(*choices):
    """One of `(weight, strategy)` pairs, picked in proportion to weight
    (`st.one_of` picks among distinct branches, repeats or not)."""
    slots = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(slots))).flatmap(lambda i: slots[i])


def with_odd(right, odd=ODD_VALUES):
    """`right` 6 times in 8, else a value of another type or an array."""
    return weighted((6, right), (1, odd), (1, ARRAY_VALUES))


def mostly(right, *others):
    """`right` half the time, else one of `others` (equally)."""
    return weighted((len(others), right), *((1, o) for o in others))


# === Files ===


def snapshot(path):
    """What is at `path`: `None`, the bytes of a file, or a directory's
    `{relative path: bytes}`; for "unchanged" checks."""
    if not os.path.lexists(path):
        return None
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    contents = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                contents[os.path.relpath(full, path)] = f.read()
    return contents


def check_unchanged(path, before, what):
    """Raises `Violation` unless `path` holds what `before` recorded."""
    after = snapshot(path)
    if after != before:
        state = "created" if before is None else "changed"
        raise Violation(f"half-written: a refused {what} {state} {path!r}")


def leftovers(directory, names_before):
    """Entries of `directory` that were not in `names_before`."""
    return sorted(set(os.listdir(directory)) - set(names_before))


def path_names():
    """Path components: letters, digits, spaces, dots and non-ASCII, never
    `.`, `..`, a separator or a NUL, and short (the OS's own limits are
    not what is fuzzed)."""
    return st.text(
        alphabet=st.sampled_from("abcXYZ019 _-.éü☃"), min_size=1, max_size=12
    ).filter(lambda name: name.strip(".") != "" and name.strip() == name)


# === Adapter (HDF5) files ===

H5_DTYPES = (
    "int32",
    "int64",
    "bool",
    "float16",
    "float64",
    "complex64",
    "bytes",
    "vlen_str",
    "compound",
)


def retyped(array, dtype):
    """`array`'s values as `dtype` (one of `H5_DTYPES`)."""
    array = np.asarray(array)
    if dtype == "bytes":
        return np.full(array.shape, b"x", "S1")
    if dtype == "vlen_str":
        return np.array(["a", "bc"], dtype=h5py.string_dtype())
    if dtype == "compound":
        return np.zeros(array.shape, dtype=[("a", "f4"), ("b", "i4")])
    return array.astype(dtype)


def reshaped(array, how):
    """`array` with another shape: `("drop",)`, `("add",)`, `("scalar",)`,
    `("empty",)` (no dims of size 0, an HDF5 null dataspace for h5) or
    `("resize", axis, size)`."""
    array = np.asarray(array)
    kind = how[0]
    if kind == "drop":
        return array.reshape(-1) if array.ndim > 1 else array[:0]
    if kind == "add":
        return array[None]
    if kind == "scalar":
        return np.asarray(array.reshape(-1)[:1].reshape(()))
    if kind == "empty":
        return np.zeros((0,) + array.shape[1:], array.dtype)
    axis, size = how[1] % max(array.ndim, 1), how[2]
    if array.ndim == 0:
        return np.full((size,), array)
    shape = list(array.shape)
    shape[axis] = size
    return np.resize(array, shape)


def read_h5_config(path):
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])


def h5_dataset_names(path):
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: (
                names.append(name) if isinstance(item, h5py.Dataset) else None
            )
        )
    return sorted(names)


def adapter_mutations(config_keys, dataset_names):
    """A strategy of one mutation of an adapter file: a tuple whose first
    item is its kind."""
    keys = st.sampled_from(sorted(config_keys))
    datasets = st.sampled_from(sorted(dataset_names))
    config_values = st.one_of(
        ODD_VALUES.filter(json_able),
        st.lists(st.text(max_size=3), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
    )
    shape_changes = st.one_of(
        st.sampled_from([("drop",), ("add",), ("scalar",), ("empty",)]),
        st.tuples(st.just("resize"), st.integers(0, 2), st.integers(0, 5)),
    )
    return st.one_of(
        st.tuples(st.just("config_delete"), keys),
        st.tuples(st.just("config_set"), keys, config_values),
        st.tuples(
            st.just("config_add"), st.text(min_size=1, max_size=5), st.none()
        ),
        st.tuples(
            st.just("config_raw"),
            st.sampled_from(["{", "", "[1]", "3", '"x"', "null", "{}", 5]),
        ),
        st.tuples(st.just("config_remove")),
        st.tuples(st.just("dataset_delete"), datasets),
        st.tuples(
            st.just("dataset_dtype"), datasets, st.sampled_from(H5_DTYPES)
        ),
        st.tuples(st.just("dataset_shape"), datasets, shape_changes),
        st.tuples(st.just("dataset_group"), datasets),
        st.tuples(
            st.just("dataset_add"),
            st.sampled_from(["head/extra", "encoder/99", "other"]),
        ),
        st.tuples(st.just("file_truncate"), st.integers(0, 4000)),
        st.tuples(st.just("file_garbage"), st.binary(max_size=16)),
    )


def json_able(value):
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def mutate_adapter(source, target, mutations):
    """Copies the adapter file `source` to `target` and applies
    `mutations` (from `adapter_mutations`)."""
    shutil.copyfile(source, target)
    for mutation in mutations:
        kind = mutation[0]
        if kind.startswith("file_"):
            with open(target, "rb") as f:
                data = f.read()
            if kind == "file_truncate":
                data = data[: mutation[1]]
            else:
                data = mutation[1]
            with open(target, "wb") as f:
                f.write(data)
            continue
        try:
            f = h5py.File(target, "r+")
        except OSError:  # An earlier mutation broke the file.
            continue
        with f:
            _mutate_h5(f, mutation)


def _mutate_h5(f, mutation):
    kind = mutation[0]
    if kind.startswith("config_"):
        if kind == "config_remove":
            if "config" in f.attrs:
                del f.attrs["config"]
            return
        if kind == "config_raw":
            f.attrs["config"] = mutation[1]
            return
        try:
            config = json.loads(f.attrs["config"])
        except (KeyError, TypeError, ValueError):
            return
        if not isinstance(config, dict):
            return
        if kind == "config_delete":
            config.pop(mutation[1], None)
        else:
            config[mutation[1]] = mutation[2]
        f.attrs["config"] = json.dumps(config)
        return
    name = mutation[1]
    if kind == "dataset_add":
        if name not in f:
            f.create_dataset(name, data=np.ones(3, "float32"))
        return
    if not isinstance(f.get(name), h5py.Dataset):
        return
    value = f[name][()]
    del f[name]
    if kind == "dataset_delete":
        return
    if kind == "dataset_group":
        f.create_group(name).create_dataset("x", data=value)
    elif kind == "dataset_dtype":
        f.create_dataset(name, data=retyped(value, mutation[2]))
    elif mutation[2] == ("empty",):
        f.create_dataset(name, data=h5py.Empty("f4"))
    else:
        f.create_dataset(name, data=reshaped(value, mutation[2]))


# === PEFT adapter directories ===

SAFETENSORS_DTYPES = (
    "int8",
    "uint8",
    "int32",
    "int64",
    "bool",
    "float16",
    "float64",
)


def peft_mutations(config_keys, tensor_names):
    """A strategy of one mutation of a PEFT adapter directory."""
    keys = st.sampled_from(sorted(config_keys))
    tensors = st.sampled_from(sorted(tensor_names))
    config_values = st.one_of(
        ODD_SMALL_VALUES.filter(json_able),
        st.integers(0, 40),
        st.sampled_from(["P_TUNING", "SEQ_CLS", "CAUSAL_LM", "MLP", "LSTM"]),
    )
    shape_changes = st.one_of(
        st.sampled_from([("drop",), ("add",), ("scalar",), ("empty",)]),
        st.tuples(st.just("resize"), st.integers(0, 2), st.integers(0, 5)),
    )
    return st.one_of(
        st.tuples(st.just("config_delete"), keys),
        st.tuples(st.just("config_set"), keys, config_values),
        st.tuples(
            st.just("config_add"), st.text(min_size=1, max_size=5), st.none()
        ),
        st.tuples(
            st.just("config_raw"),
            st.sampled_from(["{", "", "[1]", "3", '"x"', "null", "{}"]),
        ),
        st.tuples(st.just("config_file_delete")),
        st.tuples(st.just("tensor_delete"), tensors),
        st.tuples(
            st.just("tensor_rename"),
            tensors,
            st.sampled_from(
                ["score.weight", "score.bias", "x.classifier.weight", "w"]
            ),
        ),
        st.tuples(
            st.just("tensor_dtype"),
            tensors,
            st.sampled_from(SAFETENSORS_DTYPES),
        ),
        st.tuples(st.just("tensor_shape"), tensors, shape_changes),
        st.tuples(st.just("tensor_add"), st.sampled_from(["extra", "w.bias"])),
        st.tuples(st.just("file_truncate"), st.integers(0, 600)),
        st.tuples(st.just("file_garbage"), st.binary(max_size=16)),
        st.tuples(st.just("file_delete")),
    )


def mutate_peft(source, target, mutations):
    """Copies the PEFT adapter directory `source` to `target` and applies
    `mutations` (from `peft_mutations`)."""
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    config_path = os.path.join(target, "adapter_config.json")
    tensors_path = os.path.join(target, "adapter_model.safetensors")
    for mutation in mutations:
        kind = mutation[0]
        if kind.startswith("config"):
            if not os.path.exists(config_path):
                continue
            if kind == "config_file_delete":
                os.remove(config_path)
                continue
            if kind == "config_raw":
                text = mutation[1]
            else:
                try:
                    with open(config_path) as f:
                        config = json.load(f)
                except ValueError:
                    continue
                if not isinstance(config, dict):
                    continue
                if kind == "config_delete":
                    config.pop(mutation[1], None)
                else:
                    config[mutation[1]] = mutation[2]
                text = json.dumps(config)
            with open(config_path, "w") as f:
                f.write(text)
            continue
        if not os.path.exists(tensors_path):
            continue
        if kind.startswith("file_"):
            if kind == "file_delete":
                os.remove(tensors_path)
                continue
            with open(tensors_path, "rb") as f:
                data = f.read()
            data = (
                data[: mutation[1]] if kind == "file_truncate" else mutation[1]
            )
            with open(tensors_path, "wb") as f:
                f.write(data)
            continue
        try:
            tensors = load_file(tensors_path)
        except Exception:  # An earlier mutation broke the file.
            continue
        if kind == "tensor_add":
            tensors[mutation[1]] = np.ones(3, "float32")
        elif mutation[1] in tensors:
            value = tensors.pop(mutation[1])
            if kind == "tensor_rename":
                tensors[mutation[2]] = value
            elif kind == "tensor_dtype":
                tensors[mutation[1]] = value.astype(mutation[2])
            elif kind == "tensor_shape":
                tensors[mutation[1]] = np.ascontiguousarray(
                    reshaped(value, mutation[2])
                )
        save_file(tensors, tensors_path)

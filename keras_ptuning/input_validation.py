"""Checks on the input dicts that P-tuning models receive."""

import os

import keras
import numpy as np

from keras_ptuning.compat.keras_internals import in_symbolic_scope

# What the Keras models under our models take as keyword arguments. Keras'
# functional `Model` drops any other keyword silently (a typo such as
# `pooling_mode=` would do nothing), so the P-tuning models check them.
MODEL_KWARGS = ("name", "trainable", "dtype")


def check_model_kwargs(kwargs, model_name):
    """Raises a `TypeError` for keyword arguments no one would read."""
    unknown = sorted(set(kwargs) - set(MODEL_KWARGS))
    if unknown:
        raise TypeError(
            f"{model_name} got unexpected keyword arguments {unknown}: it "
            "takes its own arguments and the Keras model's "
            f"{list(MODEL_KWARGS)}. Received: "
            + ", ".join(f"{k}={kwargs[k]!r}" for k in unknown)
        )


def check_inputs(inputs, expected_names, model_name):
    """Raises a clear error for a wrong input dict, before any compute.

    Args:
        inputs: what the model was called with.
        expected_names: the backbone's input names.
        model_name: the class name used in messages.
    """
    expected = sorted(expected_names)
    if not isinstance(inputs, dict):
        raise TypeError(
            f"{model_name} expects a dict of tensors with keys {expected}. "
            f"Received: inputs of type {type(inputs).__name__}"
        )
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{model_name} expects exactly the keys {expected}. Missing: "
            f"{missing}; unexpected: {extra}"
        )
    token_ids = inputs["token_ids"]
    dtype = keras.backend.standardize_dtype(
        getattr(token_ids, "dtype", None) or type(token_ids).__name__
    )
    # Traced tensors are not checked: Keras builds a model's compiled loss
    # under a `tf.distribute` strategy from replica-averaged (float) inputs,
    # and the functional model casts `token_ids` to int32 anyway. (Only a
    # non-integer dtype is looked at further: no copy of integer ids.)
    if "int" not in dtype and (
        keras.utils.is_keras_tensor(token_ids)
        or concrete_numpy(token_ids) is not None
    ):
        raise TypeError(
            f"{model_name} expects integer `token_ids`. Received: token_ids "
            f"of dtype {dtype}"
        )


def concrete_numpy(value):
    """`value` as a numpy array, or `None` if it is symbolic (traced).

    Inside `jax.jit`, `tf.function` or a functional-model build the values
    are unknown, and the caller skips value checks. So are the stand-in
    values (ones) PyTorch's `compute_output_spec` runs a model on, under
    Keras' symbolic scope.
    """
    if keras.utils.is_keras_tensor(value) or in_symbolic_scope():
        return None
    if isinstance(value, (np.ndarray, list, tuple)):
        return np.asarray(value)
    try:
        return np.asarray(keras.ops.convert_to_numpy(value))
    except Exception:  # A tracer or graph tensor: no value to check.
        return None


def check_placeholder_counts(token_ids, placeholder_id, num_virtual_tokens):
    """Raises unless every row holds exactly `num_virtual_tokens` slots.

    Checks concrete (eager) values only; returns silently on symbolic ones.
    """
    token_ids = concrete_numpy(token_ids)
    if token_ids is None:
        return
    if token_ids.ndim == 1:
        token_ids = token_ids[None]
    counts = np.sum(token_ids == placeholder_id, axis=-1)
    wrong = np.flatnonzero(counts != num_virtual_tokens)
    if wrong.size:
        shown = ", ".join(f"row {i}: {counts[i]}" for i in wrong[:5])
        more = f" (and {wrong.size - 5} more rows)" if wrong.size > 5 else ""
        raise ValueError(
            f"Every row of `token_ids` must hold exactly num_virtual_tokens="
            f"{num_virtual_tokens} placeholders (placeholder_id="
            f"{placeholder_id}). Found {shown}{more}. A count above "
            f"{num_virtual_tokens} can mean the placeholder id collides with "
            "a real token id in the text."
        )


def check_positive_int(name, value, unit=""):
    """Refuses `value` (argument `name`) unless it is an int >= 1 (a bool
    is not); `unit` (e.g. `"bytes"`) is named in the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        unit = f" ({unit})" if unit else ""
        raise ValueError(
            f"`{name}` must be an int >= 1{unit}. Received: {name}={value!r}"
        )


def directories_to_create(path, name, value):
    """The directories `os.makedirs(path)` would create, deepest first.

    Raises a `ValueError` naming argument `name` (given `value`) when the
    deepest existing path above `path` is not a directory.
    """
    path = os.path.abspath(os.fspath(path))
    missing = []
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ValueError(
            f"`{name}` is under {path!r}, which is not a directory. "
            f"Received: {name}={value!r}"
        )
    return missing


def remove_created_directories(missing):
    """Removes the empty directories of `directories_to_create`, deepest
    first, after a failed write; stops at the first that is not empty."""
    for path in missing:
        try:
            os.rmdir(path)
        except OSError:
            break

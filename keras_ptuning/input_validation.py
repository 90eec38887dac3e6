"""Checks on the input dicts that P-tuning models receive."""

import keras


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
    if "int" not in dtype:
        raise TypeError(
            f"{model_name} expects integer `token_ids`. Received: token_ids "
            f"of dtype {dtype}"
        )

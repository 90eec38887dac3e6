import os

import keras
import numpy as np
import pytest

from tests.backbones import VOCABULARY_SIZE


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(params=["one_segment", "segments"])
def cache_segments(request, monkeypatch):
    """Cached generation in one cache segment, or in several short ones.

    The default segments only start at 32 slots; the tests' sequences are
    shorter, so "segments" shrinks them to 2 slots and up.
    """
    from keras_ptuning import cached_decoding

    if request.param == "one_segment":
        monkeypatch.setattr(cached_decoding, "FIRST_SEGMENT_LENGTH", None)
    else:
        monkeypatch.setattr(cached_decoding, "FIRST_SEGMENT_LENGTH", 2)
        monkeypatch.setattr(cached_decoding, "MIN_SEGMENT_GROWTH", 2)
    return request.param


def pytest_report_header(config):
    return f"keras backend: {keras.config.backend()}"


def make_inputs(input_names, batch_size=3, length=7, seed=0, padded=True):
    """Random token ids with right padding, as keras-hub preprocessors emit."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, VOCABULARY_SIZE, (batch_size, length))
    lengths = np.full((batch_size,), length)
    if padded:
        lengths = rng.integers(max(1, length // 2), length + 1, (batch_size,))
        lengths[0] = length
    padding_mask = np.arange(length)[None, :] < lengths[:, None]
    token_ids = np.where(padding_mask, token_ids, 0).astype("int32")
    inputs = {
        "token_ids": token_ids,
        "padding_mask": padding_mask.astype("int32"),
    }
    if "segment_ids" in input_names:
        inputs["segment_ids"] = np.zeros_like(token_ids)
    return inputs


def with_real_prompt(inputs, prompt_ids):
    """`inputs` with `prompt_ids` as real tokens in front of every row.

    The reference for virtual tokens whose embeddings equal those tokens'.
    """
    batch, n = len(inputs["token_ids"]), len(prompt_ids)
    fill = {"token_ids": np.tile(prompt_ids, (batch, 1)), "padding_mask": 1}
    extended = {}
    for name, value in inputs.items():
        value = np.asarray(value)
        front = np.broadcast_to(fill.get(name, 0), (batch, n))
        extended[name] = np.concatenate([front.astype(value.dtype), value], 1)
    return extended


def backbone_weights(backbone):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in backbone.weights]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

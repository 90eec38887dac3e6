"""Training steps that run a decoder's text before the first virtual token
as constants (`keras_ptuning.frozen_prefix`) against the whole sequence."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import frozen_prefix
from tests.backbones import CAUSAL
from tests.backbones import FAMILIES
from tests.support import to_numpy

NUM_TOKENS = 3
SLOT = -1

# Rows whose first virtual token differs (at 2, 5 and 4), right-padded,
# left-padded and unpadded: the batch splits at 2.
TOKEN_IDS = np.array(
    [
        [7, 8, SLOT, 9, SLOT, 10, SLOT, 11, 12, 13, 0, 0],
        [0, 0, 14, 15, 16, SLOT, SLOT, SLOT, 17, 18, 19, 20],
        [21, 22, 23, 24, SLOT, 25, 26, SLOT, SLOT, 27, 28, 29],
    ],
    "int32",
)
PADDING_MASK = np.array(
    [[1] * 10 + [0, 0], [0, 0] + [1] * 10, [1] * 12], "int32"
)
PREPENDED_IDS = np.where(TOKEN_IDS == SLOT, 30, TOKEN_IDS)

# JAX splits only outside `jit` (what `run_eagerly=True` runs), where it
# runs op by op (70 s for all cases): two families' ways of embedding
# (learned positions; scaled embeddings, RoPE and sliding windows) with
# slots stand for the others there.
ON_JAX = keras.config.backend() == "jax"
FAMILIES_TESTED = ["gemma3", "gpt2"] if ON_JAX else sorted(CAUSAL)
PLACEMENTS = ["slots"] if ON_JAX else ["slots", "multi_task", "prepended"]


def loss_and_gradients(model, inputs, weights):
    """A weighted sum of the outputs at real tokens and its gradients with
    respect to the model's trainable variables, in the backend's autodiff
    (a training-mode call, as `fit` makes)."""
    variables = model.trainable_variables
    mask = ops.cast(inputs["padding_mask"], "float32")[..., None]
    weights = ops.convert_to_tensor(weights)

    def loss_of(outputs):
        return ops.sum(outputs * weights * mask)

    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_of(model(inputs, training=True))
        gradients = tape.gradient(loss, variables)
    elif backend == "jax":
        import jax

        def value(trainable):
            outputs, _ = model.stateless_call(
                trainable,
                [v.value for v in model.non_trainable_variables],
                inputs,
                training=True,
            )
            return loss_of(outputs)

        loss, gradients = jax.value_and_grad(value)(
            [v.value for v in variables]
        )
    else:
        for v in variables:
            v.value.grad = None
        loss = loss_of(model(inputs, training=True))
        loss.backward()
        gradients = [v.value.grad for v in variables]
    return float(to_numpy(loss)), [to_numpy(g) for g in gradients]


def _model(family, placement):
    backbone = FAMILIES[family]()
    config = PromptEncoderConfig(NUM_TOKENS)
    if placement == "multi_task":
        return PTuningBackbone(
            backbone, config, placeholder_id=SLOT, task_names=["a", "b"]
        )
    placeholder_id = None if placement == "prepended" else SLOT
    return PTuningBackbone(backbone, config, placeholder_id=placeholder_id)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_a_split_step_equals_the_whole_sequence(family, placement):
    model = _model(family, placement)
    token_ids = PREPENDED_IDS if placement == "prepended" else TOKEN_IDS
    inputs = {"token_ids": token_ids, "padding_mask": PADDING_MASK}
    if placement == "multi_task":
        inputs["task_id"] = np.array([0, 1, 1], "int32")
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(1, 12, model.hidden_dim)).astype("float32")

    split = frozen_prefix.split_point(ops.convert_to_tensor(token_ids), SLOT)
    splits = placement != "prepended" and keras.config.backend() != (
        "tensorflow"
    )
    assert split == (2 if splits else None)
    split_loss, split_gradients = loss_and_gradients(model, inputs, weights)
    model.frozen_prefix = False
    whole_loss, whole_gradients = loss_and_gradients(model, inputs, weights)

    assert abs(split_loss - whole_loss) <= 1e-5 * max(1.0, abs(whole_loss))
    assert len(split_gradients) == len(whole_gradients) > 0
    for split_gradient, whole_gradient in zip(split_gradients, whole_gradients):
        scale = np.abs(whole_gradient).max()
        np.testing.assert_allclose(
            split_gradient, whole_gradient, atol=1e-4 * scale, rtol=1e-4
        )
    # Outputs at real tokens (a padding position's are noise either way).
    real = PADDING_MASK.astype(bool)
    outputs = to_numpy(model(inputs, training=True))[real]
    model.frozen_prefix = True
    split_outputs = to_numpy(model(inputs, training=True))[real]
    np.testing.assert_allclose(split_outputs, outputs, atol=1e-5, rtol=1e-5)

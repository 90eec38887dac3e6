"""What the distributed checks share: the model, its training, numbers."""

import keras
import numpy as np

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningTextClassifier
from tests.backbones import fresh_backbone
from tests.support import backbone_weights
from tests.support import make_inputs

BATCH_SIZE = 8


def numpy(variables):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def max_difference(a, b):
    return float(max(np.max(np.abs(u - v)) for u, v in zip(a, b)))


def build(family):
    keras.utils.set_random_seed(0)
    return PTuningTextClassifier(
        fresh_backbone(family),
        2,
        PromptEncoderConfig(3, encoder_hidden_size=8),
        dropout=0.0,
    )


def compile_and_fit(model, initial, x, y):
    """Trains from `initial` for 2 epochs; returns the loss history.

    SGD: updates linear in the gradients, so a different reduction order
    (devices, replicas) changes them by float32 rounding only. Adam divides
    by the gradient's magnitude: a component whose gradient is ~1e-8, at
    the scale of `epsilon`, can step by anything up to the learning rate
    either way.
    """
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    history = model.fit(
        x, y, batch_size=BATCH_SIZE, epochs=2, shuffle=False, verbose=0
    )
    return history.history["loss"]


def starting_point(reference):
    """`(x, y, initial, initial_trainable, backbone_before)` for a model
    from `build`: two global batches, and the weights training starts from.
    """
    x = make_inputs(
        reference.backbone.input_names, batch_size=2 * BATCH_SIZE, length=8
    )
    y = np.random.default_rng(0).integers(0, 2, (2 * BATCH_SIZE,))
    return (
        x,
        y,
        reference.get_weights(),
        numpy(reference.trainable_weights),
        backbone_weights(reference.backbone.backbone),
    )

"""`fit` of a P-tuned model under `tf.distribute.MirroredStrategy`.

Run by `tests/distributed_test.py` with `KERAS_BACKEND=tensorflow`. The one
CPU is split into two logical devices (before TensorFlow starts), and the
same model is trained from the same initial weights on the same global
batches on one device and on the two mirrored replicas. Writes the
comparison to the JSON file `sys.argv[1]`.
"""

import json
import sys
import time

import tensorflow as tf

# Must run before anything initialises TensorFlow's devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import numpy as np  # noqa: E402

from tests.distributed.common import BATCH_SIZE  # noqa: E402
from tests.distributed.common import build  # noqa: E402
from tests.distributed.common import compile_and_fit  # noqa: E402
from tests.distributed.common import max_difference  # noqa: E402
from tests.distributed.common import numpy  # noqa: E402
from tests.distributed.common import starting_point  # noqa: E402
from tests.support import backbone_weights  # noqa: E402


def run_family(family, strategy):
    start = time.time()
    reference = build(family)
    x, y, initial, initial_trainable, before = starting_point(reference)
    reference_loss = compile_and_fit(reference, initial, x, y)
    expected = numpy(reference.trainable_weights)
    expected_predictions = reference.predict(
        x, batch_size=BATCH_SIZE, verbose=0
    )

    # Plain `fit`, as on one device. (Keras 3.15 builds the compiled loss
    # under a strategy from replica-averaged, float, inputs: the input
    # checks leave such traced tensors alone.)
    with strategy.scope():
        model = build(family)
        loss = compile_and_fit(model, initial, x, y)
    trained = numpy(model.trainable_weights)
    predictions = model.predict(x, batch_size=BATCH_SIZE, verbose=0)
    mirrored = [
        v.path
        for v in model.weights
        if isinstance(v.value, tf.distribute.DistributedValues)
        and len(v.value.values) == 2
    ]
    return {
        "family": family,
        "seconds": time.time() - start,
        "loss": loss,
        "reference_loss": reference_loss,
        "max_weight_difference": max_difference(trained, expected),
        "max_prediction_difference": float(
            np.max(np.abs(predictions - expected_predictions))
        ),
        "training_moved_weights_by": max_difference(
            expected, initial_trainable
        ),
        "backbone_identical": all(
            np.array_equal(a, b)
            for a, b in zip(before, backbone_weights(model.backbone.backbone))
        ),
        "trainable_paths": [v.path for v in model.trainable_weights],
        "mirrored_paths": mirrored,
        "num_weights": len(model.weights),
    }


if __name__ == "__main__":
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    start = time.time()
    results = {
        "devices": devices,
        "num_replicas_in_sync": strategy.num_replicas_in_sync,
        "cases": [run_family("bert", strategy)],
    }
    results["seconds"] = time.time() - start
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)
    print("ok tensorflow")

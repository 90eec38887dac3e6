"""`fit` of a P-tuned model under `keras.distribution`, against one device.

Run by `tests/distributed_test.py` with `KERAS_BACKEND=jax` and
`XLA_FLAGS=--xla_force_host_platform_device_count=4` (4 CPU devices; the
flag must be set before JAX starts). For each case it trains the same model,
from the same initial weights on the same batches, on one device and under a
distribution, and writes the comparison to the JSON file `sys.argv[1]`:

- `DataParallel` over the 4 devices.
- `ModelParallel` on a 2x2 ("batch", "model") mesh with
  `keras_ptuning.distribution.layout_map`: Gemma through keras-hub's own
  `GemmaBackbone.get_layout_map()`, BERT (no family layout) through the
  largest divisible dimension of each kernel.

For Gemma it also saves the adapter of the distributed model and checks it
on a model built on one device.
"""

import json
import os
import sys
import tempfile
import time

import jax
import keras
import numpy as np

from keras_ptuning.distribution import layout_map
from tests.distributed.common import BATCH_SIZE
from tests.distributed.common import build
from tests.distributed.common import compile_and_fit
from tests.distributed.common import max_difference
from tests.distributed.common import numpy
from tests.distributed.common import starting_point
from tests.support import backbone_weights


def train(model, initial, x, y):
    loss = compile_and_fit(model, initial, x, y)
    return {
        "loss": loss,
        "trainable": numpy(model.trainable_weights),
        "predictions": np.asarray(
            model.predict(x, batch_size=BATCH_SIZE, verbose=0)
        ),
    }


def sharding_report(model):
    """Per variable path: (fully replicated, partition spec)."""
    report = {}
    for variable in model.weights:
        sharding = variable.value.sharding
        spec = getattr(sharding, "spec", None)
        report[variable.path] = {
            "replicated": bool(sharding.is_fully_replicated),
            "spec": str(spec),
            "num_devices": len(sharding.device_set),
        }
    return report


def run_family(family, distributions, check_adapter=False):
    """Trains `family` on one device, then under each distribution.

    With `check_adapter`, also saves each distributed model's adapter and
    loads it into a model built on one device.
    """
    reference = build(family)
    x, y, initial, initial_trainable, before = starting_point(reference)
    expected = train(reference, initial, x, y)
    results = []
    for name, make_distribution in distributions:
        start = time.time()
        keras.distribution.set_distribution(make_distribution(reference))
        try:
            model = build(family)
            shardings = sharding_report(model)
            result = train(model, initial, x, y)
            after = backbone_weights(model.backbone.backbone)
            if check_adapter:
                adapter = os.path.join(tempfile.mkdtemp(), "a.adapter.h5")
                model.save_adapter(adapter)
        finally:
            keras.distribution.set_distribution(None)
        adapter_difference = None
        if check_adapter:
            # Saved from the sharded model, loaded on one device.
            single = build(family)
            single.load_adapter(adapter)
            adapter_difference = float(
                np.max(
                    np.abs(
                        single.predict(x, batch_size=BATCH_SIZE, verbose=0)
                        - result["predictions"]
                    )
                )
            )
        results.append(
            {
                "case": name,
                "family": family,
                "seconds": time.time() - start,
                "loss": result["loss"],
                "reference_loss": expected["loss"],
                "max_weight_difference": max_difference(
                    result["trainable"], expected["trainable"]
                ),
                "max_prediction_difference": float(
                    np.max(
                        np.abs(result["predictions"] - expected["predictions"])
                    )
                ),
                "adapter_prediction_difference": adapter_difference,
                "training_moved_weights_by": max_difference(
                    expected["trainable"], initial_trainable
                ),
                "backbone_identical": all(
                    np.array_equal(a, b) for a, b in zip(before, after)
                ),
                "trainable_paths": [v.path for v in model.trainable_weights],
                "backbone_paths": [
                    v.path for v in model.backbone.backbone.weights
                ],
                "shardings": shardings,
            }
        )
    return results


def data_parallel(reference):
    return keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()
    )


def model_parallel(reference):
    mesh = keras.distribution.DeviceMesh(
        (2, 2), ("batch", "model"), keras.distribution.list_devices()
    )
    return keras.distribution.ModelParallel(
        layout_map=layout_map(reference, mesh), batch_dim_name="batch"
    )


if __name__ == "__main__":
    assert len(jax.devices()) == 4, jax.devices()
    start = time.time()
    results = {
        "devices": [str(d) for d in jax.devices()],
        "cases": run_family(
            "gemma",
            [
                ("data_parallel", data_parallel),
                ("model_parallel", model_parallel),
            ],
            check_adapter=True,
        )
        + run_family("bert", [("model_parallel", model_parallel)]),
    }
    results["seconds"] = time.time() - start
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)
    print("ok jax")

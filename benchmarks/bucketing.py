"""Epoch time of P-tuning on SST-2 with and without length bucketing.

One p-tuned all-MiniLM-L6-v2 classifier trains one epoch on the same
SST-2 rows, batches either cut to `LengthBucketedDataset`'s bucket lengths
or padded to the full sequence length; the two alternate over rounds in one
process (every shape compiled in a warm-up epoch first), and the best round
of each is reported with the ratio.

    KERAS_BACKEND=jax python benchmarks/bucketing.py
    KERAS_BACKEND=torch python benchmarks/bucketing.py --rows 1000 --json b.json
"""

import argparse
import json
import platform
import time

import keras
import keras_hub
import numpy as np
import tensorflow as tf

import keras_ptuning
from keras_ptuning.datasets import load_sst2
from keras_ptuning.presets import minilm_preset_dir


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-virtual-tokens", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="write results here")
    return parser.parse_args()


def main():
    args = parse_args()
    keras.utils.set_random_seed(0)
    preset = minilm_preset_dir()
    sentences, labels = load_sst2("train", args.data_dir, args.rows)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        preset, sequence_length=args.sequence_length
    )
    x = keras.tree.map_structure(
        keras.ops.convert_to_numpy, preprocessor(tf.constant(sentences))
    )
    y = np.asarray(labels)
    datasets = {
        "bucketed": keras_ptuning.LengthBucketedDataset(
            x, y, batch_size=args.batch_size, seed=0
        ),
        "fixed": keras_ptuning.LengthBucketedDataset(
            x,
            y,
            batch_size=args.batch_size,
            bucket_lengths=(args.sequence_length,),
            seed=0,
        ),
    }
    model = keras_ptuning.PTuningTextClassifier(
        keras_hub.models.Backbone.from_preset(preset),
        num_classes=2,
        prompt_config=keras_ptuning.PromptEncoderConfig(
            args.num_virtual_tokens
        ),
    )
    model.compile()
    for dataset in datasets.values():  # compile every shape
        model.fit(dataset, epochs=1, verbose=0)
    seconds = {name: [] for name in datasets}
    for round_index in range(args.rounds):
        names = list(datasets)[:: 1 if round_index % 2 == 0 else -1]
        for name in names:
            start = time.perf_counter()
            model.fit(datasets[name], epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(times) for name, times in seconds.items()}
    results = {
        "backend": keras.config.backend(),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "settings": vars(args),
        "bucket_lengths": datasets["bucketed"].bucket_lengths,
        "padded_fraction": {
            name: dataset.padded_fraction()
            for name, dataset in datasets.items()
        },
        "epoch_seconds": seconds,
        "speedup": best["fixed"] / best["bucketed"],
    }
    print(
        "| backend | rows | fixed length s/epoch | bucketed s/epoch | speedup "
        "| padding fixed / bucketed |"
    )
    padded = results["padded_fraction"]
    print(
        f"| {results['backend']} | {args.rows} | {best['fixed']:.1f} | "
        f"{best['bucketed']:.1f} | {results['speedup']:.2f}x | "
        f"{padded['fixed']:.0%} / {padded['bucketed']:.0%} |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

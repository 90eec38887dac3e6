"""SST-2 dev accuracy at HF PEFT's own settings: keras-ptuning vs PEFT.

A user moving from PEFT keeps PEFT's recipe: a frozen all-MiniLM-L6-v2, the
first `--train-rows` (4,000) rows of SST-2's `train.tsv`, sequence length 48
([CLS] and [SEP] included), 20 virtual tokens, the MLP (or LSTM) prompt
encoder, Adam, batch 32, `--epochs` (3) epochs, no early stopping, no length
bucketing. Every run is scored on all 872 rows of `dev.tsv` after its last
epoch (the best epoch is recorded too).

Systems, each run in a fresh subprocess per seed and learning rate:

- `keras-<backend>`: `keras_ptuning.PTuningTextClassifier` with its
  defaults (head initialisation and dropout included), compiled with
  `Adam(learning_rate)`, fitted one epoch at a time on fixed-length arrays.
- `peft`: `examples/peft_baseline.py` (PEFT `PromptEncoderConfig`,
  `AutoModelForSequenceClassification`, PyTorch), same rows and lengths.
- `probe`: a `Dense` head on the same frozen backbone, no prompt (the
  linear probe), reading what `--pooling` says (the mean by default), on
  the first backend given.

Both sides visit the training rows in the same order: a
`numpy.random.default_rng(seed).permutation` per epoch. Initialisation and
dropout masks come from each framework's own seeded generator, so they
cannot be identical. `--head-initializer`, `--dropout` and `--pooling`
override the classifier head (the ablations of the README's parity
section; `--pooling pooled` reads what PEFT's model reads).

    python benchmarks/sst2_parity.py                      # the README table
    python benchmarks/sst2_parity.py --systems keras-jax peft \\
        --learning-rates 1e-3 --seeds 0 --dropout 0.0
    python benchmarks/sst2_parity.py --encoder LSTM --learning-rates 1e-3

Prints a markdown table (mean ± sample standard deviation over seeds) and
writes every run to `--output` (JSON) as it finishes. Each keras run records
the head's initializer and dropout it trained with, defaults included, so
runs of different settings get their own rows. `--summarize` prints the
table of one or more earlier `--output` files (they must share the
protocol: rows, epochs, lengths, batch):

    python benchmarks/sst2_parity.py --summarize a.json b.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEMS = ("keras-jax", "keras-torch", "keras-tensorflow", "peft", "probe")
# What a table's runs must share, and what else sets a row apart.
PROTOCOL = (
    "train_rows",
    "epochs",
    "sequence_length",
    "num_virtual_tokens",
    "batch_size",
)
RUN_SETTINGS = PROTOCOL + ("encoder", "head_initializer", "dropout", "pooling")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--systems",
        nargs="+",
        default=["keras-jax", "keras-torch", "keras-tensorflow", "peft"],
        choices=SYSTEMS,
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--learning-rates", nargs="+", type=float, default=[1e-3, 3e-3]
    )
    parser.add_argument("--encoder", default="MLP", choices=["MLP", "LSTM"])
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sequence-length", type=int, default=48)
    parser.add_argument("--num-virtual-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", default=None, help="SST-2 directory")
    parser.add_argument(
        "--model-dir",
        default=None,
        help="HF checkpoint directory that keras-hub also loads (default: "
        "the installed all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--head-initializer",
        default=None,
        help="the head's kernel initializer, a Keras initializer name, "
        "optionally with a standard deviation: `glorot_uniform`, "
        "`TruncatedNormal:0.02` (keras systems; default: the library's); "
        "the bias starts at zero",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="dropout before the head (keras systems; default: the library's)",
    )
    parser.add_argument(
        "--pooling",
        default=None,
        choices=["mean", "pooled", "first", "last"],
        help="what the head reads (keras systems; default: the library's, "
        "the mean for this encoder); the probe takes `mean` or `pooled`",
    )
    parser.add_argument("--output", default="sst2_parity.json")
    parser.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the table of earlier `--output` files; runs nothing",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _data(args):
    sys.path.insert(0, REPO_ROOT)
    from keras_ptuning.datasets import load_sst2

    train_x, train_y = load_sst2("train", args.data_dir, args.train_rows)
    dev_x, dev_y = load_sst2("dev", args.data_dir)
    return train_x, np.asarray(train_y), dev_x, np.asarray(dev_y)


def _initializer(spec):
    """`name` or `name:stddev` as a Keras initializer."""
    import keras

    name, _, stddev = spec.partition(":")
    if not stddev:
        return keras.initializers.get(name)
    config = {"stddev": float(stddev)}
    return keras.initializers.get({"class_name": name, "config": config})


def _describe(initializer):
    """An initializer as `--head-initializer` spells it."""
    config = initializer.get_config()
    name = type(initializer).__name__
    return f"{name}:{config['stddev']:g}" if "stddev" in config else name


def _model_dir(args):
    if args.model_dir:
        return args.model_dir
    from keras_ptuning.presets import minilm_preset_dir

    return minilm_preset_dir()


def run_keras(args, learning_rate, seed, probe=False):
    """One keras-ptuning (or linear probe) run on this process's backend."""
    import keras
    import keras_hub

    import keras_ptuning

    keras.utils.set_random_seed(seed)
    train_x, train_y, dev_x, dev_y = _data(args)
    model_dir = _model_dir(args)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        model_dir, sequence_length=args.sequence_length
    )
    train = {k: np.asarray(v) for k, v in preprocessor(train_x).items()}
    dev = {k: np.asarray(v) for k, v in preprocessor(dev_x).items()}
    backbone = keras_hub.models.Backbone.from_preset(model_dir)
    if probe:
        model = _linear_probe(backbone, args.pooling or "mean")
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["sparse_categorical_accuracy"],
        )
    else:
        kwargs = {} if args.dropout is None else {"dropout": args.dropout}
        if args.pooling is not None:
            kwargs["pooling"] = args.pooling
        model = keras_ptuning.PTuningTextClassifier(
            backbone,
            num_classes=2,
            prompt_config=keras_ptuning.PromptEncoderConfig(
                num_virtual_tokens=args.num_virtual_tokens,
                encoder_reparameterization_type=args.encoder,
            ),
            **kwargs,
        )
        head_initializer = _describe(model.output_dense.kernel_initializer)
        if args.head_initializer is not None:
            head_initializer = args.head_initializer
            kernel = model.output_dense.kernel
            initializer = _initializer(args.head_initializer)
            kernel.assign(initializer(kernel.shape))
            model.output_dense.bias.assign(np.zeros(2))
        model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    rng = np.random.default_rng(seed)
    history = {"loss": [], "val_accuracy": []}
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = rng.permutation(len(train_y))
        fitted = keras.Model.fit(
            model,
            {k: v[order] for k, v in train.items()},
            train_y[order],
            batch_size=args.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        history["loss"].append(float(fitted.history["loss"][0]))
        logits = keras.Model.predict(model, dev, batch_size=256, verbose=0)
        accuracy = float(np.mean(np.argmax(logits, -1) == dev_y))
        history["val_accuracy"].append(accuracy)
    result = {
        "dev_accuracy": history["val_accuracy"][-1],
        "best_dev_accuracy": max(history["val_accuracy"]),
        "history": history,
        "fit_seconds": time.perf_counter() - start,
        "trainable_params": int(
            sum(np.prod(v.shape) for v in model.trainable_variables)
        ),
    }
    if probe:
        result.update(pooling=args.pooling or "mean")
    else:
        # What the head started from, its dropout and what it reads, library
        # defaults included, so a table tells runs of different defaults
        # apart.
        result.update(
            head_initializer=head_initializer,
            dropout=model.dropout,
            pooling=model.pooling,
        )
    return result


def _linear_probe(backbone, pooling):
    """The frozen backbone and a `Dense` head on its mean or pooled output,
    read and initialised as the classifier's."""
    import keras

    from keras_ptuning.layers.pooling import pool
    from keras_ptuning.layers.task_heads import head_kernel_initializer

    if pooling not in ("mean", "pooled"):
        raise ValueError(
            f"The probe reads `mean` or `pooled`. Received: --pooling {pooling}"
        )
    backbone.trainable = False
    inputs = backbone.input
    features = pool(backbone.output, inputs["padding_mask"], pooling)
    logits = keras.layers.Dense(
        2, kernel_initializer=head_kernel_initializer()
    )(features)
    return keras.Model(inputs, logits)


def run_peft(args, learning_rate, seed):
    sys.path.insert(0, os.path.join(REPO_ROOT, "examples"))
    from peft_baseline import run_peft_ptuning

    train_x, train_y, dev_x, dev_y = _data(args)
    result = run_peft_ptuning(
        train_x,
        train_y,
        dev_x,
        dev_y,
        model_dir=_model_dir(args),
        num_virtual_tokens=args.num_virtual_tokens,
        encoder_reparameterization_type=args.encoder,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=learning_rate,
        seed=seed,
        patience=None,
        verbose=False,
    )
    # The last epoch's accuracy, as for the keras systems (no early stop).
    result["best_dev_accuracy"] = result["dev_accuracy"]
    result["dev_accuracy"] = result["history"]["val_accuracy"][-1]
    return result


def _child(args):
    system, learning_rate, seed = json.loads(args.child)
    if system == "peft":
        result = run_peft(args, learning_rate, seed)
    else:
        result = run_keras(args, learning_rate, seed, probe=system == "probe")
    print("RESULT " + json.dumps(result))


def _run_child(argv, system, learning_rate, seed, backend):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, KERAS_BACKEND=backend)
    child = subprocess.run(
        [sys.executable, __file__, *argv]
        + ["--child", json.dumps([system, learning_rate, seed])],
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [x for x in child.stdout.splitlines() if x.startswith("RESULT ")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(
            f"{system} lr={learning_rate} seed={seed} failed:\n"
            f"{child.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return _child(args)
    if args.summarize:
        runs = [run for path in args.summarize for run in load_runs(path)]
        print(summary_table(runs))
        return
    parent_argv = [a for a in argv if a != "--child"]
    keras_backends = [s[6:] for s in args.systems if s.startswith("keras-")]
    settings = {name: getattr(args, name) for name in RUN_SETTINGS}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    runs = []
    for learning_rate in args.learning_rates:
        for seed in args.seeds:
            for system in args.systems:
                if system.startswith("keras-"):
                    backend = system[6:]
                elif system == "probe":
                    backend = (keras_backends or ["jax"])[0]
                else:
                    backend = "torch"
                result = _run_child(
                    parent_argv, system, learning_rate, seed, backend
                )
                # The child's own record of the head wins over the flags.
                result = {
                    **settings,
                    **result,
                    "system": system,
                    "learning_rate": learning_rate,
                    "seed": seed,
                }
                runs.append(result)
                # Written after every run: a long sweep that stops early
                # keeps what it measured.
                with open(args.output, "w") as f:
                    json.dump({"args": vars(args), "runs": runs}, f, indent=1)
                print(
                    f"{system:17s} lr={learning_rate:g} seed={seed} "
                    f"dev={result['dev_accuracy']:.4f} "
                    f"(best {result['best_dev_accuracy']:.4f}, "
                    f"{result['fit_seconds']:.0f}s)",
                    flush=True,
                )
    print(summary_table(runs))


def load_runs(path):
    """The runs in an `--output` file, each with its run settings."""
    with open(path) as f:
        data = json.load(f)
    settings = {name: data["args"].get(name) for name in RUN_SETTINGS}
    return [{**settings, **run} for run in data["runs"]]


def _label(run):
    """A table row: the system, with the settings that set it apart."""
    label = run["system"]
    details = []
    if run["encoder"] != "MLP":
        details.append(f"{run['encoder']} encoder")
    if run["system"].startswith("keras-"):
        if run["head_initializer"] is not None:
            details.append(f"head {run['head_initializer']}")
        if run["dropout"] is not None:
            details.append(f"dropout {run['dropout']:g}")
    if run.get("pooling") is not None and run["system"] != "peft":
        details.append(f"reads {run['pooling']}")
    return f"{label} ({', '.join(details)})" if details else label


def summary_table(runs):
    """Markdown: mean ± sample standard deviation of the last epoch's dev
    accuracy over seeds, per system (and settings) and learning rate."""
    for name in PROTOCOL:
        values = {run[name] for run in runs}
        if len(values) > 1:
            raise ValueError(
                f"Runs with different `{name}` cannot share a table. "
                f"Received: {name} in {sorted(values)}"
            )
    first = runs[0]
    rates = sorted({r["learning_rate"] for r in runs})
    labels = sorted(
        {_label(r) for r in runs},
        key=lambda label: (SYSTEMS.index(label.split(" ")[0]), label),
    )
    caption = (
        f"{first['train_rows']} rows, {first['epochs']} epochs, sequence "
        f"length {first['sequence_length']}, {first['num_virtual_tokens']} "
        f"virtual tokens, batch {first['batch_size']}; dev accuracy after "
        "the last epoch, mean ± standard deviation over seeds (n)"
    )
    lines = [
        caption,
        "",
        "| system | " + " | ".join(f"lr {r:g}" for r in rates) + " |",
        "| --- |" + " --- |" * len(rates),
    ]
    for label in labels:
        cells = []
        for rate in rates:
            scores = [
                r["dev_accuracy"]
                for r in runs
                if _label(r) == label and r["learning_rate"] == rate
            ]
            if not scores:
                cells.append("-")
            elif len(scores) == 1:
                cells.append(f"{scores[0]:.3f} (1)")
            else:
                cells.append(
                    f"{np.mean(scores):.3f} ± {np.std(scores, ddof=1):.3f} "
                    f"({len(scores)})"
                )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Train-step examples/s and peak memory: P-tuning vs its floor and HF PEFT.

All variants train a 2-class sequence classifier on a frozen
all-MiniLM-L6-v2 (offline, from `keras_ptuning.presets.minilm_preset_dir`)
over the same fixed batches of random token ids with a realistic padding
mask (deterministic seed; default batch 32, 64 real tokens + 20 virtual):

- `ptuned`: `keras_ptuning.PTuningTextClassifier(backbone, num_classes=2,
  prompt_config=PromptEncoderConfig(num_virtual_tokens=N))`, every other
  argument its default (MLP prompt encoder, the mean of the real tokens
  as the head's input, the frozen backbone computing as at inference),
  compiled with `compile()`'s defaults (`Adam(1e-3)`, sparse
  cross-entropy, accuracy, the backend's default `jit_compile="auto"`),
  trained with `train_on_batch`: what a user runs.
- `floor`: plain prompt tuning. The same model class, graph and head, with
  the prompt encoder swapped for a trainable `(N, D)` table at construction,
  so gradients still flow through the whole frozen backbone to the inputs
  and only the encoder MLP is gone. P-tuning cannot be cheaper than this.
- `plain`: plain prompt tuning from plain Keras and keras-hub parts, no
  keras-ptuning code: the frozen `BertBackbone` split at its token
  embedding (`keras.Model` from that layer's output, the segment ids and
  the padding mask to the pooled output) in a subclassed `keras.Model`
  that calls it with `training=False`, as Keras's transfer-learning guide
  calls a frozen base, a trainable `(N, D)` table concatenated in front
  of the token embeddings (mask 1, segment 0 for the virtual tokens) and
  a `Dense` head on the pooled output, `Adam(1e-3)`, sparse categorical
  cross-entropy from logits.
  This is the floor the issue tracker asks `ptuned` to be within 5% of.
  (Until 2026-12-04 it ran the backbone's dropout, as `ptuned` did then.)
- `peft`: HF `transformers.AutoModelForSequenceClassification` wrapped by
  `peft.get_peft_model` with `peft.PromptEncoderConfig(task_type="SEQ_CLS",
  num_virtual_tokens=N, encoder_hidden_size=<hidden size>)`, `torch.optim.Adam
  (1e-3)`, eager train-mode steps (forward, loss, backward, optimizer step).
  It runs in PyTorch whatever `KERAS_BACKEND` is, in its own interpreter
  (no Keras or TensorFlow loaded; its rounds still interleaved with the
  others', see `PeftProcess`), and only when `peft` and `transformers`
  import. Before 2026-12-02 it ran in the Keras process (the same figures
  on the idle machine).

The script asserts that the trainable variables are exactly encoder + head
(`ptuned`), table + head (`floor`) and that PEFT trains as many parameters
as `ptuned`.

Throughput: every variant is built and warmed up (compiled) in this process,
then timed in rounds of `--steps-per-round` steps, interleaved and
alternating the order each round so machine noise hits all alike. Reported:
examples/s of the best round (the least disturbed on a shared machine) and
the median round, and the ratios ptuned/floor and ptuned/peft of the best
rounds and the median of the per-round ratios.

`--fresh-processes` times each variant in a process of its own instead,
as a user's script runs it (nothing else built or compiled in it): build,
`WARMUP_STEPS` steps, then `--rounds` rounds; the variants' processes run
one after another, in alternating order `--process-repeats` times, and the
best and median of all their rounds are reported.

Peak memory: each variant runs again alone in a fresh subprocess (so the
variants and the throughput run do not contaminate each other): build, load
weights, make the data, then reset the kernel's peak-RSS counter
(`/proc/self/clear_refs`) and run the warm-up and `--steps-per-round` steps.
Numbers are resident set size of the whole process in MiB, read from
`VmHWM` (the high-water mark that `getrusage().ru_maxrss` reports, kept per
process image so a parent's peak never leaks in):

- `peak RSS`: the process's peak while training: framework runtime, loaded
  weights, activations, gradients, optimizer state, compiled programs.
- `+train`: that peak minus the RSS just before the first step, i.e. what
  training needs on top of the loaded model, compilation's working memory
  included.
- `+steady`: the peak over the timed steps only (counter reset again after
  warm-up), minus the same pre-training RSS: the steady-state training cost
  without the one-off compilation transient.

`--model smollm2` measures the causal-LM train step instead, on the
frozen SmolLM2-135M-Instruct (`keras_ptuning.presets.smollm2_preset_dir`,
converted once from its GGUF): `ptuned` is `keras_ptuning.PTuningCausalLM`
(default MLP encoder, `compile()` defaults) trained with `train_on_batch`
on next-token targets weighted by the padding mask, and `peft` is
`transformers.AutoModelForCausalLM` on the same weights wrapped by
`peft.PromptEncoderConfig(task_type="CAUSAL_LM", ...)` with the same
targets (`labels`, padding at -100). Both train the same number of
parameters (asserted). `floor` and `plain` exist for MiniLM only.

`--model smollm2-boolq` times a BoolQ-like template on SmolLM2: each row is
`--prefix-length` real tokens (a passage and question, 120), the
`--num-virtual-tokens` at slots, and `--suffix-length` real tokens (10) whose
next-token losses train it (no padding): `ptuned` is
`PTuningCausalLM(placeholder_id=...)` with its defaults, which runs the text
before the slots without a backward pass
(`keras_ptuning.backbones.frozen_prefix`) and projects only the weighted
positions onto the vocabulary (`keras_ptuning.models.scored_positions`);
`cached` also keeps each row's prefix from its first step on, as
`fit(frozen_prefix_cache_bytes=)` does (emptied after the warm-up, so the
first round of `NUM_BATCHES` steps is a first epoch and the later rounds
are later epochs); `whole` runs the whole
sequence backward and projects every position (before issue 33); `peft` is
PEFT's `CAUSAL_LM` P-tuning on the same real tokens (it can only prepend),
the same suffix scored. Run it with `--steps-per-round 4` (one epoch a
round); the table adds each variant's first round and the median of its
later rounds.

`--fit` also times `ptuned` trained by `fit` against `train_on_batch` on
the same batches (see `measure_fit`): seconds per step and the fixed cost
of each `fit` call, for keras-hub's `model.fit` (arrays through `tf.data`)
and `keras.Model.fit`. `--jit-compile true` compiles the Keras variants
with XLA (JAX, TensorFlow) or `torch.compile` (PyTorch).

    KERAS_BACKEND=jax python benchmarks/train_step.py
    KERAS_BACKEND=torch python benchmarks/train_step.py --json out.json
    KERAS_BACKEND=torch python benchmarks/train_step.py --fit --skip-memory
    KERAS_BACKEND=tensorflow python benchmarks/train_step.py \\
        --rounds 1 --steps-per-round 2 --variants ptuned floor
    KERAS_BACKEND=torch python benchmarks/train_step.py --fresh-processes \\
        --variants ptuned plain --rounds 2 --steps-per-round 8 --skip-memory
    KERAS_BACKEND=torch python benchmarks/train_step.py \\
        --model smollm2-boolq --batch-size 8 --rounds 3 --steps-per-round 4
    KERAS_BACKEND=jax python benchmarks/train_step.py --model smollm2 \\
        --batch-size 8 --rounds 3 --steps-per-round 3
"""

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import unittest.mock

import numpy as np

VARIANTS = ("ptuned", "floor", "plain", "peft")
MODELS = {
    "minilm": VARIANTS,
    "smollm2": ("ptuned", "peft"),
    # A BoolQ-like template: `--prefix-length` real tokens, the virtual
    # tokens at slots, `--suffix-length` real tokens after them.
    "smollm2-boolq": ("ptuned", "cached", "whole", "peft"),
}
WARMUP_STEPS = 2
NUM_BATCHES = 4
# `--fit`: one `fit` epoch over the batches repeated this many times.
FIT_REPEATS = (1, 4)
LEARNING_RATE = 1e-3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", choices=sorted(MODELS))
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--num-virtual-tokens", type=int, default=20)
    parser.add_argument(
        "--prefix-length",
        type=int,
        default=120,
        help="smollm2-boolq: real tokens before the first virtual token",
    )
    parser.add_argument(
        "--suffix-length",
        type=int,
        default=10,
        help="smollm2-boolq: real tokens after the virtual ones (scored)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument(
        "--skip-memory",
        action="store_true",
        help="skip the per-variant peak-memory subprocesses",
    )
    parser.add_argument(
        "--jit-compile",
        default="auto",
        choices=["auto", "true", "false"],
        help="`jit_compile` of the Keras variants' `compile` (default: the "
        "backend's own choice; `true` is XLA on JAX/TensorFlow and "
        "`torch.compile` on PyTorch)",
    )
    parser.add_argument(
        "--fit",
        action="store_true",
        help="also time `fit` against `train_on_batch` per step (ptuned)",
    )
    parser.add_argument(
        "--fresh-processes",
        action="store_true",
        help="time each variant in a process of its own (see the docstring)",
    )
    parser.add_argument("--process-repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="write results here")
    # Internal: time one variant in this fresh process, print JSON.
    parser.add_argument("--time-probe", default=None, help=argparse.SUPPRESS)
    # Internal: measure one variant's memory and print it as JSON.
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    # Internal: be the `peft` variant's own process (see `PeftProcess`).
    parser.add_argument(
        "--peft-worker", action="store_true", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    allowed = MODELS[args.model]
    if args.variants is None:
        args.variants = list(allowed)
    if args.fit and args.model != "minilm":
        parser.error("--fit is measured on --model minilm only")
    unknown = sorted(set(args.variants) - set(allowed))
    if unknown:
        parser.error(
            f"unknown variants {unknown} for --model {args.model}; choose "
            f"from {allowed}"
        )
    return args


def peft_available():
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _presets():
    """`keras_ptuning.presets`, without importing Keras.

    Loads that one module by path rather than through the package, so the
    PEFT memory probe's process holds PyTorch only.
    """
    package = importlib.util.find_spec("keras_ptuning")
    if package is None:  # run from a checkout that is not installed
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.path.join(root, "keras_ptuning", "presets.py")
    else:
        path = os.path.join(package.submodule_search_locations[0], "presets.py")
    spec = importlib.util.spec_from_file_location("_presets", path)
    presets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(presets)
    return presets


def model_dir():
    """`keras_ptuning.presets.minilm_preset_dir()`, without importing Keras."""
    return _presets().minilm_preset_dir()


def smollm2_dir(format="keras_hub"):
    """`keras_ptuning.presets.smollm2_preset_dir()`, without Keras."""
    return _presets().smollm2_preset_dir(format)


def make_batches(args):
    """`NUM_BATCHES` fixed batches of `--model`'s kind: inputs and targets."""
    if args.model == "smollm2":
        return make_causal_batches(args)
    if args.model == "smollm2-boolq":
        return make_template_batches(args)
    return make_classifier_batches(args)


SLOT = -1


def make_template_batches(args):
    """`NUM_BATCHES` fixed SmolLM2 batches of a BoolQ-like template.

    Each row is `--prefix-length` random real tokens (a passage and a
    question), `--num-virtual-tokens` slots (`SLOT`), `--suffix-length`
    real tokens (an anchor and the answer), no padding. Targets are the
    next tokens, weighted on the suffix only (what a verbalizer scores).
    Returns `(inputs, targets, sample_weight)` with the slots in
    `token_ids`, as `PTuningCausalLM(placeholder_id=SLOT)` reads them.
    """
    with open(os.path.join(smollm2_dir(), "config.json")) as f:
        vocab_size = json.load(f)["config"]["vocabulary_size"]
    rng = np.random.default_rng(0)
    size, n = args.batch_size, args.num_virtual_tokens
    prefix, suffix = args.prefix_length, args.suffix_length
    length = prefix + n + suffix
    batches = []
    for _ in range(NUM_BATCHES):
        token_ids = rng.integers(0, vocab_size, (size, length)).astype("int32")
        token_ids[:, prefix : prefix + n] = SLOT
        targets = np.concatenate(
            [token_ids[:, 1:], np.zeros((size, 1), "int32")], axis=1
        )
        targets = np.maximum(targets, 0)
        weight = np.zeros((size, length), "float32")
        weight[:, prefix + n - 1 : length - 1] = 1.0
        inputs = {
            "token_ids": token_ids,
            "padding_mask": np.ones((size, length), "int32"),
        }
        batches.append((inputs, targets, weight))
    return batches


def make_causal_batches(args):
    """`NUM_BATCHES` fixed right-padded SmolLM2 batches.

    Each is `(inputs, targets, sample_weight)` for `PTuningCausalLM`: token
    ids and padding mask, the next token at every position, and the mask
    shifted the same way (the last real token predicts nothing).
    """
    with open(os.path.join(smollm2_dir(), "config.json")) as f:
        vocab_size = json.load(f)["config"]["vocabulary_size"]
    rng = np.random.default_rng(0)
    size, length = args.batch_size, args.sequence_length
    batches = []
    for _ in range(NUM_BATCHES):
        lengths = rng.integers(max(2, length // 4), length + 1, size)
        lengths[0] = length
        padding_mask = np.arange(length)[None] < lengths[:, None]
        token_ids = rng.integers(0, vocab_size, (size, length))
        token_ids = np.where(padding_mask, token_ids, 0).astype("int32")
        targets = np.concatenate(
            [token_ids[:, 1:], np.zeros((size, 1), "int32")], axis=1
        )
        weight = np.concatenate(
            [padding_mask[:, 1:], np.zeros((size, 1), bool)], axis=1
        )
        inputs = {
            "token_ids": token_ids,
            "padding_mask": padding_mask.astype("int32"),
        }
        batches.append((inputs, targets, weight.astype("float32")))
    return batches


def make_classifier_batches(args):
    """`NUM_BATCHES` fixed BERT-style batches: inputs (int32) and labels."""
    directory = model_dir()
    with open(os.path.join(directory, "config.json")) as f:
        vocab_size = json.load(f)["vocab_size"]
    with open(os.path.join(directory, "vocab.txt")) as f:
        vocab = {token.rstrip("\n"): i for i, token in enumerate(f)}
    rng = np.random.default_rng(0)
    size, length = args.batch_size, args.sequence_length
    batches = []
    for _ in range(NUM_BATCHES):
        # Real lengths between a quarter and all of the sequence, with at
        # least one full row, as a padded batch of sentences has.
        lengths = rng.integers(max(2, length // 4), length + 1, size)
        lengths[0] = length
        padding_mask = np.arange(length)[None] < lengths[:, None]
        token_ids = rng.integers(1000, vocab_size, (size, length))
        token_ids[:, 0] = vocab["[CLS]"]
        token_ids[np.arange(size), lengths - 1] = vocab["[SEP]"]
        inputs = {
            "token_ids": np.where(padding_mask, token_ids, 0).astype("int32"),
            "padding_mask": padding_mask.astype("int32"),
            "segment_ids": np.zeros((size, length), "int32"),
        }
        labels = rng.integers(0, 2, size).astype("int32")
        batches.append((inputs, labels))
    return batches


def jit_compile(args):
    """`--jit-compile` as `compile`'s argument."""
    return {"auto": "auto", "true": True, "false": False}[args.jit_compile]


def cycle(batches):
    while True:
        yield from batches


def encoder_param_count(n, d, head=True):
    """Trainable parameters of PEFT's default MLP encoder (+ a 2-class
    head)."""
    return n * d + 3 * (d * d + d) + (2 * d + 2 if head else 0)


def keras_model(variant, args):
    """The compiled `ptuned` or `floor` classifier, its variables checked."""
    import keras
    import keras_hub
    from keras import ops

    import keras_ptuning
    from keras_ptuning.backbones import ptuning_backbone

    class TrainablePromptTable(keras.layers.Layer):
        """A trainable `(N, D)` prompt with `PromptEncoder`'s interface.

        Stands in for the prompt encoder inside `PromptInjection`: plain
        prompt tuning, the P-tuning floor.
        """

        def __init__(self, config, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.prompt_config = config
            self.table = self.add_weight(
                shape=(config.num_virtual_tokens, config.token_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0),
                trainable=True,
                name="table",
            )
            # Never called as a layer, so mark it built: Keras re-runs a
            # symbolic build of the model on every `train_on_batch` while
            # any layer is unbuilt (a full eager forward on torch).
            self.built = True

        @property
        def num_virtual_tokens(self):
            return self.prompt_config.num_virtual_tokens

        @property
        def token_dim(self):
            return self.prompt_config.token_dim

        def prompt_table(self, training=False):
            return ops.convert_to_tensor(self.table)

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone.from_preset(model_dir())
    config = keras_ptuning.PromptEncoderConfig(
        num_virtual_tokens=args.num_virtual_tokens
    )
    if variant == "floor":
        with unittest.mock.patch.object(
            ptuning_backbone, "PromptEncoder", TrainablePromptTable
        ):
            backbone = keras_ptuning.PTuningBackbone(backbone, config)
    # Every other argument its default: what a user runs.
    model = keras_ptuning.PTuningTextClassifier(
        backbone, num_classes=2, prompt_config=config
    )
    model.compile(jit_compile=jit_compile(args))

    # Trainable: exactly the prompt (encoder or table) and the head.
    encoder = model.backbone.prompt_encoder
    head = [model.output_dense.kernel, model.output_dense.bias]
    trainable = model.trainable_variables
    expected = list(encoder.trainable_variables) + head
    n, d = args.num_virtual_tokens, model.backbone.hidden_dim
    if variant == "floor":
        assert isinstance(encoder, TrainablePromptTable)
        assert len(trainable) == 3, [v.path for v in trainable]
        assert tuple(encoder.table.shape) == (n, d)
    else:
        assert isinstance(encoder, keras_ptuning.PromptEncoder)
        # Embedding, 3 Dense (kernel + bias), head kernel + bias.
        assert len(trainable) == 9, [v.path for v in trainable]
        count = sum(int(np.prod(v.shape)) for v in trainable)
        assert count == encoder_param_count(n, d), count
    assert {id(v) for v in trainable} == {id(v) for v in expected}
    assert len(trainable) == len(expected)
    assert all(layer.built for layer in model._flatten_layers())
    return model


def causal_model(args, variant="ptuned"):
    """The compiled `PTuningCausalLM` on SmolLM2, its variables checked.

    With `--model smollm2-boolq` the virtual tokens go to the template's
    slots; `ptuned` runs the text before them as constants (the default,
    `keras_ptuning.backbones.frozen_prefix`), `cached` also keeps each row's
    prefix from its first step on (what `fit(frozen_prefix_cache_bytes=)`
    does; emptied after the warm-up, so the first timed round is a first
    epoch), `whole` runs the whole sequence backward as before.
    """
    import keras
    import keras_hub

    import keras_ptuning

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.Backbone.from_preset(smollm2_dir())
    config = keras_ptuning.PromptEncoderConfig(
        num_virtual_tokens=args.num_virtual_tokens
    )
    from keras_ptuning.backbones.frozen_prefix import FrozenPrefixCache

    slots = args.model == "smollm2-boolq"
    model = keras_ptuning.PTuningCausalLM(
        backbone, prompt_config=config, placeholder_id=SLOT if slots else None
    )
    model.backbone.frozen_prefix = variant != "whole"
    model.project_weighted_positions_only = variant != "whole"
    if variant == "cached":
        model.backbone.frozen_prefix_cache = FrozenPrefixCache(2**34)
    model.compile(jit_compile=jit_compile(args))
    trainable = model.trainable_variables
    encoder = model.backbone.prompt_encoder
    assert {id(v) for v in trainable} == {
        id(v) for v in encoder.trainable_variables
    }
    count = sum(int(np.prod(v.shape)) for v in trainable)
    n, d = args.num_virtual_tokens, backbone.hidden_dim
    assert count == encoder_param_count(n, d, head=False), count
    return model


def train_on_batch(model, x, y, sample_weight=None):
    """One `train_on_batch` step; its loss as a float (waits for the
    device)."""
    logs = model.train_on_batch(
        x, y, sample_weight=sample_weight, return_dict=True
    )
    return float(logs["loss"])


def build_keras(variant, args, batches):
    """A compiled Keras model and a function running one train step."""
    if args.model.startswith("smollm2"):
        model = causal_model(args, variant)
    else:
        model = keras_model(variant, args)
    data = cycle(batches)

    def step():
        return train_on_batch(model, *next(data))

    cache = getattr(model.backbone, "frozen_prefix_cache", None)
    if cache is not None:

        def after_warmup():
            model.backbone.frozen_prefix_cache = type(cache)(cache.max_bytes)
            # Start the timed rounds at the first batch: round 1 is then
            # a first epoch when a round is `NUM_BATCHES` steps.
            while next(data) is not batches[-1]:
                pass

        step.after_warmup = after_warmup
    return step


def measure_fit(args, batches):
    """Seconds per step of `fit` against `train_on_batch` (`ptuned`).

    `fit` runs one epoch over the batches repeated `FIT_REPEATS[0]` and
    `FIT_REPEATS[1]` times (the same rows, order kept, no shuffle): the
    slope between the two is `fit`'s cost per step, the intercept its
    fixed cost per call (data adapter, iterators, callbacks, the first
    batch's wait). Both `model.fit` (keras-hub's `Task.fit`, which turns
    arrays into a `tf.data` pipeline) and `keras.Model.fit` (arrays
    straight to Keras) are timed, interleaved with `train_on_batch` over
    the same batches, `--rounds` times; medians are reported.
    """
    import keras

    model = keras_model("ptuned", args)
    fits = {
        "model.fit": model.fit,
        "keras.Model.fit": functools.partial(keras.Model.fit, model),
    }
    # The arrays of one epoch per repeat count, built once.
    epochs = {
        repeats: (
            {
                k: np.concatenate([b[0][k] for b in batches] * repeats)
                for k in batches[0][0]
            },
            np.concatenate([b[1] for b in batches] * repeats),
        )
        for repeats in FIT_REPEATS
    }

    def run_fit(name, repeats):
        x, y = epochs[repeats]
        start = time.perf_counter()
        fits[name](x, y, batch_size=args.batch_size, shuffle=False, verbose=0)
        return time.perf_counter() - start

    def run_train_on_batch():
        start = time.perf_counter()
        for x, y in batches:
            train_on_batch(model, x, y)
        return (time.perf_counter() - start) / len(batches)

    for name in fits:  # warm up: compile, build the data pipelines
        run_fit(name, FIT_REPEATS[0])
    run_train_on_batch()
    small, large = (r * len(batches) for r in FIT_REPEATS)
    timings = {name: [] for name in fits}
    timings["train_on_batch"] = []
    for _ in range(args.rounds):
        for name in fits:
            t_small = run_fit(name, FIT_REPEATS[0])
            t_large = run_fit(name, FIT_REPEATS[1])
            per_step = (t_large - t_small) / (large - small)
            timings[name].append((per_step, t_small - small * per_step))
        timings["train_on_batch"].append((run_train_on_batch(), 0.0))
    return {
        name: {
            "seconds_per_step": statistics.median(t[0] for t in rounds),
            "fixed_seconds_per_call": statistics.median(t[1] for t in rounds),
            "rounds": rounds,
        }
        for name, rounds in timings.items()
    }


def build_plain(args, batches):
    """Plain prompt tuning from keras-hub parts, and one train step."""
    import keras
    import keras_hub
    from keras import ops

    class PlainPromptTuning(keras.Model):
        """A trainable `(N, D)` table in front of a frozen BERT's token
        embeddings, a `Dense` head on its pooled output."""

        def __init__(self, backbone, num_virtual_tokens):
            super().__init__()
            backbone.trainable = False
            self.backbone = backbone
            self.body = keras.Model(
                inputs=[
                    backbone.token_embedding.output,
                    backbone.input["padding_mask"],
                    backbone.input["segment_ids"],
                ],
                outputs=backbone.output["pooled_output"],
            )
            self.table = self.add_weight(
                shape=(num_virtual_tokens, backbone.hidden_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0),
                name="table",
            )
            self.head = keras.layers.Dense(2)

        def call(self, inputs):
            embeddings = self.backbone.token_embedding(inputs["token_ids"])
            batch = ops.shape(embeddings)[0]
            n, d = self.table.shape
            table = ops.broadcast_to(self.table[None], (batch, n, d))
            embeddings = ops.concatenate([table, embeddings], axis=1)
            mask = inputs["padding_mask"]
            segments = inputs["segment_ids"]
            mask = ops.concatenate([ops.ones((batch, n), mask.dtype), mask], 1)
            segments = ops.concatenate(
                [ops.zeros((batch, n), segments.dtype), segments], 1
            )
            # A frozen base runs as at inference (Keras's transfer-learning
            # guide). Passed in `call`: recorded in a functional graph, an
            # outer `training=True` would override it (Keras 3.15).
            pooled = self.body([embeddings, mask, segments], training=False)
            return self.head(pooled)

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone.from_preset(model_dir())
    model = PlainPromptTuning(backbone, args.num_virtual_tokens)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile(args),
    )
    data = cycle(batches)
    model.train_on_batch(*batches[0])  # builds it
    assert len(model.trainable_variables) == 3, model.trainable_variables

    def step():
        x, y = next(data)
        return float(model.train_on_batch(x, y))

    return step


def peft_train_step(model, task_type, args, torch_batches, head=True):
    """Wraps an HF model with PEFT P-tuning (trainable count checked) and
    returns one eager train step over `torch_batches`, cycled."""
    import peft
    import torch

    hidden = model.config.hidden_size
    config = peft.PromptEncoderConfig(
        task_type=task_type,
        num_virtual_tokens=args.num_virtual_tokens,
        encoder_hidden_size=hidden,
    )
    model = peft.get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    expected = encoder_param_count(args.num_virtual_tokens, hidden, head)
    assert count == expected, count
    optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
    data = cycle(torch_batches)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(**next(data)).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def build_peft_causal(args, batches):
    """HF SmolLM2 + PEFT `CAUSAL_LM` P-tuning in PyTorch, one train step."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_dir("transformers"), dtype=torch.float32
    )
    torch_batches = []
    for x, _, _ in batches:
        token_ids = torch.from_numpy(x["token_ids"]).long()
        mask = torch.from_numpy(x["padding_mask"]).long()
        # transformers shifts `labels` itself: the same targets as ours.
        labels = token_ids.masked_fill(mask == 0, -100)
        if args.model == "smollm2-boolq":
            # PEFT prepends: the same real tokens without the slots, the
            # suffix scored.
            real = token_ids != SLOT
            token_ids = token_ids[real].reshape(len(token_ids), -1)
            mask = mask[real].reshape(token_ids.shape)
            labels = torch.full_like(token_ids, -100)
            labels[:, args.prefix_length :] = token_ids[:, args.prefix_length :]
        torch_batches.append(
            {"input_ids": token_ids, "attention_mask": mask, "labels": labels}
        )
    return peft_train_step(model, "CAUSAL_LM", args, torch_batches, False)


def build_peft(args, batches):
    """HF MiniLM + PEFT P-tuning in PyTorch, and one train step."""
    if args.model.startswith("smollm2"):
        return build_peft_causal(args, batches)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir(), num_labels=2
    )
    torch_batches = [
        {
            "input_ids": torch.from_numpy(x["token_ids"]).long(),
            "attention_mask": torch.from_numpy(x["padding_mask"]).long(),
            "token_type_ids": torch.from_numpy(x["segment_ids"]).long(),
            "labels": torch.from_numpy(y).long(),
        }
        for x, y in batches
    ]
    return peft_train_step(model, "SEQ_CLS", args, torch_batches)


def build(variant, args, batches):
    if variant == "peft":
        return build_peft(args, batches)
    if variant == "plain":
        return build_plain(args, batches)
    return build_keras(variant, args, batches)


def _status_kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def _reset_peak_rss():
    """Resets `VmHWM` to the current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def memory_probe(variant, args):
    """Peak RSS of training `variant`, in this (fresh) process."""
    step = build(variant, args, make_batches(args))
    loaded = _status_kib("VmRSS")
    reset = _reset_peak_rss()
    for _ in range(WARMUP_STEPS):
        step()
    peak_warmup = _status_kib("VmHWM")
    reset = _reset_peak_rss() and reset
    for _ in range(args.steps_per_round):
        step()
    peak_steady = _status_kib("VmHWM")
    peak = max(peak_warmup, peak_steady)
    mib = 1024.0
    return {
        "loaded_rss_mib": loaded / mib,
        "peak_rss_mib": peak / mib,
        "train_peak_over_loaded_mib": (peak - loaded) / mib,
        "warmup_peak_over_loaded_mib": (peak_warmup - loaded) / mib,
        "steady_peak_over_loaded_mib": (peak_steady - loaded) / mib,
        # False: the kernel refused the reset, so peaks include loading.
        "peak_counter_reset": reset,
    }


def child_command(args, *flags):
    """This script with `flags` and the settings that shape a step."""
    return [
        sys.executable,
        os.path.abspath(__file__),
        *flags,
        "--model",
        args.model,
        "--batch-size",
        str(args.batch_size),
        "--sequence-length",
        str(args.sequence_length),
        "--num-virtual-tokens",
        str(args.num_virtual_tokens),
        "--prefix-length",
        str(args.prefix_length),
        "--suffix-length",
        str(args.suffix_length),
        "--steps-per-round",
        str(args.steps_per_round),
        "--jit-compile",
        args.jit_compile,
    ]


def measure_memory(variant, args):
    """Runs `memory_probe` in a fresh interpreter; `None` if it fails."""
    command = child_command(args, "--memory-probe", variant)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(
            f"memory probe for {variant} failed:\n{done.stderr[-2000:]}",
            file=sys.stderr,
        )
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_round(step, args):
    """Seconds that `--steps-per-round` calls of `step` take."""
    start = time.perf_counter()
    for _ in range(args.steps_per_round):
        step()
    return time.perf_counter() - start


def round_timer(variant, args, batches):
    """Builds `variant`'s step, warms it up (compiles), and returns a
    function that times one round of it (`timed_round`)."""
    step = build(variant, args, batches)
    for _ in range(WARMUP_STEPS):
        step()
    if hasattr(step, "after_warmup"):
        step.after_warmup()
    return functools.partial(timed_round, step, args)


ROUND_REPLY = "peft-round-seconds"


def peft_worker(args):
    """The `peft` variant's process: builds and warms up its step, then
    times one round per `round` line on stdin, replying on stdout."""
    run_round = round_timer("peft", args, make_batches(args))
    print(ROUND_REPLY, 0.0, flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        print(ROUND_REPLY, run_round(), flush=True)


class PeftProcess:
    """HF PEFT's train step in its own interpreter, one round on request.

    In the Keras process PEFT would share the process with the Keras
    backend's thread pools and TensorFlow's (keras-hub's tokenizers load
    TensorFlow on every backend). On the idle machine that made no
    difference (2026-12-02: PEFT 32.0 examples/s in a TensorFlow process,
    32.6 in its own), but a run under load once had it at 5.9 in a
    TensorFlow process. Its own process keeps the frameworks apart on
    every backend, and the parent still interleaves its rounds with the
    Keras variants': the parent waits, idle, while a PEFT round runs.
    """

    def __init__(self, args):
        self.process = subprocess.Popen(
            child_command(args, "--peft-worker"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reply()  # built and warmed up

    def reply(self):
        for line in self.process.stdout:
            if line.startswith(ROUND_REPLY):
                return float(line.split()[1])
        raise RuntimeError(f"the PEFT worker exited with {self.process.wait()}")

    def run_round(self):
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return self.reply()

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def measure_throughput(variants, args):
    """Examples/s per round for each variant, interleaved (PEFT in its own
    process, see `PeftProcess`)."""
    batches = make_batches(args)
    run_round = {}
    peft = None
    for variant in variants:
        if variant == "peft":
            peft = PeftProcess(args)
            run_round[variant] = peft.run_round
            continue
        run_round[variant] = round_timer(variant, args, batches)
    examples = args.batch_size * args.steps_per_round
    rounds = {variant: [] for variant in variants}
    try:
        for round_index in range(args.rounds):
            order = variants if round_index % 2 == 0 else variants[::-1]
            for variant in order:
                rounds[variant].append(examples / run_round[variant]())
    finally:
        if peft is not None:
            peft.close()
    return rounds


def time_probe(variant, args):
    """Examples/s of each of `--rounds` rounds of `variant`, built and
    warmed up in this (fresh) process."""
    run_round = round_timer(variant, args, make_batches(args))
    examples = args.batch_size * args.steps_per_round
    return [examples / run_round() for _ in range(args.rounds)]


def measure_fresh_processes(variants, args):
    """`time_probe` of each variant in a fresh interpreter, the variants
    one after another in alternating order, `--process-repeats` times."""
    rounds = {variant: [] for variant in variants}
    for repeat in range(args.process_repeats):
        order = variants if repeat % 2 == 0 else variants[::-1]
        for variant in order:
            command = child_command(args, "--time-probe", variant)
            command += ["--rounds", str(args.rounds)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"timing {variant} failed:\n{done.stderr[-2000:]}"
                )
            rounds[variant] += json.loads(done.stdout.strip().splitlines()[-1])
    return rounds


def ratios(rounds, a, b):
    if a not in rounds or b not in rounds:
        return None
    per_round = [x / y for x, y in zip(rounds[a], rounds[b])]
    return {
        "best": max(rounds[a]) / max(rounds[b]),
        "median": statistics.median(per_round),
        "rounds": per_round,
    }


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine():
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"model name\s*:\s*(.+)", f.read())
        name = found.group(1).strip() if found else name
    except OSError:
        pass
    return f"{platform.machine()} {name}, {os.cpu_count()} CPUs".strip()


def main():
    args = parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args)))
        return
    if args.peft_worker:
        peft_worker(args)
        return
    if args.time_probe:
        print(json.dumps(time_probe(args.time_probe, args)))
        return
    import keras

    variants = list(dict.fromkeys(args.variants))
    if "peft" in variants and not peft_available():
        print("peft/transformers not importable: skipping `peft`.")
        variants.remove("peft")
    backend = keras.config.backend()
    backend_package = {"tensorflow": "tensorflow"}.get(backend, backend)
    memory = {}
    if not args.skip_memory:
        memory = {v: measure_memory(v, args) for v in variants}
    if args.fresh_processes:
        rounds = measure_fresh_processes(variants, args)
    else:
        rounds = measure_throughput(variants, args)
    fit = measure_fit(args, make_batches(args)) if args.fit else None
    results = {
        "backend": backend,
        "machine": machine(),
        "versions": {
            name: _version(name)
            for name in (
                "keras",
                "keras-hub",
                backend_package,
                "torch",
                "transformers",
                "peft",
                "keras-ptuning",
            )
        },
        "settings": vars(args),
        "results": {
            variant: {
                "runs_on": "torch (HF PEFT)" if variant == "peft" else backend,
                "examples_per_s_best": max(rounds[variant]),
                "examples_per_s_median": statistics.median(rounds[variant]),
                "examples_per_s_first_round": rounds[variant][0],
                "examples_per_s_later_rounds_median": (
                    statistics.median(rounds[variant][1:])
                    if len(rounds[variant]) > 1
                    else None
                ),
                "rounds": rounds[variant],
                "memory": memory.get(variant),
            }
            for variant in variants
        },
        "ratios": {
            "ptuned/floor": ratios(rounds, "ptuned", "floor"),
            "ptuned/plain": ratios(rounds, "ptuned", "plain"),
            "ptuned/peft": ratios(rounds, "ptuned", "peft"),
            "ptuned/whole": ratios(rounds, "ptuned", "whole"),
            "cached/whole": ratios(rounds, "cached", "whole"),
            "cached/peft": ratios(rounds, "cached", "peft"),
        },
        "fit": fit,
    }

    versions = ", ".join(
        f"{name} {version}"
        for name, version in results["versions"].items()
        if version
    )
    print(f"\nmachine: {results['machine']}; {versions}")
    print(
        f"{args.model}: batch {args.batch_size} x {args.sequence_length} "
        "tokens + "
        f"{args.num_virtual_tokens} virtual, {args.rounds} rounds x "
        f"{args.steps_per_round} steps"
        + (
            f" in fresh processes x {args.process_repeats}\n"
            if args.fresh_processes
            else " interleaved in one process\n"
        )
    )
    print(
        "| backend | variant | examples/s (best) | examples/s (median) "
        "| peak RSS MiB | +train MiB | +steady MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant, r in results["results"].items():
        m = r["memory"]
        mem = (
            f"{m['peak_rss_mib']:.0f} | {m['train_peak_over_loaded_mib']:.0f} "
            f"| {m['steady_peak_over_loaded_mib']:.0f}"
            if m
            else "- | - | -"
        )
        print(
            f"| {r['runs_on']} | {variant} | {r['examples_per_s_best']:.1f} "
            f"| {r['examples_per_s_median']:.1f} | {mem} |"
        )
    if args.model == "smollm2-boolq":
        print(
            "\n| backend | variant | examples/s, first round (epoch) "
            "| examples/s, later rounds (median) |"
        )
        print("|---|---|---|---|")
        for variant, r in results["results"].items():
            later = r["examples_per_s_later_rounds_median"]
            print(
                f"| {r['runs_on']} | {variant} "
                f"| {r['examples_per_s_first_round']:.2f} "
                f"| {'-' if later is None else f'{later:.2f}'} |"
            )
    print("\n| backend | ratio | best rounds | median of rounds |")
    print("|---|---|---|---|")
    for name, ratio in results["ratios"].items():
        if ratio:
            print(
                f"| {backend} | {name} | {ratio['best']:.3f} "
                f"| {ratio['median']:.3f} |"
            )
    if fit:
        step = fit["train_on_batch"]["seconds_per_step"]
        print(
            "\n| backend | ptuned trained by | s/step | fixed s/call "
            "| s/step vs train_on_batch |"
        )
        print("|---|---|---|---|---|")
        for name, r in fit.items():
            print(
                f"| {backend} | {name} | {r['seconds_per_step']:.3f} "
                f"| {r['fixed_seconds_per_call']:.2f} "
                f"| {r['seconds_per_step'] / step:.3f} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""Multiple-choice scoring: each context run once, against once per choice.

`keras_ptuning.PTuningCausalLMClassifier` scores a choice by its
log-likelihood after the example's context. With one row per choice (a
COPA-style continuation), the context is the same in every row; where the
inputs are concrete (eager calls: PyTorch, and JAX or TensorFlow outside
compiled functions) the model runs each context once through the family's
cached decoding and only the choices after it
(`keras_ptuning.backbones.frozen_prefix.run_shared_context`).

On the frozen SmolLM2-135M-Instruct (`keras_ptuning.presets`), with a
p-tuned prompt of `--num-virtual-tokens` slots in the context, this times
calls of the model (inference, as scoring a dev set is, and training-mode
forward and backward) on `--batch-size` examples whose contexts have
`--context-length` tokens (the slots included) and whose choices have
`--choice-length`:

- `one`: one choice per example (one row): the floor.
- `two_shared`: two choices, each context run once (the default: on this
  RoPE decoder the choices run side by side in the context's call).
- `two_on_cache`: two choices, each context run once with its first
  choice, the second choice in a call of its own on the context's cache
  (the default before side-by-side choices, and still the path of
  decoders that cannot pack them).
- `two_whole`: two choices, each row run in full.

With `--demonstrations D`, every example's context starts with the same
`D` tokens (in-context demonstrations), which the whole batch shares:
`one` then runs them once for the batch, and `one_whole` is that row run
in full (`two_on_cache` is left out).

Variants interleaved in rounds of `--steps` calls, order alternating;
reported: seconds per call (best round, median round) and the ratios to
`one`. Target (issue 33): `two_shared` at most 1.3x `one`.

    KERAS_BACKEND=torch python benchmarks/choice_scoring.py
    KERAS_BACKEND=torch python benchmarks/choice_scoring.py --train
    KERAS_BACKEND=torch python benchmarks/choice_scoring.py --call-cost
    KERAS_BACKEND=torch python benchmarks/choice_scoring.py \
        --demonstrations 384 --context-length 128 --choice-length 1
"""

import argparse
import json
import statistics
import time
import unittest.mock

import numpy as np

SLOT = -1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--choice-length", type=int, default=12)
    parser.add_argument("--num-virtual-tokens", type=int, default=8)
    parser.add_argument(
        "--demonstrations",
        type=int,
        default=0,
        help="tokens every example's context starts with (the same for all)",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--train",
        action="store_true",
        help="time training-mode forward and backward instead of inference",
    )
    parser.add_argument(
        "--call-cost",
        action="store_true",
        help="also time the plain backbone's inference call on batch-size "
        "rows of 4, 16 and 64 tokens (the fixed cost of one call)",
    )
    parser.add_argument("--json", default=None)
    return parser.parse_args()


def make_inputs(args, num_choices, vocabulary_size):
    """Concrete inputs in `ChoiceTemplate`'s layout."""
    rng = np.random.default_rng(0)
    n, k = args.context_length, args.choice_length
    length = n + k
    batch = args.batch_size
    context = rng.integers(100, vocabulary_size, (batch, n)).astype("int32")
    slots = np.linspace(n // 2, n - 2, args.num_virtual_tokens).astype(int)
    context[:, slots] = SLOT
    shared = rng.integers(100, vocabulary_size, (1, args.demonstrations))
    context = np.concatenate([np.repeat(shared, batch, 0), context], 1).astype(
        "int32"
    )
    n = context.shape[1]
    length = n + k
    choices = rng.integers(100, vocabulary_size, (batch, num_choices, k))
    token_ids = np.concatenate(
        [np.repeat(context[:, None], num_choices, 1), choices], -1
    ).astype("int32")
    rows = np.arange(num_choices)[None, :, None] * length
    positions = rows + n - 1 + np.arange(k)[None, None]
    return {
        "token_ids": token_ids,
        "padding_mask": np.ones((batch, num_choices, length), "int32"),
        "choice_positions": np.broadcast_to(
            positions, (batch, num_choices, k)
        ).astype("int32"),
        "choice_ids": choices.astype("int32"),
        "choice_mask": np.ones((batch, num_choices, k), "int32"),
    }


def main():
    args = parse_args()
    import keras
    import keras_hub

    import keras_ptuning
    from keras_ptuning.backbones import frozen_prefix
    from keras_ptuning.presets import smollm2_preset_dir

    backbone = keras_hub.models.Backbone.from_preset(smollm2_preset_dir())
    model = keras_ptuning.PTuningCausalLMClassifier(
        backbone,
        prompt_config=keras_ptuning.PromptEncoderConfig(
            args.num_virtual_tokens
        ),
        placeholder_id=SLOT,
    )
    vocabulary_size = backbone.vocabulary_size
    inputs = {
        "one": make_inputs(args, 1, vocabulary_size),
        "two_shared": make_inputs(args, 2, vocabulary_size),
        "two_on_cache": make_inputs(args, 2, vocabulary_size),
        "two_whole": make_inputs(args, 2, vocabulary_size),
    }
    if args.demonstrations:
        del inputs["two_on_cache"]
        inputs["one_whole"] = inputs["one"]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    labels = np.zeros((args.batch_size,), "int32")

    def call(variant):
        with (
            unittest.mock.patch.object(
                type(model),
                "_shared_context_states",
                (lambda *a: None)
                if variant.endswith("_whole")
                else type(model)._shared_context_states,
            ),
            unittest.mock.patch.object(
                frozen_prefix,
                "packs_choices",
                (lambda *a: False)
                if variant == "two_on_cache"
                else frozen_prefix.packs_choices,
            ),
        ):
            if not args.train:
                return keras.ops.convert_to_numpy(model(inputs[variant]))
            import torch

            for v in model.trainable_variables:
                v.value.grad = None
            loss = loss_fn(labels, model(inputs[variant], training=True))
            loss.backward()
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            return float(loss)

    if args.train and keras.config.backend() != "torch":
        raise SystemExit("--train is measured on PyTorch only")
    variants = list(inputs)
    for variant in variants:  # warm up
        call(variant)
    seconds = {v: [] for v in variants}
    for r in range(args.rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            start = time.perf_counter()
            for _ in range(args.steps):
                call(variant)
            seconds[variant].append((time.perf_counter() - start) / args.steps)
    results = {
        "backend": keras.config.backend(),
        "settings": vars(args),
        "seconds_per_call": seconds,
        "best": {v: min(s) for v, s in seconds.items()},
        "median": {v: statistics.median(s) for v, s in seconds.items()},
    }
    mode = "training step" if args.train else "inference"
    print(
        f"\n{results['backend']}, {mode}: batch {args.batch_size}, context "
        f"{args.context_length} tokens ({args.num_virtual_tokens} virtual), "
        f"choices of {args.choice_length}"
    )
    print("| variant | s/call (best) | s/call (median) | x one (best) |")
    print("|---|---|---|---|")
    for v in variants:
        print(
            f"| {v} | {results['best'][v]:.3f} | {results['median'][v]:.3f} "
            f"| {results['best'][v] / results['best']['one']:.2f} |"
        )
    if args.call_cost:
        results["backbone_call_seconds"] = backbone_call_cost(backbone, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def backbone_call_cost(backbone, args):
    """Seconds per inference call of the plain backbone on `batch-size`
    rows of 4, 16 and 64 tokens (best of `rounds` rounds of `steps`): what
    a call costs whatever its length, and what a token adds."""
    seconds = {}
    for length in (4, 16, 64):
        x = {
            "token_ids": np.ones((args.batch_size, length), "int32"),
            "padding_mask": np.ones((args.batch_size, length), "int32"),
        }
        backbone(x)
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.steps):
                backbone(x)
            rounds.append((time.perf_counter() - start) / args.steps)
        seconds[length] = min(rounds)
    print("| backbone call, tokens per row | s/call (best) |")
    print("|---|---|")
    for length, value in seconds.items():
        print(f"| {length} | {value:.3f} |")
    return seconds


if __name__ == "__main__":
    main()

"""Tokens/second of `PTuningCausalLM.generate` vs keras-hub's own `generate`.

Both models share one randomly initialised backbone and decode the same
prompts greedily to the same length with the KV cache; runs are interleaved
(alternating which goes first) so machine noise hits both alike. Reports the
ratio of the best rounds (the least disturbed by other load on a shared
machine) and the median of the per-round ratios.

    KERAS_BACKEND=jax python benchmarks/generate.py
    KERAS_BACKEND=torch python benchmarks/generate.py --rounds 3 --json out.json
"""

import argparse
import json
import platform
import statistics
import time

import keras
import keras_hub
import numpy as np
from keras import ops

import keras_ptuning

BACKBONES = {
    # GPT-2 small (124M parameters), randomly initialised.
    "gpt2_small": lambda: keras_hub.models.GPT2Backbone(
        vocabulary_size=50257,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
        max_sequence_length=1024,
    ),
    "tiny_llama": lambda: keras_hub.models.LlamaBackbone(
        vocabulary_size=8192,
        num_layers=4,
        num_query_heads=8,
        num_key_value_heads=2,
        hidden_dim=256,
        intermediate_dim=768,
    ),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=sorted(BACKBONES))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=80)
    parser.add_argument("--num-virtual-tokens", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None, help="write results here")
    return parser.parse_args()


def timed_generate(model, inputs):
    start = time.perf_counter()
    out = model.generate(inputs, stop_token_ids=None)
    ops.convert_to_numpy(out["token_ids"])  # wait for the device
    return time.perf_counter() - start


def bench(name, args):
    keras.utils.set_random_seed(0)
    backbone = BACKBONES[name]()
    ptuned = keras_ptuning.PTuningCausalLM(
        backbone,
        keras_ptuning.PromptEncoderConfig(args.num_virtual_tokens),
    )
    plain = ptuned.backbone.causal_lm_class(
        backbone=backbone, preprocessor=None
    )
    plain.compile(sampler="greedy")
    ptuned.compile(sampler="greedy")
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.max_length)
    token_ids = rng.integers(1, 1000, shape).astype("int32")
    padding_mask = np.arange(args.max_length)[None] < args.prompt_length
    padding_mask = np.broadcast_to(padding_mask, shape)
    inputs = {
        "token_ids": np.where(padding_mask, token_ids, 0),
        "padding_mask": padding_mask,
    }
    new_tokens = args.batch_size * (args.max_length - args.prompt_length)
    timed_generate(plain, inputs)  # compile
    timed_generate(ptuned, inputs)
    plain_tps, ptuned_tps = [], []
    for round_index in range(args.rounds):
        pair = [(plain, plain_tps), (ptuned, ptuned_tps)]
        for model, results in pair[:: 1 if round_index % 2 == 0 else -1]:
            results.append(new_tokens / timed_generate(model, inputs))
    ratios = [p / q for p, q in zip(ptuned_tps, plain_tps)]
    return {
        "model": name,
        "params": backbone.count_params(),
        "plain_tokens_per_s": max(plain_tps),
        "ptuned_tokens_per_s": max(ptuned_tps),
        "ratio_best": max(ptuned_tps) / max(plain_tps),
        "ratio_median": statistics.median(ratios),
        "rounds": {"plain": plain_tps, "ptuned": ptuned_tps},
    }


def main():
    args = parse_args()
    results = {
        "backend": keras.config.backend(),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "settings": vars(args),
        "results": [bench(name, args) for name in args.models],
    }
    print(
        "| backend | model | plain tok/s | p-tuned tok/s | ratio (best) "
        "| ratio (median of rounds) |"
    )
    for r in results["results"]:
        print(
            f"| {results['backend']} | {r['model']} | "
            f"{r['plain_tokens_per_s']:.1f} | {r['ptuned_tokens_per_s']:.1f} "
            f"| {r['ratio_best']:.3f} | {r['ratio_median']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""Tokens/second of `PTuningCausalLM.generate` vs keras-hub's own `generate`.

Both models share one randomly initialised backbone and decode the same
prompts greedily to the same length with the KV cache; runs are interleaved
(alternating which goes first) so machine noise hits both alike. Reports the
ratio of the best rounds (the least disturbed by other load on a shared
machine) and the median of the per-round ratios, and the first call's time
(tracing and compiling included).

A third run decodes the p-tuned model in one cache segment, as keras-hub
decodes (`keras_ptuning.backbones.cached_decoding.FIRST_SEGMENT_LENGTH =
None`): what the segmented cache adds.

`smollm2` is the real SmolLM2-135M (`keras_ptuning.presets`). With
`--peft`, PEFT + transformers' `generate` (PyTorch, whatever the Keras
backend; in the same process, interleaved) decodes the same prompts
greedily from the same weights with the same virtual tokens (our prompt
written as a PEFT adapter), and the generated tokens are compared with
ours.

    KERAS_BACKEND=jax python benchmarks/generate.py
    KERAS_BACKEND=torch python benchmarks/generate.py --rounds 3 --json out.json
    KERAS_BACKEND=torch python benchmarks/generate.py --models smollm2 \
        --peft --max-length 80 --batch-size 1
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
from keras_ptuning import presets
from keras_ptuning.backbones import cached_decoding

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
    # SmolLM2-135M-Instruct, pretrained (converted once, cached).
    "smollm2": lambda: keras_hub.models.Backbone.from_preset(
        presets.smollm2_preset_dir()
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
    parser.add_argument(
        "--peft",
        action="store_true",
        help="also time PEFT + transformers on PyTorch (smollm2)",
    )
    parser.add_argument("--json", default=None, help="write results here")
    return parser.parse_args()


SEGMENTED = cached_decoding.FIRST_SEGMENT_LENGTH


def timed_generate(model, inputs, first_segment_length=SEGMENTED):
    """Seconds for one greedy `generate`, and the generated ids."""
    if not isinstance(model, keras.Model):  # PEFT's, a callable
        start = time.perf_counter()
        out = model()
        return time.perf_counter() - start, out
    # Read when `generate` traces (JAX, TF) or runs (torch).
    cached_decoding.FIRST_SEGMENT_LENGTH = first_segment_length
    start = time.perf_counter()
    out = model.generate(inputs, stop_token_ids=None)
    out = ops.convert_to_numpy(out["token_ids"])  # waits for the device
    return time.perf_counter() - start, out


def peft_generate(ptuned, inputs, args):
    """PEFT + transformers decoding the same prompts greedily from the same
    weights and virtual tokens: `{run: callable returning the ids}`, with
    transformers' KV cache (`peft`) and without (`peft_no_cache`: with
    peft 0.21.2 and transformers 5.24 only this one decodes what PEFT's own
    forward pass predicts, token by token; the cached one is right for the
    first new token only, as in huggingface/peft#1391)."""
    import tempfile

    import peft
    import torch
    import transformers

    if ptuned.backbone.backbone.name != "llama3_backbone":
        raise ValueError("`--peft` needs `--models smollm2`.")
    directory = tempfile.mkdtemp()
    keras_ptuning.save_peft_adapter(ptuned, directory)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        presets.smollm2_preset_dir("transformers"), dtype=torch.float32
    ).eval()
    model = peft.PeftModel.from_pretrained(hf_model, directory).eval()
    token_ids = torch.as_tensor(inputs["token_ids"][:, : args.prompt_length])
    new_tokens = args.max_length - args.prompt_length

    def generate(use_cache):
        with torch.no_grad():
            out = model.generate(
                input_ids=token_ids.long(),
                attention_mask=torch.ones_like(token_ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=use_cache,
            )
        return out[:, -args.max_length :].numpy()

    return {
        "peft": lambda: generate(True),
        "peft_no_cache": lambda: generate(False),
    }


def bench(name, args):
    keras.utils.set_random_seed(0)
    backbone = BACKBONES[name]()
    ptuned = keras_ptuning.PTuningCausalLM(
        backbone,
        prompt_config=keras_ptuning.PromptEncoderConfig(
            args.num_virtual_tokens
        ),
    )
    one_segment = keras_ptuning.PTuningCausalLM(
        backbone,
        prompt_config=keras_ptuning.PromptEncoderConfig(
            args.num_virtual_tokens
        ),
    )
    one_segment.set_weights(ptuned.get_weights())
    plain = ptuned.backbone.causal_lm_class(
        backbone=backbone, preprocessor=None
    )
    runs = {
        "plain": (plain, SEGMENTED),
        "ptuned": (ptuned, SEGMENTED),
        "ptuned_one_segment": (one_segment, None),
    }
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.max_length)
    token_ids = rng.integers(100, 1000, shape).astype("int32")
    padding_mask = np.arange(args.max_length)[None] < args.prompt_length
    padding_mask = np.broadcast_to(padding_mask, shape)
    inputs = {
        "token_ids": np.where(padding_mask, token_ids, 0),
        "padding_mask": padding_mask,
    }
    if args.peft:
        for run, generate in peft_generate(ptuned, inputs, args).items():
            runs[run] = (generate, None)
    new_tokens = args.batch_size * (args.max_length - args.prompt_length)
    first_call_s = {}
    generated = {}
    for run, (model, segments) in runs.items():
        if isinstance(model, keras.Model):
            model.compile(sampler="greedy")
        first_call_s[run], generated[run] = timed_generate(
            model, inputs, segments
        )
    tokens_per_s = {run: [] for run in runs}
    for round_index in range(args.rounds):
        order = list(runs)[:: 1 if round_index % 2 == 0 else -1]
        for run in order:
            model, segments = runs[run]
            seconds, _ = timed_generate(model, inputs, segments)
            tokens_per_s[run].append(new_tokens / seconds)
    plain_tps = tokens_per_s["plain"]

    def ratios(run):
        per_round = [p / q for p, q in zip(tokens_per_s[run], plain_tps)]
        best = max(tokens_per_s[run]) / max(plain_tps)
        return best, statistics.median(per_round)

    result = {
        "model": name,
        "params": backbone.count_params(),
        "plain_tokens_per_s": max(plain_tps),
        "ptuned_tokens_per_s": max(tokens_per_s["ptuned"]),
        "first_call_s": first_call_s,
        "rounds": tokens_per_s,
    }
    for run in ("ptuned", "ptuned_one_segment"):
        result[f"{run}_ratio_best"], result[f"{run}_ratio_median"] = ratios(run)
    if args.peft:
        # Ours against PEFT's: best rounds, median of per-round ratios.
        peft_tps = tokens_per_s["peft"]
        result["peft_tokens_per_s"] = max(peft_tps)
        result["ptuned_vs_peft_best"] = max(tokens_per_s["ptuned"]) / max(
            peft_tps
        )
        result["ptuned_vs_peft_median"] = statistics.median(
            p / q for p, q in zip(tokens_per_s["ptuned"], peft_tps)
        )
        result["peft_no_cache_tokens_per_s"] = max(
            tokens_per_s["peft_no_cache"]
        )
        # Greedy tokens: how many new tokens each row shares with PEFT's
        # before the first difference.
        ours = generated["ptuned"][:, args.prompt_length :]
        result["new_tokens_per_row"] = ours.shape[1]
        for run in ("peft", "peft_no_cache"):
            theirs = generated[run][:, args.prompt_length :]
            same = np.cumprod(ours == theirs, axis=1).sum(axis=1)
            result[f"tokens_agreeing_with_{run}"] = same.tolist()
    return result


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
        "| ratio (median of rounds) | one segment: ratio (best / median) "
        "| first call s (plain / p-tuned / one segment) |"
    )
    for r in results["results"]:
        first = r["first_call_s"]
        print(
            f"| {results['backend']} | {r['model']} | "
            f"{r['plain_tokens_per_s']:.1f} | {r['ptuned_tokens_per_s']:.1f} "
            f"| {r['ptuned_ratio_best']:.3f} | {r['ptuned_ratio_median']:.3f} "
            f"| {r['ptuned_one_segment_ratio_best']:.3f} / "
            f"{r['ptuned_one_segment_ratio_median']:.3f} "
            f"| {first['plain']:.1f} / {first['ptuned']:.1f} / "
            f"{first['ptuned_one_segment']:.1f} |"
        )
        if "peft_tokens_per_s" in r:
            print(
                f"PEFT + transformers: {r['peft_tokens_per_s']:.1f} tok/s "
                f"({r['peft_no_cache_tokens_per_s']:.1f} without the cache); "
                f"p-tuned / PEFT {r['ptuned_vs_peft_best']:.3f} (best) "
                f"{r['ptuned_vs_peft_median']:.3f} (median). Greedy new "
                "tokens per row equal to PEFT's before the first difference, "
                f"of {r['new_tokens_per_row']}: cached "
                f"{r['tokens_agreeing_with_peft']}, without the cache "
                f"{r['tokens_agreeing_with_peft_no_cache']}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

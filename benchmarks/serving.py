"""Latency of the raw-text SavedModel signatures against the token-id ones.

Exports a p-tuned all-MiniLM-L6-v2 text classifier and a p-tuned
SmolLM2-135M causal LM with `include_preprocessing=True`, then serves them
in a process that imports TensorFlow and tensorflow_text only (what a
model server runs): `serving_default` (strings in, the preprocessor in the
graph) against `serve_token_ids` (ids made beforehand by the same
preprocessor) on SST-2 dev sentences, batches of 1 and 32, the two
interleaved round by round; the median and best of each are reported, and
their ratio. Also the `generate` signature's latency (greedy, batch 1) and
what `saved_model_cli show` prints for both exports.

    KERAS_BACKEND=tensorflow python benchmarks/serving.py --json serving.json
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import keras
import keras_hub
import numpy as np

import keras_ptuning
from keras_ptuning import presets
from keras_ptuning.datasets import load_sst2

# What a Python model server runs: TensorFlow and tensorflow_text's ops.
SERVER = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the tokenizers' ops)

config = json.loads(sys.argv[1])
results = {}
for name, case in config["models"].items():
    loaded = tf.saved_model.load(case["path"])
    text = loaded.signatures["serving_default"]
    ids = loaded.signatures["serve_token_ids"]
    for batch_size in config["batch_sizes"]:
        strings = tf.constant(case["sentences"][:batch_size])
        data = np.load(case["ids"])
        token_inputs = {k: tf.constant(data[k][:batch_size])
                        for k in data.files}
        runs = {"text": lambda: text(text=strings),
                "token_ids": lambda: ids(**token_inputs)}
        times = {k: [] for k in runs}
        for _ in range(3):  # warm-up
            for run in runs.values():
                run()
        for i in range(config["rounds"]):
            order = list(runs) if i % 2 == 0 else list(runs)[::-1]
            for key in order:
                start = time.perf_counter()
                for _ in range(config["calls"]):
                    runs[key]()
                times[key].append(
                    (time.perf_counter() - start) / config["calls"] * 1e3)
        results[f"{name}_b{batch_size}"] = {
            k: {"median_ms": float(np.median(v)), "best_ms": float(min(v))}
            for k, v in times.items()}
    if "generate" in loaded.signatures:
        generate = loaded.signatures["generate"]
        prompt = tf.constant(case["sentences"][:1])
        generate(prompts=prompt)
        times = []
        for _ in range(config["rounds"]):
            start = time.perf_counter()
            generate(prompts=prompt)
            times.append((time.perf_counter() - start) * 1e3)
        results[f"{name}_generate_b1"] = {
            "median_ms": float(np.median(times)), "best_ms": float(min(times))}
print(json.dumps(results))
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--generate-max-length", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--json", default=None)
    return parser.parse_args()


def _models(args):
    config = keras_ptuning.PromptEncoderConfig(args.virtual_tokens)
    minilm = presets.minilm_preset_dir()
    classifier = keras_ptuning.PTuningTextClassifier(
        keras_hub.models.BertBackbone.from_preset(minilm),
        2,
        prompt_config=config,
        preprocessor=keras_hub.models.TextClassifierPreprocessor.from_preset(
            minilm, sequence_length=args.sequence_length
        ),
    )
    smollm2 = presets.smollm2_preset_dir()
    causal_lm = keras_ptuning.PTuningCausalLM(
        keras_hub.models.Backbone.from_preset(smollm2),
        prompt_config=config,
        preprocessor=keras_hub.models.CausalLMPreprocessor.from_preset(
            smollm2, sequence_length=args.sequence_length
        ),
    )
    return {"minilm_classifier": classifier, "smollm2_causal_lm": causal_lm}


def main():
    args = parse_args()
    if keras.config.backend() != "tensorflow":
        sys.exit("Run with KERAS_BACKEND=tensorflow (the export's backend).")
    keras.utils.set_random_seed(0)
    sentences, _ = load_sst2("dev", args.data_dir, max_rows=32)
    batch_sizes = [1, 32]
    directory = args.output_dir or tempfile.mkdtemp(prefix="serving-")
    cases, shows = {}, {}
    for name, model in _models(args).items():
        path = os.path.join(directory, name)
        generate = isinstance(model, keras_ptuning.PTuningCausalLM)
        keras_ptuning.export_saved_model(
            model,
            path,
            overwrite=True,
            include_preprocessing=True,
            max_length=args.generate_max_length if generate else None,
        )
        x, _, _ = keras.utils.unpack_x_y_sample_weight(
            model.preprocessor(sentences)
        )
        ids_file = os.path.join(directory, f"{name}_ids.npz")
        np.savez(
            ids_file,
            **{k: np.asarray(v).astype("int32") for k, v in x.items()},
        )
        cases[name] = {"path": path, "ids": ids_file, "sentences": sentences}
        shows[name] = subprocess.run(
            ["saved_model_cli", "show", "--dir", path, "--all"],
            capture_output=True,
            text=True,
        ).stdout
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    config = {
        "models": cases,
        "batch_sizes": batch_sizes,
        "rounds": args.rounds,
        "calls": args.calls,
    }
    result = subprocess.run(
        [sys.executable, "-c", SERVER, json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        sys.exit(result.stderr[-3000:])
    latency = json.loads(result.stdout.strip().splitlines()[-1])
    for key, row in latency.items():
        if "text" in row:
            ratio = row["text"]["median_ms"] / row["token_ids"]["median_ms"]
            row["text_over_token_ids_median"] = ratio
            print(
                f"{key}: text {row['text']['median_ms']:.1f} ms, token ids "
                f"{row['token_ids']['median_ms']:.1f} ms (median), "
                f"ratio {ratio:.3f}"
            )
        else:
            print(f"{key}: {row['median_ms']:.1f} ms (median)")
    for name, text in shows.items():
        print(f"=== saved_model_cli show --dir {name} --all\n{text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "machine": platform.platform(),
                    "cpus": os.cpu_count(),
                    "latency": latency,
                    "saved_model_cli": shows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()

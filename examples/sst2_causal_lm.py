"""P-tuning a frozen decoder on GLUE SST-2 as next-token prediction.

Each sentence becomes `"Review: {sentence}\\nSentiment:"` and the model
predicts the label word (`" positive"` or `" negative"`, one token each) as
the next token; the loss counts that position only: cross-entropy over the
two label words' logits (`--loss label_words`, default) or over the whole
vocabulary (`--loss vocabulary`). The frozen model with the same text
prompt and no virtual tokens is scored first ("before"), then only the
prompt encoder trains ("after"). By default (`--prompt-init text`) the
template's own words are the virtual tokens, started exactly at their
embeddings (`PromptEncoderConfig(prompt_init="text")`), so training starts
from the text prompt's predictions; `--prompt-init random` prepends
`--num-virtual-tokens` randomly initialised ones (PEFT's way: noise in
front of a prompt that already works).
Accuracy compares the two label words' logits at the label position. Greedy
samples from `generate()` show what each model writes after a few dev
prompts. Runs on any Keras backend (`KERAS_BACKEND`).

`--model smollm2` (default: SmolLM2-135M-Instruct) and `--model gemma3`
(Gemma 3 270M) are the offline presets of `keras_ptuning.presets`;
`--preset` takes any keras-hub causal-LM preset instead (e.g.
`hf://HuggingFaceTB/SmolLM2-135M` where online).

Writes to `--output-dir`: `adapter.adapter.h5` (the prompt, with its
encoder), `results.json` and `sst2_causal_lm.png`.

    python examples/sst2_causal_lm.py
    python examples/sst2_causal_lm.py --model gemma3 --train-rows 256
"""

import argparse
import json
import os
import time

# keras_ptuning first: it loads TensorFlow without its start-up noise.
import keras_ptuning

# isort: split

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_ptuning import presets
from keras_ptuning.datasets import load_sst2

TEMPLATE = ("Review:", "\nSentiment:")
PLACEHOLDER = keras_ptuning.DEFAULT_PLACEHOLDER_ID
LABEL_WORDS = (" negative", " positive")
MODELS = {
    "smollm2": presets.smollm2_preset_dir,
    "gemma3": presets.gemma3_preset_dir,
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument(
        "--preset",
        default=None,
        help="any keras-hub causal-LM preset name or directory (overrides "
        "--model)",
    )
    parser.add_argument("--data-dir", default=None, help="SST-2 directory")
    parser.add_argument("--train-rows", type=int, default=512)
    parser.add_argument("--dev-rows", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument(
        "--prompt-init",
        choices=("text", "random"),
        default="text",
        help="text: the template's words are the virtual tokens, started "
        "at their embeddings; random: --num-virtual-tokens prepended",
    )
    parser.add_argument(
        "--num-virtual-tokens",
        type=int,
        default=20,
        help="with --prompt-init random",
    )
    parser.add_argument("--encoder", choices=("MLP", "LSTM"), default="MLP")
    parser.add_argument(
        "--loss",
        choices=("label_words", "vocabulary"),
        default="label_words",
        help="label_words: cross-entropy over the two label words' logits "
        "(the decision accuracy reads); vocabulary: over the whole "
        "vocabulary at the label position",
    )
    parser.add_argument(
        "--max-sentence-tokens",
        type=int,
        default=48,
        help="longer sentences are cut to their first tokens",
    )
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/sst2_causal_lm")
    return parser.parse_args()


def text_ids(tokenizer, text):
    """`text`'s token ids, as a list of ints."""
    return [int(i) for i in keras.ops.convert_to_numpy(tokenizer(text))]


def right_padded(rows, length, pad):
    """`token_ids` and `padding_mask` of `rows` (lists of ids), each padded
    on the right to `length`."""
    token_ids = np.full((len(rows), length), pad, "int32")
    padding_mask = np.zeros((len(rows), length), "int32")
    for i, row in enumerate(rows):
        token_ids[i, : len(row)] = row
        padding_mask[i, : len(row)] = 1
    return token_ids, padding_mask


def label_token_ids(tokenizer):
    """The label words' token ids; each must be one token."""
    ids = []
    for word in LABEL_WORDS:
        word_ids = text_ids(tokenizer, word)
        if len(word_ids) != 1:
            raise ValueError(
                f"The label word {word!r} is {len(word_ids)} tokens for this "
                f"tokenizer ({word_ids}); the example needs one token each."
            )
        ids.append(word_ids[0])
    return ids


def template_ids(tokenizer):
    """The template's words, `(prefix, suffix)`: lists of ids."""
    return tuple(text_ids(tokenizer, text) for text in TEMPLATE)


def prompt_ids(preprocessor, sentence, max_sentence_tokens, slots=False):
    """`[start] Review: <sentence cut to its first tokens> \\nSentiment:`.

    With `slots`, the template's words are written as placeholders (-1):
    the virtual tokens that start from them.
    """
    tokenizer = preprocessor.tokenizer
    start = [tokenizer.start_token_id] if preprocessor.add_start_token else []
    sentence = text_ids(tokenizer, " " + sentence)[:max_sentence_tokens]
    prefix, suffix = template_ids(tokenizer)
    if slots:
        prefix, suffix = (
            [PLACEHOLDER] * len(prefix),
            [PLACEHOLDER] * len(suffix),
        )
    return start + prefix + sentence + suffix


def encode(preprocessor, sentences, labels, label_ids, args, slots=False):
    """Right-padded `token_ids` (prompt, then the label word), targets and
    a sample weight that is 1 only where the label word is predicted.

    Returns `(x, y, sample_weight, positions)`: `positions` are where the
    next-token logits score the label (the prompt's last token).
    """
    prompts = [
        prompt_ids(preprocessor, s, args.max_sentence_tokens, slots)
        for s in sentences
    ]
    rows = [prompt + [label_ids[y]] for prompt, y in zip(prompts, labels)]
    token_ids, padding_mask = right_padded(
        rows,
        max(map(len, rows)),
        preprocessor.tokenizer.pad_token_id or 0,
    )
    positions = np.array([len(prompt) - 1 for prompt in prompts], "int32")
    y = np.roll(token_ids, -1, axis=1)
    y[y < 0] = 0  # Targets before slots carry no weight; keep them ids.
    sample_weight = np.zeros(token_ids.shape, "float32")
    sample_weight[np.arange(len(prompts)), positions] = 1.0
    x = {"token_ids": token_ids, "padding_mask": padding_mask}
    return x, y, sample_weight, positions


def label_word_loss(label_ids):
    """Cross-entropy over the label words' logits only, at every position
    (the sample weight keeps the label position): what the accuracy reads.
    The whole-vocabulary loss also rewards making both label words likelier
    than other tokens, which does not separate them."""
    ids = np.asarray(label_ids, "int32")

    def loss(y_true, y_pred):
        scores = ops.take(y_pred, ids, axis=-1)
        is_label = ops.equal(
            ops.expand_dims(ops.cast(y_true, "int32"), -1), ids
        )
        target = ops.argmax(ops.cast(is_label, "int32"), axis=-1)
        return keras.losses.sparse_categorical_crossentropy(
            target, scores, from_logits=True
        )

    return loss


def label_scorer(backbone, label_ids):
    """A model from `token_ids`, `padding_mask` and `label_position` to the
    two label words' logits at that position (not the whole vocabulary at
    every position)."""
    inputs = {
        "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
        "padding_mask": keras.Input(
            (None,), dtype="int32", name="padding_mask"
        ),
    }
    position = keras.Input((), dtype="int32", name="label_position")
    hidden = backbone(inputs)
    index = ops.expand_dims(ops.expand_dims(position, -1), -1)
    at_label = ops.take_along_axis(hidden, index, axis=1)[:, 0]
    logits = backbone.token_embedding(at_label, reverse=True)
    scores = ops.take(logits, np.array(label_ids), axis=-1)
    return keras.Model({**inputs, "label_position": position}, scores)


def accuracy(scorer, x, positions, labels, batch_size):
    scores = scorer.predict(
        {**x, "label_position": positions}, batch_size=batch_size, verbose=0
    )
    return float(np.mean(scores.argmax(-1) == np.asarray(labels)))


def greedy_samples(
    causal_lm, preprocessor, sentences, args, new_tokens=6, slots=False
):
    """What `causal_lm.generate` writes after each prompt (greedy)."""
    prompts = [
        prompt_ids(preprocessor, s, args.max_sentence_tokens, slots)
        for s in sentences
    ]
    token_ids, padding_mask = right_padded(
        prompts, max(map(len, prompts)) + new_tokens, pad=0
    )
    causal_lm.compile(sampler="greedy")
    # Rows with shorter prompts run on to the batch's end; each is cut to
    # `new_tokens` tokens.
    output = causal_lm.generate(
        {"token_ids": token_ids, "padding_mask": padding_mask},
        stop_token_ids=None,
    )["token_ids"]
    detokenize = preprocessor.tokenizer.detokenize
    return [
        detokenize(np.asarray(output[i, len(p) : len(p) + new_tokens]).tolist())
        for i, p in enumerate(prompts)
    ]


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, bar_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss = results["history"]["loss"]
    loss_axis.plot(np.arange(1, len(loss) + 1), loss, marker="o")
    # Keras divides the weighted sum by every position, not by the labels.
    loss_axis.set(title="train loss (label token only)", xlabel="epoch")
    loss_axis.xaxis.get_major_locator().set_params(integer=True)
    names = ["before (text prompt)", "after (p-tuned)"]
    values = [results["dev_accuracy_before"], results["dev_accuracy_after"]]
    bar_axis.bar(names, values, color=["tab:gray", "tab:blue"])
    bar_axis.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    bar_axis.set(title=f"SST-2 dev accuracy ({results['model']})", ylim=(0, 1))
    for i, value in enumerate(values):
        bar_axis.text(i, value + 0.02, f"{value:.3f}", ha="center")
    for axis in (loss_axis, bar_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    preset = args.preset or MODELS[args.model]()
    causal_lm = keras_hub.models.CausalLM.from_preset(preset)
    preprocessor = causal_lm.preprocessor
    label_ids = label_token_ids(preprocessor.tokenizer)
    train_x, train_y = load_sst2("train", args.data_dir, args.train_rows)
    dev_x, dev_y = load_sst2("dev", args.data_dir, args.dev_rows)
    print(
        f"backend={keras.config.backend()} preset={preset} "
        f"train={len(train_x)} dev={len(dev_x)} label ids={label_ids}"
    )
    slots = args.prompt_init == "text"
    x, y, sample_weight, _ = encode(
        preprocessor, train_x, train_y, label_ids, args, slots
    )
    dev, _, _, dev_positions = encode(
        preprocessor, dev_x, dev_y, label_ids, args
    )
    ptuned_dev, _, _, _ = encode(
        preprocessor, dev_x, dev_y, label_ids, args, slots
    )
    samples = dev_x[: args.samples]

    before = accuracy(
        label_scorer(causal_lm.backbone, label_ids),
        dev,
        dev_positions,
        dev_y,
        args.batch_size,
    )
    # Token ids in and out: the same model without its preprocessor.
    plain = type(causal_lm)(backbone=causal_lm.backbone, preprocessor=None)
    samples_before = greedy_samples(plain, preprocessor, samples, args)
    print(f"dev accuracy before (text prompt only): {before:.4f}")

    prefix, suffix = template_ids(preprocessor.tokenizer)
    config = keras_ptuning.PromptEncoderConfig(
        num_virtual_tokens=len(prefix + suffix)
        if slots
        else args.num_virtual_tokens,
        encoder_reparameterization_type=args.encoder,
        prompt_init=args.prompt_init,
    )
    model = keras_ptuning.PTuningCausalLM(
        causal_lm.backbone,
        prompt_config=config,
        placeholder_id=PLACEHOLDER if slots else None,
    )
    text_start = None
    if slots:
        model.backbone.init_prompt_from_token_ids(prefix + suffix)
        text_start = accuracy(
            label_scorer(model.backbone, label_ids),
            ptuned_dev,
            dev_positions,
            dev_y,
            args.batch_size,
        )
        # The text start is the text prompt: the same predictions.
        print(f"dev accuracy at the text start (untrained): {text_start:.4f}")
    loss = "auto" if args.loss == "vocabulary" else label_word_loss(label_ids)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss
    )
    start = time.time()
    history = model.fit(
        x,
        y,
        sample_weight=sample_weight,
        epochs=args.epochs,
        batch_size=args.batch_size,
        shuffle=True,
        verbose=2,
    )
    fit_seconds = time.time() - start
    after = accuracy(
        label_scorer(model.backbone, label_ids),
        ptuned_dev,
        dev_positions,
        dev_y,
        args.batch_size,
    )
    samples_after = greedy_samples(
        model, preprocessor, samples, args, slots=slots
    )
    print(f"dev accuracy after p-tuning: {after:.4f} (fit {fit_seconds:.0f} s)")
    for sentence, old, new in zip(samples, samples_before, samples_after):
        print(f"{sentence[:60]!r}\n  before: {old!r}\n  after:  {new!r}")

    results = {
        "backend": keras.config.backend(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "args": vars(args),
        "model": args.preset or args.model,
        "label_words": list(LABEL_WORDS),
        "label_ids": label_ids,
        "dev_accuracy_before": before,
        "dev_accuracy_text_start": text_start,
        "dev_accuracy_after": after,
        "fit_seconds": fit_seconds,
        "trainable_params": sum(
            int(np.prod(v.shape)) for v in model.trainable_variables
        ),
        "history": history.history,
        "samples": [
            {"sentence": s, "before": b, "after": a}
            for s, b, a in zip(samples, samples_before, samples_after)
        ],
    }
    os.makedirs(args.output_dir, exist_ok=True)
    model.save_adapter(
        os.path.join(args.output_dir, "adapter.adapter.h5"),
        include_encoder=True,
    )
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    plot(results, os.path.join(args.output_dir, "sst2_causal_lm.png"))
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    main()

"""SuperGLUE with a frozen causal LM: P-tuning against what else a user
would try, on the same backbone, template, choices, data and evaluation.

Each task is a `keras_ptuning.PTuningCausalLMClassifier`: a PET-style
template reads the example and every class is a choice scored by its
mean log-probability after the prompt (label words such as `" yes"`;
COPA's two alternatives as continuations). The templates' anchors are
`[P:"text"]` slots, so the p-tuned prompt starts exactly at the manual
prompt (`zero_shot`) and trains from there. WSC, whose FewGLUE training
set holds only True examples, is read as PET reads it: the candidate noun
is the one choice, its likelihood as the pronoun's referent is the score,
training raises the likelihood of the true referents, and an example is
True above a threshold picked on dev32 (each system's own; the probe,
which needs both labels to train, is skipped there). Systems:

- `majority`: the training set's most frequent label;
- `zero_shot`: the manual prompt, frozen model, no training;
- `in_context`: one demonstration per label from the training set (with
  its answer) before the manual prompt, as GPT-3 does (COPA: 2);
- `probe`: a linear head on the frozen model's last-token features of the
  manual prompt (COPA: of each alternative's row), trained with Adam;
- `ptuning` (MLP encoder), `ptuning_lstm` (LSTM encoder);
- `lora`: keras-hub's `backbone.enable_lora(rank)` on the manual prompt;
- `ptuning_lora`: both.

Few-shot (`--setting few-shot`): FewGLUE's 32 training examples;
`dev32.jsonl` picks the epoch (the untrained start counts as epoch 0) and
`val.jsonl` (SuperGLUE dev) is only scored. Supervised (`--setting full`,
CB/COPA/RTE): `train_full.jsonl` less a held-out tenth that picks the
epoch. Results are seed means (`--seeds`; FewGLUE's variance is large)
with standard deviations, in `results.json` (written after every run; a
rerun with the same `--output-dir` skips what is done, and refuses other
training arguments than the runs there) and `superglue.png`.

    python examples/superglue_ptuning.py                      # SmolLM2, COPA
    python examples/superglue_ptuning.py --model gemma3 --tasks all
    python examples/superglue_ptuning.py --setting full --tasks CB,COPA,RTE

Batches are cut to their longest row, so the PyTorch backend (no
recompilation per shape) is the fastest on CPU.
"""

import argparse
import collections
import json
import os
import sys
import time

# keras_ptuning first: it loads TensorFlow without its start-up noise.
import keras_ptuning

# isort: split

import keras
import keras_hub
import numpy as np

from keras_ptuning import presets
from keras_ptuning.datasets import load_superglue

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resumable  # noqa: E402

MODELS = {
    "smollm2": presets.smollm2_preset_dir,
    "gemma3": presets.gemma3_preset_dir,
}
SYSTEMS = (
    "majority",
    "zero_shot",
    "in_context",
    "probe",
    "ptuning",
    "ptuning_lstm",
    "lora",
    "ptuning_lora",
)
TRAINED = ("ptuning", "ptuning_lstm", "lora", "ptuning_lora")
# What can pick a trained system's epoch on the selection split
# (`pick_epoch`).
SELECTION_CRITERIA = ("accuracy", "loss", "loss_window")
# The default is the cheapest task, COPA (the shortest texts): all eight
# systems over seed 0 took 707 s with SmolLM2 on PyTorch on an idle 2-core
# CPU, each further seed 685 s, so the default three seeds take about 35
# minutes (45 on a slower day of the same shared machine).
DEFAULT_TASKS = ("COPA",)
FULL_TASKS = ("CB", "COPA", "RTE")


def _sentence(text):
    return text.strip().rstrip(".")


def _lower_first(text):
    text = text.strip()
    return text[:1].lower() + text[1:]


# Per task: the template (anchors as text slots), the choices (one per
# label, in label order), the labels, and the fields of a raw example.
TASKS = {
    "BoolQ": dict(
        template='{passage} [P:"Question:"] {question}? [P:"Answer:"]',
        choices=[" no", " yes"],
        labels=[False, True],
        fields=lambda e: {"passage": e["passage"], "question": e["question"]},
        sequence_length=320,
    ),
    "CB": dict(
        template='{premise} [P:"Question:"] {hypothesis} '
        '[P:"True, False or Neither? Answer:"]',
        choices=[" True", " False", " Neither"],
        labels=["entailment", "contradiction", "neutral"],
        fields=lambda e: {
            "premise": e["premise"],
            "hypothesis": e["hypothesis"],
        },
        sequence_length=256,
    ),
    "COPA": dict(
        template='[P:"Pick the more likely continuation."] {premise} '
        "{connector}",
        choices=[" {choice1}", " {choice2}"],
        labels=[0, 1],
        fields=lambda e: {
            "premise": _sentence(e["premise"]),
            "connector": "because" if e["question"] == "cause" else "so",
            "choice1": _lower_first(e["choice1"]),
            "choice2": _lower_first(e["choice2"]),
        },
        sequence_length=48,
    ),
    "RTE": dict(
        template='{premise} [P:"Question:"] {hypothesis} '
        '[P:"True or False? Answer:"]',
        choices=[" True", " False"],
        labels=["entailment", "not_entailment"],
        fields=lambda e: {
            "premise": e["premise"],
            "hypothesis": e["hypothesis"],
        },
        sequence_length=256,
    ),
    "WiC": dict(
        template='{sentence1} {sentence2} [P:"Question: Is the word"] '
        '{word} [P:"used with the same meaning in both sentences? Answer:"]',
        choices=[" no", " yes"],
        labels=[False, True],
        fields=lambda e: {
            "sentence1": e["sentence1"],
            "sentence2": e["sentence2"],
            "word": e["word"],
        },
        sequence_length=96,
    ),
    # FewGLUE's WSC training set holds positives only (32 True, no False),
    # so a yes/no verbalizer cannot learn from it. As PET does, the model
    # is trained to produce the referent: the candidate noun is the one
    # choice, scored by its likelihood as the answer, and an example is
    # True where that score clears a threshold picked on dev32.
    "WSC": dict(
        template='{text} [P:"Question: In the passage above, who or what '
        'does the pronoun"] {pronoun} [P:"refer to? Answer:"]',
        choices=[" {noun}"],
        labels=[False, True],
        decision="threshold",
        fields=lambda e: {
            "text": e["text"],
            "pronoun": e["target"]["span2_text"],
            "noun": e["target"]["span1_text"],
        },
        sequence_length=128,
    ),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--preset", default=None, help="overrides --model")
    parser.add_argument(
        "--tasks",
        default=",".join(DEFAULT_TASKS),
        help=f"comma-separated, or 'all' ({','.join(TASKS)})",
    )
    parser.add_argument(
        "--setting", choices=("few-shot", "full"), default="few-shot"
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--seeds", default=None, help="default: 0,1,2 few-shot, 0 full"
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--output-dir", default="runs/superglue")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--lora-learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--encoder-hidden-size", type=int, default=128)
    parser.add_argument(
        "--val-rows",
        type=int,
        default=None,
        help="score only the first rows of val.jsonl (quick runs; the "
        "results record it)",
    )
    parser.add_argument(
        "--max-train-rows",
        type=int,
        default=None,
        help="cap the supervised training set (full setting)",
    )
    parser.add_argument(
        "--frozen-prefix-cache-mib",
        type=int,
        default=4096,
        help="memory for keeping each training example's frozen prefix "
        "across epochs (PyTorch; 0: run it every step, still without a "
        "backward pass)",
    )
    parser.add_argument(
        "--select-by",
        choices=SELECTION_CRITERIA,
        default="accuracy",
        help="what picks the epoch on the selection split: its accuracy, "
        "its cross-entropy over the choices (smoother on 32 examples), or "
        "that cross-entropy averaged with the neighbouring epochs' "
        "(loss_window); thresholded tasks always use accuracy. Every "
        "criterion is followed in the same run and recorded "
        "(`by_selection`); this one is reported",
    )
    parser.add_argument(
        "--score-only-selected",
        action="store_true",
        help="score val.jsonl only at the epoch --select-by picks: the "
        "other criteria's epochs are recorded without their val accuracy "
        "(saves up to two passes over a long val set, such as BoolQ's)",
    )
    parser.add_argument(
        "--val-history",
        action="store_true",
        help="also score val.jsonl after every epoch of the trained "
        "systems and record it (`val_history`), to see whether training "
        "or the selection lost; never used to pick anything",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="replace the runs in --output-dir (by default a rerun resumes "
        "them, and refuses other training arguments)",
    )
    args = parser.parse_args(argv)
    args.tasks = list(TASKS) if args.tasks == "all" else args.tasks.split(",")
    for task in args.tasks:
        if task not in TASKS:
            parser.error(f"unknown task {task!r}; choose from {list(TASKS)}")
        if args.setting == "full" and task not in FULL_TASKS:
            parser.error(f"--setting full has training sets for {FULL_TASKS}")
    args.systems = args.systems.split(",")
    for system in args.systems:
        if system not in SYSTEMS:
            parser.error(f"unknown system {system!r}; choose from {SYSTEMS}")
    if args.seeds is None:
        args.seeds = "0,1,2" if args.setting == "few-shot" else "0"
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


# === Data ===


def task_data(task, args):
    """`{split: (fields, labels)}` for train, select (picks the epoch) and
    val: fields a dict of lists of strings, labels int class indices."""
    spec = TASKS[task]

    def read(split, rows=None):
        examples = load_superglue(task, split, args.data_dir)[:rows]
        fields = collections.defaultdict(list)
        for example in examples:
            for name, value in spec["fields"](example).items():
                fields[name].append(value)
        labels = [spec["labels"].index(e["label"]) for e in examples]
        return dict(fields), np.asarray(labels, "int32")

    if args.setting == "few-shot":
        train, select = read("train"), read("dev32")
    else:
        # train_full holds dev32 too: a held-out tenth picks the epoch.
        fields, labels = read("train_full", args.max_train_rows)
        order = np.random.default_rng(0).permutation(len(labels))
        cut = max(len(labels) // 10, 16)

        def take(index):
            return (
                {k: [v[i] for i in index] for k, v in fields.items()},
                labels[index],
            )

        train, select = take(order[cut:]), take(order[:cut])
    return {"train": train, "select": select, "val": read("val", args.val_rows)}


class ChoiceBatches(keras.utils.PyDataset):
    """Batches of a ChoiceTemplate's output, each cut to its longest row.

    Rows are taken in length order for scoring (`shuffle=False`) or in a
    fresh random order every epoch for training.
    """

    def __init__(self, x, y=None, batch_size=8, shuffle=False, seed=0):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.lengths = x["padding_mask"].sum(-1).max(-1)
        self.order = np.argsort(-self.lengths, kind="stable")
        if shuffle:
            self.order = self.rng.permutation(len(self.lengths))

    def __len__(self):
        return -(-len(self.lengths) // self.batch_size)

    def on_epoch_end(self):
        if self.shuffle:
            self.order = self.rng.permutation(len(self.lengths))

    def __getitem__(self, index):
        rows = self.order[
            index * self.batch_size : (index + 1) * self.batch_size
        ]
        full = self.x["token_ids"].shape[-1]
        length = int(self.lengths[rows].max())
        batch = {
            k: self.x[k][rows][..., :length]
            for k in ("token_ids", "padding_mask")
        }
        positions = self.x["choice_positions"][rows]
        batch["choice_positions"] = (
            positions // full * length + positions % full
        ).astype("int32")
        batch["choice_ids"] = self.x["choice_ids"][rows]
        batch["choice_mask"] = self.x["choice_mask"][rows]
        if self.y is None:
            return (batch,)
        return batch, self.y[rows]


def predict_scores(model, x, batch_size):
    batches = ChoiceBatches(x, batch_size=batch_size)
    scores = keras.Model.predict(model, batches, verbose=0)
    out = np.empty_like(scores)
    out[batches.order] = scores
    return out


def best_threshold(scores, labels):
    """The score above which an example is called True that is most
    accurate on `(scores, labels)`. The candidate cuts are the midpoints
    between neighbouring distinct scores, and one below the lowest and one
    above the highest score (everything True, everything False). Where
    several cuts tie, the middle one of them in score order is taken (of
    an even number, the upper middle one), whatever the widths of their
    intervals."""
    values = np.unique(scores)  # Sorted.
    cuts = np.concatenate(
        [[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]]
    )
    accuracy = [np.mean((scores >= c) == (labels == 1)) for c in cuts]
    best = np.flatnonzero(np.isclose(accuracy, max(accuracy)))
    return float(cuts[best[len(best) // 2]])


def referent_loss(y_true, scores):
    """Negative log-likelihood of the one choice for True examples (the
    referent as the answer); False examples add nothing."""
    positive = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "float32")
    return -positive * scores[:, 0]


def metrics(predictions, labels, num_classes):
    accuracy = float(np.mean(predictions == labels))
    f1s = []
    for c in range(num_classes):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return {"accuracy": accuracy, "f1": float(np.mean(f1s))}


# === Systems ===


class Runner:
    """Builds each system's model for one task on fresh or shared
    backbones, and scores it on the task's data."""

    def __init__(self, args, preset, task, data, tokenizer):
        self.args, self.preset, self.task, self.data = args, preset, task, data
        spec = TASKS[task]
        self.spec = spec
        self.template = keras_ptuning.PromptTemplate(
            spec["template"],
            tokenizer,
            sequence_length=spec["sequence_length"],
            add_end_token=False,
        )
        self.text_template = self.template.as_text_prompt()
        self.num_classes = len(spec["labels"])
        # One choice scored against a threshold picked on the selection
        # split (WSC), instead of the best of one choice per class.
        self.thresholded = spec.get("decision") == "threshold"
        self._inputs = {}

    def backbone(self):
        return keras_hub.models.Backbone.from_preset(self.preset)

    def choices(self, template):
        return keras_ptuning.ChoiceTemplate(template, self.spec["choices"])

    def inputs(self, key, choices, split):
        """The ChoiceTemplate's output for a split, cached by `key`."""
        if (key, split) not in self._inputs:
            fields, labels = self.data[split]
            self._inputs[(key, split)] = (choices(fields), labels)
        return self._inputs[(key, split)]

    def scores(self, model, key, choices, split):
        x, _ = self.inputs(key, choices, split)
        return predict_scores(model, x, self.args.batch_size * 2)

    def score(self, model, key, choices, split, threshold=None):
        scores = self.scores(model, key, choices, split)
        return self.rate(scores, self.data[split][1], threshold)

    def rate(self, scores, labels, threshold=None):
        """Metrics of `(examples, choices)` scores: the best choice, or on a
        thresholded task the one choice's score against `threshold` (picked
        here on these labels when `None`: the selection split)."""
        if self.thresholded:
            if threshold is None:
                threshold = best_threshold(scores[:, 0], labels)
            predictions = (scores[:, 0] >= threshold).astype("int32")
        else:
            predictions = scores.argmax(-1)
        result = metrics(predictions, labels, self.num_classes)
        result["scores"] = scores
        if self.thresholded:
            result["threshold"] = threshold
        else:
            shifted = scores - scores.max(-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            result["loss"] = float(
                -np.take_along_axis(log_probs, labels[:, None], -1).mean()
            )
        return result

    def evaluate(self, scores_of):
        """The val metrics of `scores_of(split)`; a thresholded task picks
        its threshold on the selection split first."""
        threshold = None
        if self.thresholded:
            selected = self.rate(scores_of("select"), self.data["select"][1])
            threshold = selected["threshold"]
        return self.rate(scores_of("val"), self.data["val"][1], threshold)

    # --- no training ---

    def majority(self, seed):
        labels = self.data["train"][1]
        counts = np.bincount(labels, minlength=self.num_classes)
        val = self.data["val"][1]
        return metrics(
            np.full_like(val, counts.argmax()), val, self.num_classes
        )

    def zero_shot(self, seed, backbone):
        choices = self.choices(self.text_template)
        model = keras_ptuning.PTuningCausalLMClassifier(
            backbone, preprocessor=choices
        )
        return self.evaluate(
            lambda split: self.scores(model, "text", choices, split)
        )

    def demonstrations(self, seed):
        """One training example per label (COPA: two), shortest half first,
        written as the manual prompt followed by its answer."""
        fields, labels = self.data["train"]
        rng = np.random.default_rng(seed)
        picked = []
        # COPA: two; WSC: its positives only, two of them.
        per_label = 2 if self.task == "COPA" or self.thresholded else 1
        for c in range(self.num_classes):
            index = np.flatnonzero(labels == c)
            if not len(index):
                continue
            size = [sum(len(fields[k][i]) for k in fields) for i in index]
            shortest = index[np.argsort(size)[: max(len(index) // 2, 1)]]
            picked += list(rng.choice(shortest, per_label, replace=False))
        rng.shuffle(picked)
        texts = []
        for i in picked:
            row = {k: v[i] for k, v in fields.items()}
            prompt = _fill(self.text_template, row)
            choice = 0 if self.thresholded else labels[i]
            answer = self.spec["choices"][choice].format(**row)
            texts.append(prompt + answer)
        return "\n\n".join(texts)

    def in_context_template(self, demos):
        """The manual prompt after `demos` (anchor text, kept whole); the
        example's own fields are trimmed as the zero-shot template trims
        them (round robin, the same budget give or take 4 spare tokens),
        never the question after a long passage."""
        if "[P" in demos or "[MASK]" in demos or "{" in demos:
            raise ValueError(
                "The demonstrations are written into the template as anchor "
                "text and must not hold '[P', '[MASK]' or '{'. Received: "
                f"{demos[:200]!r}"
            )
        tokenizer = self.template.tokenizer
        demo_tokens = len(np.asarray(tokenizer(demos)).reshape(-1))
        template = keras_ptuning.PromptTemplate(
            demos + " " + self.spec["template"],
            tokenizer,
            sequence_length=self.spec["sequence_length"] + demo_tokens + 4,
            add_end_token=False,
            text_slots="text",
        )
        return template, demo_tokens

    def in_context(self, seed, backbone):
        template, demo_tokens = self.in_context_template(
            self.demonstrations(seed)
        )
        choices = self.choices(template)
        model = keras_ptuning.PTuningCausalLMClassifier(
            backbone, preprocessor=choices
        )

        def scores_of(split):
            fields, _ = self.data[split]
            return predict_scores(model, choices(fields), self.args.batch_size)

        result = self.evaluate(scores_of)
        result["demonstration_tokens"] = demo_tokens
        return result

    def probe(self, seed, backbone):
        """A linear head on the frozen model's features where each choice
        is scored: the prompt's last token (label words; one weight vector
        per class) or each alternative's last token (COPA; one shared
        weight vector, the scores soft-maxed over the alternatives)."""
        choices = self.choices(self.text_template)
        extractor = FeatureExtractor(backbone)
        features = {}
        for split in ("train", "select", "val"):
            x, labels = self.inputs("text", choices, split)
            features[split] = (
                extractor.features(x, self.args.batch_size * 2),
                labels,
            )
        shared = choices.shares_one_row
        mean = features["train"][0].mean((0, 1), keepdims=True)
        std = features["train"][0].std((0, 1), keepdims=True) + 1e-6
        keras.utils.set_random_seed(seed)
        width = features["train"][0].shape[-1]
        inputs = keras.Input((None, width))
        if shared:
            logits = keras.layers.Dense(self.num_classes)(inputs[:, 0])
        else:
            logits = keras.layers.Dense(1)(inputs)[..., 0]
        head = keras.Model(inputs, logits)
        head.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x_train = (features["train"][0] - mean) / std
        best, best_weights = -1.0, None
        for _ in range(40):
            head.fit(
                x_train,
                features["train"][1],
                epochs=10,
                verbose=0,
                batch_size=len(x_train),
            )
            x_select = (features["select"][0] - mean) / std
            accuracy = np.mean(
                head.predict(x_select, verbose=0).argmax(-1)
                == features["select"][1]
            )
            if accuracy > best:
                best, best_weights = accuracy, head.get_weights()
        head.set_weights(best_weights)
        x_val = (features["val"][0] - mean) / std
        predictions = head.predict(x_val, verbose=0).argmax(-1)
        return metrics(predictions, features["val"][1], self.num_classes)

    # --- trained ---

    def trained(self, system, seed, backbone):
        args = self.args
        keras.utils.set_random_seed(seed)
        uses_prompt = system != "lora"
        if uses_prompt:
            template = self.template
            config = template.prompt_config(
                encoder_reparameterization_type="LSTM"
                if system == "ptuning_lstm"
                else "MLP",
                encoder_hidden_size=args.encoder_hidden_size,
            )
            choices = self.choices(template)
            model = keras_ptuning.PTuningCausalLMClassifier(
                backbone, preprocessor=choices, prompt_config=config
            )
            key = "prompt"
        else:
            choices = self.choices(self.text_template)
            backbone.enable_lora(args.lora_rank)
            model = keras_ptuning.PTuningCausalLMClassifier(
                backbone, preprocessor=choices
            )
            key = "text"
        if system == "ptuning_lora":
            model.backbone.enable_lora(args.lora_rank)
        learning_rate = (
            args.lora_learning_rate if system == "lora" else args.learning_rate
        )
        if self.thresholded:
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate),
                loss=referent_loss,
                metrics=[],
            )
        else:
            model.compile(optimizer=keras.optimizers.Adam(learning_rate))
        trainable = sum(
            int(np.prod(v.shape)) for v in model.trainable_variables
        )
        x, y = self.inputs(key, choices, "train")
        train = ChoiceBatches(x, y, args.batch_size, shuffle=True, seed=seed)
        selected = self.score(model, key, choices, "select")
        # Every criterion is followed in the same run (the training is the
        # same; only the pick differs): `--select-by` names the one the
        # system reports, and the others are recorded beside it.
        criteria = ("accuracy",) if self.thresholded else SELECTION_CRITERIA
        primary = args.select_by if args.select_by in criteria else "accuracy"

        def snapshot():
            return [
                keras.ops.convert_to_numpy(v) for v in model.trainable_variables
            ]

        # The selection split's accuracy and loss after each epoch (the
        # start first), and each epoch's weights, for the picks below.
        history = [selected["accuracy"]]
        select_losses = [selected.get("loss")]
        snapshots = [(snapshot(), selected.get("threshold"))]
        score = self.score
        val_history = []

        def trace_val(selected):
            if args.val_history:
                threshold = selected.get("threshold")
                val = score(model, key, choices, "val", threshold)
                val_history.append(val["accuracy"])

        trace_val(selected)

        class SelectOnDev32(keras.callbacks.Callback):
            """Scores dev32 after each epoch, keeping the best weights."""

            def on_epoch_end(self, epoch, logs=None):
                selected = score(model, key, choices, "select")
                history.append(selected["accuracy"])
                select_losses.append(selected.get("loss"))
                snapshots.append((snapshot(), selected.get("threshold")))
                trace_val(selected)

        # The text before the first virtual token is computed once (its
        # keys and values kept for the later epochs) where it can be.
        cache_bytes = None
        if (
            args.frozen_prefix_cache_mib
            and keras.config.backend() == "torch"
            and getattr(model.backbone, "splits_frozen_prefix", False)
        ):
            cache_bytes = args.frozen_prefix_cache_mib * 2**20
        fit = model.fit(
            train,
            epochs=args.epochs,
            verbose=0,
            callbacks=[SelectOnDev32()],
            frozen_prefix_cache_bytes=cache_bytes,
        )
        losses = [float(loss) for loss in fit.history["loss"]]
        # Val is scored once per picked epoch (the criteria often agree).
        val_at, picked = {}, {}
        for criterion in criteria:
            epoch = pick_epoch(criterion, history, select_losses)
            if (
                args.score_only_selected
                and criterion != primary
                and epoch not in val_at
            ):
                # Recorded without a val score (no extra pass over val).
                picked[criterion] = {"best_epoch": epoch}
                continue
            if epoch not in val_at:
                weights, threshold = snapshots[epoch]
                for variable, value in zip(model.trainable_variables, weights):
                    variable.assign(value)
                val_at[epoch] = self.score(
                    model, key, choices, "val", threshold
                )
            val = val_at[epoch]
            picked[criterion] = {
                k: val[k] for k in ("accuracy", "f1") if k in val
            }
            picked[criterion]["best_epoch"] = epoch
        result = val_at[picked[primary]["best_epoch"]]
        result.update(
            trainable_params=trainable,
            select_history=history,
            loss_history=losses,
            best_epoch=picked[primary]["best_epoch"],
            select_by=primary,
            by_selection=picked,
        )
        if not self.thresholded:
            result["select_loss_history"] = select_losses
        if val_history:
            result["val_history"] = val_history
        return result


def pick_epoch(criterion, accuracies, losses):
    """The epoch `criterion` picks from the selection split's accuracy and
    loss after each epoch (index 0: the untrained start); the earliest of
    equals. `loss_window` averages each epoch's loss with its neighbours'
    (two at the ends): on 32 examples one epoch's score is noisy, and the
    best of 13 noisy scores is biased upwards."""
    if criterion == "accuracy":
        return int(np.argmax(accuracies))
    losses = np.asarray(losses, "float64")
    if criterion == "loss_window":
        losses = np.array(
            [losses[max(0, i - 1) : i + 2].mean() for i in range(len(losses))]
        )
    return int(np.argmin(losses))


def _fill(template, row):
    """The manual prompt's text for one example (the demonstrations)."""
    text = template.template
    for kind, value, _ in template._pieces:
        if kind == "text" and f'[P:"{value}"]' in text:
            text = text.replace(f'[P:"{value}"]', value)
    return text.format(**row)


class FeatureExtractor:
    """The frozen model's hidden states where each choice is scored."""

    def __init__(self, backbone):
        self.backbone = backbone

    def features(self, x, batch_size):
        batches = ChoiceBatches(x, batch_size=batch_size)
        out = []
        for i in range(len(batches)):
            batch = batches[i][0]
            ids = batch["token_ids"]
            b, r, length = ids.shape
            hidden = self.backbone.predict_on_batch(
                {
                    "token_ids": ids.reshape(b * r, length),
                    "padding_mask": batch["padding_mask"].reshape(
                        b * r, length
                    ),
                }
            )
            hidden = keras.ops.convert_to_numpy(hidden).reshape(
                b, r * length, -1
            )
            # Each choice's first scoring position: the prompt's last token
            # (label words), or each alternative's row's last prompt token
            # followed by its mean over the alternative (multiple choice).
            positions = batch["choice_positions"]
            mask = batch["choice_mask"].astype("float32")[..., None]
            gathered = np.take_along_axis(
                hidden[:, None], positions[..., None], axis=2
            )
            out.append((gathered * mask).sum(2) / mask.sum(2))
        features = np.concatenate(out)
        result = np.empty_like(features)
        result[batches.order] = features
        return result


# === Driver ===


# The arguments a finished run's numbers depend on, besides the model and
# the setting: a rerun into the same `--output-dir` must use the same.
RESULT_ARGS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "lora_learning_rate",
    "lora_rank",
    "encoder_hidden_size",
    "val_rows",
    "max_train_rows",
    "select_by",
)


def load_results(path, args, model_name):
    """The results so far in `path` (a rerun resumes them), or new ones.

    Raises `ValueError` where `path` holds runs made with another model,
    setting or any of `RESULT_ARGS`."""
    # The backend too: its kernels round differently, and on 32 examples
    # a rounding can flip an epoch's pick.
    settings = {
        "model": model_name,
        "setting": args.setting,
        "backend": keras.config.backend(),
    }
    settings.update({name: getattr(args, name) for name in RESULT_ARGS})
    results = resumable.load_results(path, settings, args.restart) or {
        "model": model_name,
        "setting": args.setting,
        "tasks": {},
        "runs": {},
    }
    results["settings"] = settings
    return results


def summarize(results):
    """Seed means, deviations and the macro average over tasks."""
    macro = collections.defaultdict(list)
    for task, runs in results["runs"].items():
        entry = results["tasks"].setdefault(task, {})
        entry["std"], entry["f1"], entry["seeds"] = {}, {}, {}
        for system, by_seed in runs.items():
            if system in ("examples", "skipped"):
                continue
            accuracies = [r["accuracy"] for r in by_seed.values()]
            entry[system] = float(np.mean(accuracies))
            entry["std"][system] = float(np.std(accuracies))
            entry["seeds"][system] = accuracies
            if task == "CB":
                entry["f1"][system] = float(
                    np.mean([r["f1"] for r in by_seed.values()])
                )
            picks = [
                r["by_selection"]
                for r in by_seed.values()
                if "by_selection" in r
            ]
            if picks and len(picks) == len(by_seed):
                # Runs before `loss_window` existed record two criteria.
                # `--score-only-selected` records some picks unscored.
                common = [
                    c
                    for c in picks[0]
                    if all("accuracy" in p.get(c, {}) for p in picks)
                ]
                entry.setdefault("by_selection", {})[system] = {
                    criterion: float(
                        np.mean([p[criterion]["accuracy"] for p in picks])
                    )
                    for criterion in common
                }
            params = [r.get("trainable_params") for r in by_seed.values()]
            if params[0] is not None:
                entry.setdefault("trainable_params", {})[system] = params[0]
            macro[system].append(entry[system])
        entry["examples"] = runs.get("examples")
        if "skipped" in runs:
            entry["skipped"] = runs["skipped"]
    tasks = list(results["runs"])
    results["macro"] = {
        system: float(np.mean(values))
        for system, values in macro.items()
        if len(values) == len(tasks)
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    systems = [
        s for s in SYSTEMS if any(s in results["tasks"][t] for t in tasks)
    ]
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(tasks) + 2), 4))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        values = [results["tasks"][t].get(system, np.nan) for t in tasks]
        errors = [results["tasks"][t]["std"].get(system, 0) for t in tasks]
        axis.bar(
            np.arange(len(tasks)) + (i - len(systems) / 2 + 0.5) * width,
            values,
            width,
            yerr=errors,
            label=system,
        )
    axis.set_xticks(np.arange(len(tasks)), tasks)
    axis.set(
        ylim=(0, 1),
        ylabel="val accuracy",
        title=f"SuperGLUE {results['setting']}, {results['model']}",
    )
    axis.legend(fontsize=7, ncol=2)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    model_name = args.preset or args.model
    path = os.path.join(args.output_dir, "results.json")
    results = load_results(path, args, model_name)
    preset = args.preset or MODELS[args.model]()
    os.makedirs(args.output_dir, exist_ok=True)
    results["args"] = {k: v for k, v in vars(args).items() if k != "restart"}
    results["backend"] = keras.config.backend()
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    shared = None
    for task in args.tasks:
        data = task_data(task, args)
        runner = Runner(args, preset, task, data, tokenizer)
        runs = results["runs"].setdefault(task, {})
        runs["examples"] = len(data["val"][1])
        print(
            f"== {task}: train {len(data['train'][1])}, select "
            f"{len(data['select'][1])}, val {len(data['val'][1])}, "
            f"{runner.template.num_virtual_tokens} virtual tokens",
            flush=True,
        )
        for system in args.systems:
            seeds = (
                args.seeds
                if system in TRAINED + ("in_context", "probe")
                else [0]
            )
            if system == "probe" and runner.thresholded:
                # A linear head needs both classes in its training set.
                reason = "the training set holds one label only"
                runs.setdefault("skipped", {})[system] = reason
                print(f"{task} {system}: skipped ({reason})", flush=True)
                continue
            for seed in seeds:
                done = runs.get(system, {})
                if str(seed) in done:
                    continue
                start = time.time()
                if system == "majority":
                    result = runner.majority(seed)
                elif system in ("lora", "ptuning_lora"):
                    result = runner.trained(system, seed, runner.backbone())
                else:
                    if shared is None:
                        shared = runner.backbone()
                    if system in TRAINED:
                        result = runner.trained(system, seed, shared)
                    else:
                        result = getattr(runner, system)(seed, shared)
                result.pop("scores", None)
                result["seconds"] = time.time() - start
                runs.setdefault(system, {})[str(seed)] = result
                print(
                    f"{task} {system} seed {seed}: accuracy "
                    f"{result['accuracy']:.3f} f1 {result['f1']:.3f} "
                    + "".join(
                        f"[by {c}: {p.get('accuracy', float('nan')):.3f}, "
                        f"epoch {p['best_epoch']}] "
                        for c, p in result.get("by_selection", {}).items()
                    )
                    + f"({result['seconds']:.0f} s)",
                    flush=True,
                )
                summarize(results)
                with open(path + ".tmp", "w") as f:
                    json.dump(results, f, indent=1, default=float)
                os.replace(path + ".tmp", path)
    summarize(results)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=float)
    plot(results, os.path.join(args.output_dir, "superglue.png"))
    print(json.dumps({"macro": results["macro"]}, indent=1))
    return results


if __name__ == "__main__":
    main()

"""LAMA knowledge probing of a frozen causal LM: manual prompt vs P-tuning.

The P-tuning paper's headline experiment ("GPT Understands, Too", Liu et
al. 2021, LAMA T-REx): for each relation, how often the frozen model's most
likely next token is the fact's object (P@1 on `dev.jsonl`), with

- `manual`: the relation's LAMA template up to `[MASK]` ("Dante was born
  in"), read by the frozen model as plain text;
- `majority`: always the relation's most common object among the training
  facts kept (a strong floor on LAMA);
- `ptuning`: a `keras_ptuning.PTuningNextTokenLM` per relation, template
  `"[P:k] {head} {subject} [P:k] {tail} [P:k]"` (virtual tokens before,
  around and after the subject; `head` and `tail` are the manual
  template's words before and after the subject, kept as anchors unless
  `--anchors none`), trained on the relation's training facts (loss on the
  object token only) with early stopping on a held-out slice of them.

Facts whose object is not one token for the model's tokenizer (read after
a space, as it follows the prompt) are dropped, and the counts kept are
reported per relation. `--multi-task` also trains one model for all the
relations (one prompt per relation in one multi-task prompt table, mixed
batches, one `.keras` file) and reports its P@1 beside the per-relation
models'. It trains as the per-relation models do, relation by relation:
an epoch repeats each relation's facts to `--min-epoch-facts`, each
relation's prompt keeps its own best epoch, and a mixed batch holds about
`--batch-size` facts of each relation (up to `MAX_MULTI_TASK_BATCH` in
all; past that Adam's learning rate is scaled down, see
`multi_task_schedule`), so each prompt takes about as many steps as alone.

`results.json` is written after every relation; a rerun with the same
`--output-dir` skips relations already done (`--restart` to redo them),
and refuses other training arguments than theirs.

    python examples/lama_ptuning.py                       # SmolLM2, subset
    python examples/lama_ptuning.py --model gemma3 --relations all
    python examples/lama_ptuning.py --relations P17,P19 --multi-task

`--model smollm2` (SmolLM2-135M-Instruct) and `--model gemma3` (Gemma 3
270M) are the offline presets of `keras_ptuning.presets`; `--preset` takes
any keras-hub causal-LM preset.
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
from keras_ptuning.datasets import load_lama
from keras_ptuning.layers.pooling import last_token_states
from keras_ptuning.preprocessing.vocabulary import word_token_ids

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resumable  # noqa: E402

MODELS = {
    "smollm2": presets.smollm2_preset_dir,
    "gemma3": presets.gemma3_preset_dir,
}
# The default subset: six relations of different kinds (countries,
# languages, companies, places, continents). With SmolLM2 on the 2-core CPU
# a relation took 2-4 min in the all-relations run (plus 2-3 min of
# compilation once), so about 20 minutes (measured: 19.5 min). `--relations
# all` runs the 41.
DEFAULT_RELATIONS = ["P17", "P30", "P37", "P103", "P176", "P1376"]
TEMPLATE = "[P:{k}] {{head}} {{subject}} [P:{k}] {{tail}} [P:{k}]"
# The largest default multi-task batch: 6 relations of 16 facts, measured
# with SmolLM2 on the 2-core, 23 GB machine.
MAX_MULTI_TASK_BATCH = 96
# The arguments a relation's numbers depend on, besides the model: a rerun
# into the same `--output-dir` must use the same.
RESULT_ARGS = (
    "encoder",
    "anchors",
    "slots",
    "epochs",
    "patience",
    "min_epoch_facts",
    "batch_size",
    "learning_rate",
    "validation_fraction",
    "seed",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    parser.add_argument(
        "--preset",
        default=None,
        help="any keras-hub causal-LM preset name or directory (overrides "
        "--model)",
    )
    parser.add_argument(
        "--relations",
        default="default",
        help="`default` (the subset above), `all`, or comma-separated ids",
    )
    parser.add_argument("--data-dir", default=None, help="LAMA directory")
    parser.add_argument("--output-dir", default="lama_output")
    parser.add_argument("--encoder", default="mlp", choices=["mlp", "lstm"])
    parser.add_argument(
        "--anchors", default="manual", choices=["manual", "none"]
    )
    parser.add_argument(
        "--slots", type=int, default=3, help="virtual tokens per slot (k)"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument(
        "--min-epoch-facts",
        type=int,
        default=64,
        help="an epoch repeats a small relation's facts up to this many, so "
        "every relation trains a similar number of steps",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="share of a relation's training facts held out for early stopping",
    )
    parser.add_argument("--multi-task", action="store_true")
    parser.add_argument(
        "--multi-task-batch-size",
        type=int,
        default=None,
        help="the multi-task model's batch size (default: --batch-size "
        f"times the number of relations, at most {MAX_MULTI_TASK_BATCH}, so "
        "each relation has about --batch-size facts in a mixed batch)",
    )
    parser.add_argument(
        "--multi-task-learning-rate",
        type=float,
        default=None,
        help="Adam's learning rate for the multi-task model (default: "
        "--learning-rate scaled so each relation's prompt moves as far per "
        "epoch as alone; see `multi_task_schedule`)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="replace the results in --output-dir (by default a rerun "
        "resumes them, and refuses other training arguments)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# === Data ===


def manual_template(facts):
    """The relation's LAMA template with `{subject}`, from its facts."""
    templates = collections.Counter(
        fact["input"].replace(fact["subj"], "{subject}", 1) for fact in facts
    )
    template, _ = templates.most_common(1)[0]
    return template


def anchors(template):
    """`(head, tail)`: the template's words before and after the subject,
    up to `[MASK]`."""
    prefix = template.split("[MASK]")[0].strip()
    head, tail = prefix.split("{subject}")
    return head.strip(), tail.strip()


def keep_single_token(facts, tokenizer):
    """The facts whose object is one token, with its id as `object_id`."""
    kept = []
    for fact in facts:
        ids = word_token_ids(fact["output"], tokenizer)
        if len(ids) == 1:
            kept.append(dict(fact, object_id=ids[0]))
    return kept


def relations_of(args, train):
    every = sorted({f["rel_id"] for f in train}, key=lambda r: int(r[1:]))
    if args.relations == "default":
        return DEFAULT_RELATIONS
    if args.relations == "all":
        return every
    chosen = [r.strip() for r in args.relations.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(every))
    if unknown:
        raise ValueError(
            f"`--relations` names relations not in the data: {unknown}. "
            f"Known: {every}"
        )
    return chosen


def padded(arrays, multiple):
    """Arrays padded to a multiple of `multiple` rows by repeating the
    first row: every batch has one shape, so nothing is retraced. Returns
    the padded arrays and the number of real rows."""
    n = len(next(iter(arrays.values())))
    extra = -n % multiple
    if not extra:
        return arrays, n
    return {
        k: np.concatenate([v, np.repeat(v[:1], extra, axis=0)])
        for k, v in arrays.items()
    }, n


# === The frozen model with a manual prompt ===


class ManualPrompt:
    """Next-token logits of the frozen causal LM after plain text."""

    def __init__(self, causal_lm, sequence_length):
        backbone = causal_lm.backbone
        self.preprocessor = causal_lm.preprocessor
        self.sequence_length = sequence_length
        inputs = {
            name: keras.Input((None,), dtype="int32", name=name)
            for name in ("token_ids", "padding_mask")
        }
        hidden = backbone(inputs)
        last = last_token_states(hidden, inputs["padding_mask"])
        logits = backbone.token_embedding(last, reverse=True)
        self.model = keras.Model(inputs, logits)

    def top1(self, texts, batch_size):
        x = self.preprocessor.generate_preprocess(
            texts, sequence_length=self.sequence_length
        )
        x = {
            k: keras.ops.convert_to_numpy(x[k]).astype("int32")
            for k in ("token_ids", "padding_mask")
        }
        x, n = padded(x, batch_size)
        logits = self.model.predict(x, batch_size=batch_size, verbose=0)
        return np.asarray(logits).argmax(-1)[:n]


# === P-tuning ===


class BestPrompt(keras.callbacks.Callback):
    """Early stopping on validation P@1 (ties: lower loss), one prompt at a
    time: after every epoch each group of validation rows scores the
    trainable variables of its own prompt, each group keeps its best
    epoch's values, and training stops once every group has gone
    `patience` epochs without improving. One group (every row, every
    trainable variable) is plain early stopping; a multi-task model has one
    group per task, so each task's prompt stops at its own best epoch as
    it would if trained alone. The backbone never changes.

    Args:
        patience: epochs without improvement before a group is done.
        x: padded validation inputs (one batch shape).
        y: the object token ids of the real validation rows.
        groups: list of `(rows, variables)`: indices into `y` and the
            variables that group's score selects.
        batch_size: the batch size of `x`.
    """

    def __init__(self, patience, x, y, groups, batch_size):
        super().__init__()
        self.patience = patience
        self.x, self.y, self.groups = x, y, groups
        self.batch_size = batch_size

    def on_train_begin(self, logs=None):
        n = len(self.groups)
        self.best = [None] * n
        self.best_weights = [None] * n
        self.best_epoch = [0] * n
        self.wait = [0] * n

    def on_epoch_end(self, epoch, logs=None):
        logits = self.model.predict(
            self.x, batch_size=self.batch_size, verbose=0
        )
        logits = np.asarray(logits, "float64")[: len(self.y)]
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        rows = np.arange(len(self.y))
        hit = logits.argmax(-1) == self.y
        loss = -log_probs[rows, self.y]
        for g, (members, variables) in enumerate(self.groups):
            score = (float(hit[members].mean()), -float(loss[members].mean()))
            if self.best[g] is None or score > self.best[g]:
                self.best[g], self.best_epoch[g], self.wait[g] = (
                    score,
                    epoch + 1,
                    0,
                )
                self.best_weights[g] = [
                    keras.ops.convert_to_numpy(v) for v in variables
                ]
            else:
                self.wait[g] += 1
        if min(self.wait) >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        for (_, variables), values in zip(self.groups, self.best_weights):
            for variable, value in zip(variables, values):
                variable.assign(value)


class PromptTrainer:
    """One compiled `PTuningNextTokenLM`, reset to the same initial prompt
    encoder and a fresh optimizer for every relation (one compilation for
    all of them)."""

    def __init__(
        self,
        backbone,
        template,
        args,
        task_names=None,
        learning_rate=None,
        batch_size=None,
    ):
        config = template.prompt_config(
            encoder_reparameterization_type=(
                "LSTM" if args.encoder == "lstm" else "MLP"
            )
        )
        self.model = keras_ptuning.PTuningNextTokenLM(
            backbone,
            preprocessor=template,
            prompt_config=config,
            task_names=task_names,
        )
        self.model.compile(
            optimizer=keras.optimizers.Adam(learning_rate or args.learning_rate)
        )
        self.template = template
        self.args = args
        self.batch_size = batch_size or args.batch_size
        self.encoder = self.model.backbone.prompt_encoder
        self.initial = [
            keras.ops.convert_to_numpy(v) for v in self.encoder.weights
        ]

    def reset(self):
        """The initial encoder and a fresh optimizer state (moments and
        step count; the learning rate stays)."""
        for variable, value in zip(self.encoder.weights, self.initial):
            variable.assign(value)
        optimizer = self.model.optimizer
        optimizer.build(self.model.trainable_variables)
        for variable in optimizer.variables:
            if variable is not optimizer._learning_rate:
                variable.assign(np.zeros(variable.shape, variable.dtype))

    def inputs(self, facts, relation_anchors, task_ids=None):
        fields = {"head": [], "subject": [], "tail": []}
        for fact in facts:
            head, tail = relation_anchors[fact["rel_id"]]
            fields["head"].append(head)
            fields["subject"].append(fact["subj"])
            fields["tail"].append(tail)
        x = {
            k: keras.ops.convert_to_numpy(v).astype("int32")
            for k, v in self.template(fields).items()
        }
        if task_ids is not None:
            x["task_id"] = np.asarray(
                [task_ids[f["rel_id"]] for f in facts], "int32"
            )
        return x

    def fit(self, train, val, relation_anchors, task_ids=None):
        """Trains on `train` with early stopping on `val`.

        An epoch repeats each relation's facts up to `--min-epoch-facts`
        (so a small relation trains as many steps in a mixed run as alone)
        and, with `task_ids`, each relation's prompt keeps its own best
        epoch by its own validation facts."""
        args = self.args
        rng = np.random.default_rng(args.seed)
        by_relation = collections.defaultdict(list)
        for i, fact in enumerate(train):
            by_relation[fact["rel_id"]].append(i)
        parts = []
        for indices in by_relation.values():
            indices = rng.permutation(np.asarray(indices))
            repeats = -(-args.min_epoch_facts // len(indices))
            parts += [rng.permutation(indices) for _ in range(repeats)]
        order = np.concatenate(parts)
        if len(by_relation) > 1:
            order = rng.permutation(order)
        # Full batches only: repeat a few facts to fill the last one.
        batch_size = self.batch_size
        order = np.concatenate([order, order[: -len(order) % batch_size]])
        train = [train[i] for i in order]
        x = self.inputs(train, relation_anchors, task_ids)
        y = np.asarray([f["object_id"] for f in train], "int32")
        val_x, _ = padded(
            self.inputs(val, relation_anchors, task_ids), batch_size
        )
        val_y = np.asarray([f["object_id"] for f in val], "int32")
        if task_ids is None:
            groups = [
                (np.arange(len(val)), self.model.trainable_variables),
            ]
            names = [None]
        else:
            names = sorted({f["rel_id"] for f in val}, key=task_ids.get)
            encoders = self.encoder.encoders
            groups = [
                (
                    np.asarray(
                        [i for i, f in enumerate(val) if f["rel_id"] == name]
                    ),
                    encoders[task_ids[name]].trainable_variables,
                )
                for name in names
            ]
        best = BestPrompt(args.patience, val_x, val_y, groups, batch_size)
        history = self.model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=args.epochs,
            callbacks=[best],
            verbose=0,
        )
        result = {
            "epochs_run": len(history.history["loss"]),
            "train_loss": [float(v) for v in history.history["loss"]],
        }
        if task_ids is None:
            result.update(best_epoch=best.best_epoch[0], val_p1=best.best[0][0])
        else:
            result.update(
                best_epoch=dict(zip(names, best.best_epoch)),
                val_p1={n: b[0] for n, b in zip(names, best.best)},
            )
        return result

    def top1(self, facts, relation_anchors, task_ids=None):
        x, n = padded(
            self.inputs(facts, relation_anchors, task_ids),
            self.batch_size,
        )
        logits = self.model.predict(x, batch_size=self.batch_size, verbose=0)
        return np.asarray(logits).argmax(-1)[:n]


def split_train(facts, fraction, seed):
    """`(train, validation)`: a held-out slice (at least one fact)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(facts))
    held = max(1, int(round(fraction * len(facts))))
    return [facts[i] for i in order[held:]], [facts[i] for i in order[:held]]


def p_at_1(predicted, facts):
    if not facts:
        return None
    return float(
        np.mean([p == f["object_id"] for p, f in zip(predicted, facts)])
    )


# === Results ===


def macro(per_relation, key):
    values = [r[key] for r in per_relation.values() if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def write_results(results, path):
    keys = ["manual_p1", "majority_p1", "ptuning_p1", "multi_task_p1"]
    results["macro"] = {
        key: macro(results["relations"], key)
        for key in keys
        if any(key in r for r in results["relations"].values())
    }
    results["macro"]["relations"] = len(results["relations"])
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(temporary, path)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    relations = list(results["relations"])
    keys = [
        ("manual_p1", "manual prompt", "tab:gray"),
        ("majority_p1", "majority object", "tab:orange"),
        ("ptuning_p1", "P-tuning", "tab:blue"),
    ]
    width = 0.27
    figure, axis = plt.subplots(figsize=(max(6, 0.45 * len(relations)), 4))
    positions = np.arange(len(relations))
    for i, (key, label, color) in enumerate(keys):
        values = [results["relations"][r].get(key) or 0 for r in relations]
        mean = results["macro"].get(key)
        axis.bar(
            positions + (i - 1) * width,
            values,
            width,
            color=color,
            label=f"{label} (macro {mean:.3f})" if mean is not None else label,
        )
    axis.set_xticks(positions, relations, rotation=90)
    axis.set(
        ylabel="P@1 (dev)",
        ylim=(0, 1),
        title=f"LAMA T-REx, frozen {results['model']}",
    )
    axis.legend(loc="upper right", fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    results_path = os.path.join(args.output_dir, "results.json")
    settings = {"model": args.preset or args.model}
    settings.update({name: getattr(args, name) for name in RESULT_ARGS})
    results = resumable.load_results(results_path, settings, args.restart) or {
        "relations": {}
    }
    keras.utils.set_random_seed(args.seed)
    preset = args.preset or MODELS[args.model]()
    causal_lm = keras_hub.models.CausalLM.from_preset(preset)
    tokenizer = causal_lm.preprocessor.tokenizer
    train_all = load_lama("train", args.data_dir)
    dev_all = load_lama("dev", args.data_dir)
    relations = relations_of(args, train_all)
    os.makedirs(args.output_dir, exist_ok=True)
    results.update(
        model=args.preset or args.model,
        backend=keras.config.backend(),
        settings=settings,
        args={k: v for k, v in vars(args).items() if k != "restart"},
    )

    facts = {}
    relation_anchors = {}
    for relation in relations:
        train = [f for f in train_all if f["rel_id"] == relation]
        dev = [f for f in dev_all if f["rel_id"] == relation]
        template = manual_template(train)
        head, tail = anchors(template)
        relation_anchors[relation] = (
            (head, tail) if args.anchors == "manual" else ("", "")
        )
        facts[relation] = {
            "template": template,
            "train_total": len(train),
            "dev_total": len(dev),
            "train": keep_single_token(train, tokenizer),
            "dev": keep_single_token(dev, tokenizer),
        }

    # One sequence length for every relation (one compiled program): the
    # longest row of any relation.
    def make_template(sequence_length):
        return keras_ptuning.PromptTemplate(
            TEMPLATE.format(k=args.slots),
            tokenizer,
            sequence_length=sequence_length,
            add_start_token=causal_lm.preprocessor.add_start_token,
            add_end_token=False,
        )

    template = make_template(128)
    longest = 0
    for relation, kept in facts.items():
        rows = kept["train"] + kept["dev"]
        if rows:
            lengths = keras.ops.convert_to_numpy(
                template(
                    {
                        "head": [relation_anchors[relation][0]] * len(rows),
                        "subject": [f["subj"] for f in rows],
                        "tail": [relation_anchors[relation][1]] * len(rows),
                    }
                )["padding_mask"]
            ).sum(1)
            longest = max(longest, int(lengths.max()))
    template = make_template(longest)
    manual = ManualPrompt(causal_lm, sequence_length=longest)
    trainer = PromptTrainer(causal_lm.backbone, template, args)
    print(
        f"backend={keras.config.backend()} preset={preset} "
        f"relations={len(relations)} sequence_length={longest}"
    )

    for relation in relations:
        if relation in results["relations"]:
            print(f"{relation}: done before, skipped")
            continue
        kept = facts[relation]
        start = time.time()
        entry = {
            "template": kept["template"],
            "facts_kept": {
                "train": len(kept["train"]),
                "train_total": kept["train_total"],
                "dev": len(kept["dev"]),
                "dev_total": kept["dev_total"],
            },
        }
        dev = kept["dev"]
        if len(kept["train"]) < 2 or not dev:
            entry["skipped"] = "fewer than 2 training or no dev facts kept"
        else:
            prefix = kept["template"].split("[MASK]")[0].strip()
            texts = [prefix.replace("{subject}", f["subj"]) for f in dev]
            manual_top1 = manual.top1(texts, args.batch_size)
            entry["manual_p1"] = p_at_1(manual_top1, dev)
            counts = collections.Counter(f["output"] for f in kept["train"])
            majority, _ = counts.most_common(1)[0]
            entry["majority_object"] = majority
            entry["majority_p1"] = float(
                np.mean([f["output"] == majority for f in dev])
            )
            train, val = split_train(
                kept["train"], args.validation_fraction, args.seed
            )
            trainer.reset()
            entry["training"] = trainer.fit(train, val, relation_anchors)
            ptuning_top1 = trainer.top1(dev, relation_anchors)
            entry["ptuning_p1"] = p_at_1(ptuning_top1, dev)
            # Per dev fact: its object's token id and each prompt's top-1.
            entry["dev_predictions"] = {
                "uid": [f["uid"] for f in dev],
                "object_id": [int(f["object_id"]) for f in dev],
                "manual": [int(i) for i in manual_top1],
                "ptuning": [int(i) for i in ptuning_top1],
            }
        entry["seconds"] = round(time.time() - start, 1)
        results["relations"][relation] = entry
        write_results(results, results_path)
        print(
            f"{relation}: kept {entry['facts_kept']}, manual "
            f"{entry.get('manual_p1')}, majority {entry.get('majority_p1')}, "
            f"p-tuning {entry.get('ptuning_p1')} ({entry['seconds']} s)",
            flush=True,
        )

    if args.multi_task:
        run_multi_task(causal_lm, template, facts, relation_anchors, args)
        for relation, value in results_multi_task(args).items():
            results["relations"][relation]["multi_task_p1"] = value
    write_results(results, results_path)
    plot(results, os.path.join(args.output_dir, "lama_p1.png"))
    print(json.dumps(results["macro"], indent=2))


def multi_task_schedule(args, num_relations):
    """The multi-task model's batch size and Adam learning rate.

    Alone, a relation's prompt takes one Adam step per `--batch-size` of
    its facts. In a mixed batch of `b` facts every prompt takes a step at
    (nearly) every batch, from about `b / num_relations` of its facts, so
    it takes `batch_size * num_relations / b` times as many steps per
    epoch. Adam moves each weight about `lr` per step, so the learning
    rate is scaled by the inverse to move each prompt as far per epoch as
    alone. The default batch gives each relation about `--batch-size`
    facts a batch (steps as alone, at the same rate) up to
    `MAX_MULTI_TASK_BATCH`; the flags override either.

    Returns `(batch_size, learning_rate)`.
    """
    full = args.batch_size * num_relations
    batch_size = args.multi_task_batch_size or min(full, MAX_MULTI_TASK_BATCH)
    learning_rate = args.multi_task_learning_rate or (
        args.learning_rate * batch_size / full
    )
    return batch_size, learning_rate


def run_multi_task(causal_lm, template, facts, relation_anchors, args):
    """One model, one prompt per relation, mixed batches; saved as one
    `.keras` file; per-relation dev P@1 in `multi_task.json`."""
    usable = [
        r for r in facts if len(facts[r]["train"]) >= 2 and facts[r]["dev"]
    ]
    task_ids = {relation: i for i, relation in enumerate(usable)}
    batch_size, learning_rate = multi_task_schedule(args, len(usable))
    trainer = PromptTrainer(
        causal_lm.backbone,
        template,
        args,
        task_names=usable,
        learning_rate=learning_rate,
        batch_size=batch_size,
    )
    train, val = [], []
    for relation in usable:
        t, v = split_train(
            facts[relation]["train"], args.validation_fraction, args.seed
        )
        train += t
        val += v
    start = time.time()
    training = trainer.fit(train, val, relation_anchors, task_ids)
    p1 = {}
    for relation in usable:
        dev = facts[relation]["dev"]
        p1[relation] = p_at_1(
            trainer.top1(dev, relation_anchors, task_ids), dev
        )
    trainer.model.save(os.path.join(args.output_dir, "multi_task.keras"))
    with open(os.path.join(args.output_dir, "multi_task.json"), "w") as f:
        json.dump(
            {
                "p1": p1,
                "training": training,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "seconds": round(time.time() - start, 1),
            },
            f,
            indent=2,
        )


def results_multi_task(args):
    with open(os.path.join(args.output_dir, "multi_task.json")) as f:
        return json.load(f)["p1"]


if __name__ == "__main__":
    main()

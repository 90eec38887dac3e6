"""The LAMA example, on a tiny random Llama 3 saved as a preset with
SmolLM2's kind of tokenizer, and a few facts written like LAMA's."""

import importlib.util
import json
import os

import keras
import keras_hub
import numpy as np
import pytest

import keras_ptuning
from tests.backbones import _ROPE
from tests.support import REPO_ROOT
from tests.support import byte_level_llama3_tokenizer
from tests.support import run_on_one_backend
from tests.support import run_python

OBJECTS = [" France", " Spain", " English", " French"]
RELATIONS = {
    # "Germany" is not one token of the tiny vocabulary: dropped.
    "P17": ("{} is located in [MASK] .", ["France", "Spain", "Germany"]),
    "P37": ("The official language of {} is [MASK] .", ["English", "French"]),
}


def _facts(split, count):
    rows = []
    for relation, (template, objects) in RELATIONS.items():
        for i in range(count):
            subject = f"{split} place {i}"
            rows.append(
                {
                    "uid": f"{relation}-{split}-{i}",
                    "rel_id": relation,
                    "subj": subject,
                    "input": template.format(subject),
                    "output": objects[i % len(objects)],
                }
            )
    return rows


def _write(directory, split, rows):
    with open(directory / f"{split}.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


@pytest.mark.slow  # a child process
@run_on_one_backend(
    "tensorflow",
    "the example runs in a JAX child process; its multi-task file is "
    "loaded back here, across backends",
)
def test_lama_example_on_a_tiny_preset(tmp_path):
    tokenizer = byte_level_llama3_tokenizer(OBJECTS)
    backbone = keras_hub.models.Llama3Backbone(
        **{**_ROPE, "vocabulary_size": tokenizer.vocabulary_size()},
        tie_word_embeddings=True,
    )
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer, add_start_token=False
    )
    preset = str(tmp_path / "tiny_llama3")
    causal_lm = keras_hub.models.Llama3CausalLM(backbone, preprocessor)
    causal_lm.save_to_preset(preset)
    data = tmp_path / "lama"
    data.mkdir()
    train, dev = _facts("train", 9), _facts("dev", 6)
    _write(data, "train", train)
    _write(data, "dev", dev)
    output_dir = tmp_path / "run"
    run_python(
        [
            os.path.join(REPO_ROOT, "examples", "lama_ptuning.py"),
            *("--preset", preset, "--relations", "all"),
            *("--data-dir", str(data), "--output-dir", str(output_dir)),
            *("--epochs", "2", "--batch-size", "4", "--slots", "2"),
            *("--min-epoch-facts", "8", "--multi-task"),
        ],
        backend="jax",
        timeout=600,
    )
    with open(output_dir / "results.json") as f:
        results = json.load(f)
    assert results["backend"] == "jax"
    assert sorted(results["relations"]) == ["P17", "P37"]
    p17, p37 = results["relations"]["P17"], results["relations"]["P37"]
    assert p17["facts_kept"] == {
        "train": 6,
        "train_total": 9,
        "dev": 4,
        "dev_total": 6,
    }
    assert p37["facts_kept"]["train"] == 9 and p37["facts_kept"]["dev"] == 6
    assert p17["template"] == "{subject} is located in [MASK] ."
    # Train P17 objects kept: France x3, Spain x3 -> the first most common.
    assert p17["majority_object"] == "France"
    dev_p17 = [f for f in dev if f["rel_id"] == "P17"]
    kept = [f for f in dev_p17 if f["output"] != "Germany"]
    assert p17["majority_p1"] == pytest.approx(
        np.mean([f["output"] == "France" for f in kept])
    )
    for entry in (p17, p37):  # Each p@1 is recomputed below (P17).
        assert entry["training"]["epochs_run"] == 2
    assert set(results["macro"]) >= {"manual_p1", "ptuning_p1"}
    assert results["macro"]["majority_p1"] == pytest.approx(
        (p17["majority_p1"] + p37["majority_p1"]) / 2
    )

    # The manual prompt's top-1 for every kept dev fact, from keras-hub's
    # own full logits at the last token of the manual text.
    predictions = p17["dev_predictions"]
    assert predictions["uid"] == [f["uid"] for f in kept]
    expected = []
    for fact in kept:
        ids = np.asarray(tokenizer(fact["input"].split(" [MASK]")[0]))
        logits = keras.ops.convert_to_numpy(
            causal_lm({"token_ids": ids[None], "padding_mask": ids[None] > -1})
        )
        expected.append(int(logits[0, -1].argmax()))
    assert predictions["manual"] == expected
    objects = [tokenizer.token_to_id("Ġ" + f["output"]) for f in kept]
    assert predictions["object_id"] == objects
    assert p17["manual_p1"] == pytest.approx(
        np.mean(np.array(expected) == objects)
    )
    assert p17["ptuning_p1"] == pytest.approx(
        np.mean(np.array(predictions["ptuning"]) == objects)
    )

    # The multi-task model: one file, loaded on this backend, predicting
    # what the example scored.
    model = keras.saving.load_model(output_dir / "multi_task.keras")
    assert isinstance(model, keras_ptuning.PTuningNextTokenLM)
    assert model.backbone.task_names == ["P17", "P37"]
    top = model.predict_top_k(
        {
            "head": [""] * len(kept),
            "subject": [f["subj"] for f in kept],
            "tail": ["is located in"] * len(kept),
            "task_id": np.zeros(len(kept), "int32"),
        },
        top_k=1,
    )
    objects = model.target_ids([f["output"] for f in kept])
    assert p17["multi_task_p1"] == pytest.approx(
        np.mean(top["token_ids"][:, 0] == objects)
    )
    assert (output_dir / "lama_p1.png").stat().st_size > 0
    # A rerun into this directory with other training arguments is refused
    # before anything loads, rather than mixing its relations with these.
    with pytest.raises(ValueError, match="slots=2, not 3"):
        _lama_example().main(
            [
                *("--preset", preset, "--relations", "all"),
                *("--data-dir", str(data), "--output-dir", str(output_dir)),
                *("--epochs", "2", "--batch-size", "4", "--slots", "3"),
                *("--min-epoch-facts", "8"),
            ]
        )


def _lama_example():
    path = os.path.join(REPO_ROOT, "examples", "lama_ptuning.py")
    spec = importlib.util.spec_from_file_location("lama_ptuning", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "num_relations,flags,expected",
    [
        # About --batch-size facts of each relation a batch, same rate.
        (6, [], (96, 3e-3)),
        (2, ["--batch-size", "4"], (8, 3e-3)),
        # Capped at 96: each prompt steps 656 / 96 times as often.
        (41, [], (96, 3e-3 * 96 / 656)),
        # A batch of 16 mixed facts: the rate over the number of relations.
        (6, ["--multi-task-batch-size", "16"], (16, 3e-3 / 6)),
        (6, ["--multi-task-learning-rate", "1e-3"], (96, 1e-3)),
    ],
)
def test_multi_task_schedule(num_relations, flags, expected):
    module = _lama_example()
    args = module.parse_args(["--learning-rate", "3e-3", *flags])
    batch_size, learning_rate = module.multi_task_schedule(args, num_relations)
    assert batch_size == expected[0]
    assert learning_rate == pytest.approx(expected[1])


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_keeps_each_prompts_own_best_epoch(patience):
    # Two "prompts": row 0's logits come from `a` only, row 1's from `b`
    # only. `a` is right after epoch 1 only, `b` after epoch 2 only.
    inputs = keras.Input((2,))
    a = keras.layers.Dense(3, use_bias=False, name="a")
    b = keras.layers.Dense(3, use_bias=False, name="b")
    logits = keras.layers.Add()([a(inputs[:, :1]), b(inputs[:, 1:])])
    model = keras.Model(inputs, logits)
    x = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    y = np.array([2, 1])
    best = _lama_example().BestPrompt(
        patience,
        x,
        y,
        groups=[([0], a.weights), ([1], b.weights)],
        batch_size=2,
    )
    best.set_model(model)
    model.stop_training = False
    right_a, wrong = [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]
    right_b = [[0.0, 1.0, 0.0]]
    epochs = [(right_a, wrong), (wrong, right_b), (wrong, wrong)]
    best.on_train_begin()
    stopped_after = None
    for epoch, (kernel_a, kernel_b) in enumerate(epochs):
        a.kernel.assign(np.asarray(kernel_a, "float32"))
        b.kernel.assign(np.asarray(kernel_b, "float32"))
        best.on_epoch_end(epoch)
        if model.stop_training:
            stopped_after = epoch + 1
            break
    best.on_train_end()
    # Stops once both have gone `patience` epochs without improving.
    assert stopped_after == (3 if patience == 1 else None)
    assert best.best_epoch == [1, 2]
    # (P@1, minus the loss): the right token has logit 1, the others 0.
    log_p = np.log(np.e / (np.e + 2))
    assert best.best == [(1.0, pytest.approx(log_p))] * 2
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.kernel), right_a)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(b.kernel), right_b)

"""The SuperGLUE example end to end, on a tiny random Llama 3 saved as a
preset with SmolLM2's kind of tokenizer, in a PyTorch child process."""

import json
import os
import sys

import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning.datasets import load_superglue
from tests.backbones import _ROPE
from tests.support import REPO_ROOT
from tests.support import byte_level_llama3_tokenizer
from tests.support import run_on_one_backend
from tests.support import run_python

# Real data and a child process.
pytestmark = pytest.mark.slow

DATA_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "superglue")
sys.path.insert(0, os.path.join(REPO_ROOT, "examples"))
import superglue_ptuning  # noqa: E402


@run_on_one_backend(
    "tensorflow",
    "the example runs in a PyTorch child process; TensorFlow's suite ends "
    "first",
)
def test_superglue_example_on_a_tiny_preset(tmp_path, monkeypatch):
    tokenizer = byte_level_llama3_tokenizer([" True", " False", " Neither"])
    backbone = keras_hub.models.Llama3Backbone(
        **{**_ROPE, "vocabulary_size": tokenizer.vocabulary_size()},
        tie_word_embeddings=True,
    )
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(tokenizer)
    preset = str(tmp_path / "tiny_llama3")
    keras_hub.models.Llama3CausalLM(backbone, preprocessor).save_to_preset(
        preset
    )
    output_dir = tmp_path / "run"

    def example(tasks, systems, seeds, *extra, timeout=1500):
        command = [
            os.path.join(REPO_ROOT, "examples", "superglue_ptuning.py"),
            "--preset",
            preset,
            "--data-dir",
            DATA_DIR,
            "--output-dir",
            output_dir,
            "--tasks",
            tasks,
            "--systems",
            systems,
            "--val-rows",
            "12",
            "--epochs",
            "1",
            "--seeds",
            seeds,
            "--lora-rank",
            "2",
            "--encoder-hidden-size",
            "8",
            *extra,
        ]
        # A hang guard, not a budget: a slow shared machine took over 600 s
        # under the three suites (about 200 s alone).
        return run_python(command, backend="torch", timeout=timeout).stdout

    # Every system on one seed, then P-tuning's second seed into the same
    # directory: the rerun resumes, running only what is new.
    example("CB,WSC", ",".join(superglue_ptuning.SYSTEMS), "0")
    with open(output_dir / "results.json") as f:
        first = json.load(f)["runs"]
    # With val scored after every epoch, and only at the reported pick
    # (diagnostics, not training arguments: the rerun still resumes).
    rerun = example(
        "CB",
        "majority,ptuning",
        "0,1",
        "--val-history",
        "--score-only-selected",
        timeout=600,
    )
    ran = [line for line in rerun.splitlines() if " seed " in line]
    assert len(ran) == 1 and ran[0].startswith("CB ptuning seed 1:"), ran
    with open(output_dir / "results.json") as f:
        results = json.load(f)
    assert results["setting"] == "few-shot"
    assert sorted(results["macro"]) == sorted(
        set(superglue_ptuning.SYSTEMS) - {"probe"}
    )
    for task in ("CB",):
        entry = results["tasks"][task]
        assert entry["examples"] == 12
        # The majority floor, by hand.
        order = superglue_ptuning.TASKS[task]["labels"]
        train = load_superglue(task, "train", DATA_DIR)
        counts = [sum(e["label"] == c for e in train) for c in order]
        majority = order[int(np.argmax(counts))]
        val = load_superglue(task, "val", DATA_DIR)[:12]
        assert entry["majority"] == pytest.approx(
            np.mean([e["label"] == majority for e in val])
        )
        assert len(entry["seeds"]["ptuning"]) == 2
        # P-tuning trains the prompt encoder only; LoRA its factors only.
        params = entry["trainable_params"]
        assert params["ptuning"] > 0 and params["lora"] > 0
        assert params["ptuning_lora"] == params["ptuning"] + params["lora"]
        runs = results["runs"][task]["ptuning"]
        for run in runs.values():
            # The text start is the manual prompt: a run that kept it
            # scores exactly the zero-shot accuracy.
            if run["best_epoch"] == 0:
                assert run["accuracy"] == entry["zero_shot"]
            # One run follows both selections: the reported one (dev32
            # accuracy, the default) and dev32's loss beside it.
            picks = run["by_selection"]
            assert picks["accuracy"]["accuracy"] == run["accuracy"]
            assert picks["accuracy"]["best_epoch"] == run["best_epoch"]
            assert run["best_epoch"] == np.argmax(run["select_history"])
            by_loss = picks["loss"]
            assert by_loss["best_epoch"] == np.argmin(
                run["select_loss_history"]
            )
            if by_loss["best_epoch"] == run["best_epoch"]:
                assert by_loss["accuracy"] == run["accuracy"]
            elif run is runs["1"]:
                # `--score-only-selected`: another epoch is not scored.
                assert "accuracy" not in by_loss
            # Two scores (the start and one epoch) average to the same
            # window: the earlier, the start, is picked.
            assert picks["loss_window"]["best_epoch"] == 0
        # Val after every epoch: the untrained start is the zero-shot
        # prompt, and the reported score is the picked epoch's.
        history = runs["1"]["val_history"]
        assert len(history) == 2 and "val_history" not in runs["0"]
        assert history[0] == entry["zero_shot"]
        assert history[runs["1"]["best_epoch"]] == runs["1"]["accuracy"]
    assert "f1" in results["tasks"]["CB"]
    # WSC: one choice (the candidate) against a threshold picked on dev32;
    # the probe cannot train on its one-label training set.
    wsc = results["runs"]["WSC"]
    assert wsc["skipped"] == {"probe": "the training set holds one label only"}
    assert "probe" not in results["macro"]
    for system in ("zero_shot", "in_context", "ptuning", "lora"):
        for run in wsc[system].values():
            assert np.isfinite(run["threshold"])
            if system in ("ptuning", "lora"):
                assert list(run["by_selection"]) == ["accuracy"]
    assert (output_dir / "superglue.png").stat().st_size > 0
    for task, runs in first.items():
        for system, by_seed in runs.items():
            if system not in ("examples", "skipped"):
                for seed, run in by_seed.items():
                    assert results["runs"][task][system][seed] == run

    # Other training arguments, or another backend, into the same directory
    # are refused before anything runs, rather than averaged with these
    # runs (this process runs TensorFlow; the runs were made on PyTorch).
    def rerun(*extra):
        superglue_ptuning.main(
            [
                "--preset",
                preset,
                "--output-dir",
                str(output_dir),
                "--val-rows",
                "12",
                "--lora-rank",
                "2",
                "--encoder-hidden-size",
                "8",
                *extra,
            ]
        )

    with pytest.raises(ValueError, match="backend='torch', not 'tensorflow'"):
        rerun()
    monkeypatch.setattr(keras.config, "backend", lambda: "torch")
    with pytest.raises(ValueError, match="epochs=1, not 2"):
        rerun("--epochs", "2")


def test_the_threshold_is_the_most_accurate_cut_on_its_labels():
    """Against every cut between sorted scores, by brute force; WSC's
    referent loss counts the True examples only."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = np.round(rng.normal(size=15), 1)  # With ties.
        labels = rng.integers(0, 2, 15)
        threshold = superglue_ptuning.best_threshold(scores, labels)
        best = max(
            np.mean((scores >= c) == labels)
            for c in np.concatenate([scores, [scores.max() + 1]])
        )
        assert np.mean((scores >= threshold) == labels) == best
        assert threshold not in scores  # Between scores, not on one.
    loss = superglue_ptuning.referent_loss(
        np.array([[1], [0], [1]]), np.array([[-2.0], [-5.0], [-3.0]])
    )
    np.testing.assert_allclose(np.asarray(loss), [2.0, 0.0, 3.0])


def test_tied_cuts_take_the_median_tied_cut():
    """Scores 0..5: the cuts -1, 0.5, ..., 4.5, 6. Labels F F T F T F tie
    1.5, 3.5 and 6 (everything False), 4 of 6 right each: the middle is
    3.5. T F T F T F tie -1 (everything True), 1.5, 3.5 and 6, 3 of 6
    each: the upper middle, 3.5."""
    scores = np.arange(6.0)
    for labels in ([0, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0]):
        threshold = superglue_ptuning.best_threshold(scores, np.array(labels))
        assert threshold == 3.5, labels


def test_in_context_keeps_the_question_after_a_long_passage():
    """The demonstrations stay whole and a passage longer than the budget
    is trimmed, as the zero-shot template trims it: the question and the
    prompt's words after it stay (a waterfall over the fields would drop
    the question first)."""
    tokenizer = byte_level_llama3_tokenizer([" True", " False", " Neither"])
    args = superglue_ptuning.parse_args(["--tasks", "CB"])
    runner = superglue_ptuning.Runner(args, None, "CB", None, tokenizer)
    demos = "Bob left. Question: Bob stayed. Answer: False"
    template, demo_tokens = runner.in_context_template(demos)
    fields = {
        "premise": ["All work and no play. " * 200],
        "hypothesis": ["Jack is a dull boy"],
    }
    packed = template(fields)
    zero_shot = runner.text_template(fields)
    length = int(np.asarray(packed["padding_mask"]).sum())
    ids = np.asarray(packed["token_ids"])[0, :length]
    text = tokenizer.detokenize(ids)
    assert text.index(demos + " All work") < 20  # After a start token.
    assert text.endswith("Jack is a dull boy True, False or Neither? Answer:")
    # The example's own part is the zero-shot prompt's, give or take the
    # template's 4 spare tokens.
    ours = length - demo_tokens
    theirs = int(np.asarray(zero_shot["padding_mask"]).sum())
    assert 0 <= ours - theirs <= 4, (ours, theirs)


def test_each_criterion_picks_its_epoch():
    """By hand: accuracy's first best epoch; the loss's single lowest; the
    windowed loss the epoch whose neighbourhood is lowest (1 with 2 at the
    ends): (0.9+0.5)/2, (0.9+0.5+0.45)/3, (0.5+0.45+0.4)/3, (0.45+0.4+0.95)/3,
    (0.4+0.95)/2."""
    accuracies = [0.5, 0.6, 0.55, 0.6, 0.5]
    losses = [0.9, 0.5, 0.45, 0.4, 0.95]
    picks = {
        criterion: superglue_ptuning.pick_epoch(criterion, accuracies, losses)
        for criterion in superglue_ptuning.SELECTION_CRITERIA
    }
    assert picks == {"accuracy": 1, "loss": 3, "loss_window": 2}


def test_the_replay_scores_each_criterions_pick_on_val(tmp_path, capsys):
    import superglue_replay_selection

    # Two seeds, the second without a val history (not replayed).
    run = {
        "select_history": [0.5, 0.6, 0.55, 0.6, 0.5],
        "select_loss_history": [0.9, 0.5, 0.45, 0.4, 0.95],
        "val_history": [0.40, 0.50, 0.70, 0.60, 0.80],
    }
    results = {"runs": {"CB": {"examples": 56, "ptuning": {"0": run}}}}
    results["runs"]["CB"]["ptuning"]["1"] = {"select_history": [0.5]}
    path = tmp_path / "cb" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(results))
    groups = superglue_replay_selection.replayed([str(path)])
    # Picks by hand (test_each_criterion_picks_its_epoch): 1, 3 and 2.
    assert groups == {
        ("cb", "CB", "ptuning"): {
            "start": [0.40],
            "accuracy": [0.50],
            "loss": [0.60],
            "loss_window": [0.70],
            "best val epoch": [0.80],
        }
    }
    superglue_replay_selection.main([str(path)])
    assert "| all (1) | 0.400 | 0.500 | 0.600 | 0.700 | 0.800 |" in (
        capsys.readouterr().out
    )

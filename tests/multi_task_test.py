"""Multi-task prompt tables: one frozen backbone, a prompt per task."""

import keras
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES
from tests.support import backbone_weights
from tests.support import make_inputs
from tests.support import to_numpy
from tests.support import uncached_greedy

NUM_TOKENS = 3
TASK_ID = np.array([0, 1, 1, 0], "int32")
LABELS = np.array([0, 1, 0, 1])


def _inputs(model, length=7, task_id=TASK_ID, placeholder_id=None):
    names = (
        model.input_names
        if isinstance(model, PTuningBackbone)
        else (model.model_input_names)
    )
    inputs = make_inputs(names, batch_size=len(task_id), length=length)
    if placeholder_id is not None:
        inputs["token_ids"][:, [0, 2, 3]] = placeholder_id
        inputs["padding_mask"][:, :4] = 1
    inputs["task_id"] = np.asarray(task_id, "int32")
    return inputs


@pytest.mark.parametrize(
    "family,placeholder_id", [("bert", None), ("llama", None), ("gpt2", -1)]
)
def test_mixed_batch_equals_each_row_through_its_own_model(
    family, placeholder_id
):
    backbone = FAMILIES[family]()
    config = PromptEncoderConfig(NUM_TOKENS)
    multi = PTuningBackbone(
        backbone,
        config,
        placeholder_id=placeholder_id,
        task_names=["sst2", "rte"],
    )
    assert multi.input_names[-1] == "task_id"
    inputs = _inputs(multi, placeholder_id=placeholder_id)
    mixed = multi.predict(inputs, verbose=0)
    for task, encoder in enumerate(multi.prompt_encoder.encoders):
        single = PTuningBackbone(
            backbone, config, placeholder_id=placeholder_id
        )
        single.prompt_encoder.set_weights(encoder.get_weights())
        rows = TASK_ID == task
        single_inputs = {
            k: v[rows] for k, v in inputs.items() if k != "task_id"
        }
        expected = single.predict(single_inputs, verbose=0)
        if isinstance(expected, dict):
            for name in expected:
                np.testing.assert_allclose(
                    mixed[name][rows], expected[name], atol=1e-5, rtol=1e-5
                )
        else:
            np.testing.assert_allclose(
                mixed[rows], expected, atol=1e-5, rtol=1e-5
            )


def test_joint_training_then_adding_a_task_leaves_the_others_bit_identical():
    backbone = FAMILIES["bert"]()
    frozen = backbone_weights(backbone)
    model = PTuningTextClassifier(
        backbone,
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        task_names=["a", "b"],
    )
    inputs = _inputs(model)
    tables = to_numpy(model.backbone.prompt_table())
    model.fit(inputs, LABELS, batch_size=4, epochs=2, verbose=0)
    # A mixed batch trains both tasks' prompts and heads.
    trained = to_numpy(model.backbone.prompt_table())
    assert not np.allclose(trained[0], tables[0])
    assert not np.allclose(trained[1], tables[1])
    before = model.predict(inputs, verbose=0)

    assert model.add_task("c") == 2
    model.set_trainable_tasks(["c"])
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {
        "task_c",
        "logits_c",
    }
    # Train the new task on a batch that mixes all three.
    mixed = _inputs(model, task_id=[2, 0, 2, 1])
    model.fit(mixed, LABELS, batch_size=4, epochs=3, verbose=0)
    np.testing.assert_array_equal(model.predict(inputs, verbose=0), before)
    new_rows = model.predict(_inputs(model, task_id=[2, 2, 2, 2]), verbose=0)
    assert new_rows.shape == (4, 2)
    for a, b in zip(frozen, backbone_weights(backbone)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.compiled  # the traced functions users get
def test_keras_round_trip_keeps_tasks_and_frozen_ones(tmp_path):
    model = PTuningTextClassifier(
        FAMILIES["distil_bert"](),
        2,
        prompt_config=PromptEncoderConfig(
            NUM_TOKENS, encoder_reparameterization_type="LSTM"
        ),
        task_names=["a", "b"],
    )
    model.add_task("c")
    model.set_trainable_tasks(["b", "c"])
    inputs = _inputs(model, task_id=[2, 0, 1, 2])
    model.fit(inputs, LABELS, batch_size=2, epochs=1, verbose=0)
    path = str(tmp_path / "tasks.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.backbone.task_names == ["a", "b", "c"]
    assert loaded.backbone.prompt_encoder.trainable_tasks == ["b", "c"]
    np.testing.assert_array_equal(
        loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0)
    )
    # The optimizer state comes back too: training resumes (eagerly on
    # TensorFlow, where tracing the step again costs 15 s; JAX compiles it
    # in half the time its eager step, op by op, takes).
    assert int(to_numpy(loaded.optimizer.iterations)) == 2
    loaded.run_eagerly = keras.config.backend() != "jax"
    loaded.fit(inputs, LABELS, batch_size=2, epochs=1, verbose=0)
    assert int(to_numpy(loaded.optimizer.iterations)) == 4


# Both position kinds in segments (the default); one cache for RoPE.
@pytest.mark.parametrize(
    "family,cache_segments",
    [("gpt2", "segments"), ("llama", "segments"), ("llama", "one_segment")],
    indirect=["cache_segments"],
)
def test_mixed_task_cached_greedy_equals_uncached_loop(family, cache_segments):
    lm = PTuningCausalLM(
        FAMILIES[family](),
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        task_names=["x", "y"],
    )
    lm.compile(sampler="greedy")
    lengths = np.array([3, 5, 2])
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, (3, 9)).astype("int32")
    mask = np.arange(9)[None] < lengths[:, None]
    ids = np.where(mask, ids, 0)
    task_id = np.array([1, 0, 1], "int32")
    generated = lm.generate(
        {"token_ids": ids, "padding_mask": mask, "task_id": task_id},
        stop_token_ids=None,
    )
    np.testing.assert_array_equal(
        to_numpy(generated["token_ids"]),
        uncached_greedy(lm, ids, lengths, task_id=task_id),
    )


def test_errors():
    model = PTuningTextClassifier(
        FAMILIES["bert"](),
        2,
        prompt_config=PromptEncoderConfig(2),
        task_names=["a", "b"],
    )
    inputs = _inputs(model, task_id=[0, 2, 1, 0])
    with pytest.raises(ValueError, match=r"\[0, 2\) .* task_id=\[0, 2, 1, 0\]"):
        model(inputs)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        model.fit(inputs, LABELS, verbose=0)
    with pytest.raises(ValueError, match="Task names must be distinct"):
        model.add_task("a")
    with pytest.raises(ValueError, match="Unknown task 'z'"):
        model.set_trainable_tasks(["z"])
    with pytest.raises(ValueError, match="Adapters hold one task"):
        model.save_adapter("unused.adapter.h5")
    with pytest.raises(ValueError, match="PEFT adapter holds one task"):
        keras_ptuning.save_peft_adapter(model, "unused_peft")
    with pytest.raises(ValueError, match="non-empty list"):
        PTuningBackbone(
            FAMILIES["bert"](), PromptEncoderConfig(2), task_names=[]
        )
    single = PTuningTextClassifier(
        FAMILIES["bert"](), 2, prompt_config=PromptEncoderConfig(2)
    )
    with pytest.raises(ValueError, match="needs a multi-task model"):
        single.add_task("a")

"""Training steps that run a decoder's text before the first virtual token
as constants (`keras_ptuning.backbones.frozen_prefix`) against the whole
sequence."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning.backbones import frozen_prefix
from keras_ptuning.compat.keras_internals import sublayers
from keras_ptuning.models import scored_positions
from tests.backbones import CAUSAL
from tests.backbones import FAMILIES
from tests.support import run_on_backends
from tests.support import run_on_one_backend
from tests.support import to_numpy

NUM_TOKENS = 3
SLOT = -1

# Rows whose first virtual token differs (at 2, 5 and 4), right-padded,
# left-padded and unpadded: the batch splits at 2.
TOKEN_IDS = np.array(
    [
        [7, 8, SLOT, 9, SLOT, 10, SLOT, 11, 12, 13, 0, 0],
        [0, 0, 14, 15, 16, SLOT, SLOT, SLOT, 17, 18, 19, 20],
        [21, 22, 23, 24, SLOT, 25, 26, SLOT, SLOT, 27, 28, 29],
    ],
    "int32",
)
PADDING_MASK = np.array(
    [[1] * 10 + [0, 0], [0, 0] + [1] * 10, [1] * 12], "int32"
)
PREPENDED_IDS = np.where(TOKEN_IDS == SLOT, 30, TOKEN_IDS)

# JAX splits only outside `jit` (what `run_eagerly=True` runs), where it
# runs op by op: two families' ways of embedding (learned positions; RoPE)
# with slots stand for the others there (Llama: the module takes 37 s
# alone against 55 s with Gemma 3, whose scaled embeddings and sliding
# windows every other backend tests).
ON_JAX = keras.config.backend() == "jax"
FAMILIES_TESTED = ["llama", "gpt2"] if ON_JAX else sorted(CAUSAL)
PLACEMENTS = ["slots"] if ON_JAX else ["slots", "multi_task", "prepended"]


def weighted_sum(inputs, weights):
    """A weighted sum of a model's outputs at real tokens."""
    mask = ops.cast(inputs["padding_mask"], "float32")[..., None]
    weights = ops.convert_to_tensor(weights)
    return lambda outputs: ops.sum(outputs * weights * mask)


def loss_and_gradients(model, inputs, loss_of):
    """`loss_of(outputs)` and its gradients with respect to the model's
    trainable variables, in the backend's autodiff (a training-mode call,
    as `fit` makes)."""
    variables = model.trainable_variables
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_of(model(inputs, training=True))
        gradients = tape.gradient(loss, variables)
    elif backend == "jax":
        import jax

        def value(trainable):
            outputs, _ = model.stateless_call(
                trainable,
                [v.value for v in model.non_trainable_variables],
                inputs,
                training=True,
            )
            return loss_of(outputs)

        loss, gradients = jax.value_and_grad(value)(
            [v.value for v in variables]
        )
    else:
        for v in variables:
            v.value.grad = None
        loss = loss_of(model(inputs, training=True))
        loss.backward()
        gradients = [v.value.grad for v in variables]
    return float(to_numpy(loss)), [to_numpy(g) for g in gradients]


def _model(family, placement):
    backbone = FAMILIES[family]()
    config = PromptEncoderConfig(NUM_TOKENS)
    if placement == "multi_task":
        return PTuningBackbone(
            backbone, config, placeholder_id=SLOT, task_names=["a", "b"]
        )
    placeholder_id = None if placement == "prepended" else SLOT
    return PTuningBackbone(backbone, config, placeholder_id=placeholder_id)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_a_split_step_equals_the_whole_sequence(family, placement):
    model = _model(family, placement)
    token_ids = PREPENDED_IDS if placement == "prepended" else TOKEN_IDS
    inputs = {"token_ids": token_ids, "padding_mask": PADDING_MASK}
    if placement == "multi_task":
        inputs["task_id"] = np.array([0, 1, 1], "int32")
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(1, 12, model.hidden_dim)).astype("float32")

    split = frozen_prefix.split_point(ops.convert_to_tensor(token_ids), SLOT)
    splits = placement != "prepended" and keras.config.backend() != (
        "tensorflow"
    )
    assert split == (2 if splits else None)
    loss_of = weighted_sum(inputs, weights)
    split_loss, split_gradients = loss_and_gradients(model, inputs, loss_of)
    model.frozen_prefix = False
    whole_loss, whole_gradients = loss_and_gradients(model, inputs, loss_of)

    assert abs(split_loss - whole_loss) <= 1e-5 * max(1.0, abs(whole_loss))
    assert len(split_gradients) == len(whole_gradients) > 0
    for split_gradient, whole_gradient in zip(split_gradients, whole_gradients):
        scale = np.abs(whole_gradient).max()
        np.testing.assert_allclose(
            split_gradient, whole_gradient, atol=1e-4 * scale, rtol=1e-4
        )
    # Outputs at real tokens (a padding position's are noise either way).
    real = PADDING_MASK.astype(bool)
    outputs = to_numpy(model(inputs, training=True))[real]
    model.frozen_prefix = True
    split_outputs = to_numpy(model(inputs, training=True))[real]
    np.testing.assert_allclose(split_outputs, outputs, atol=1e-5, rtol=1e-5)


def _lm(family="llama", **kwargs):
    from keras_ptuning import PTuningCausalLM

    backbone = FAMILIES[family]()
    backbone_kwargs = {"placeholder_id": SLOT}
    backbone_kwargs.update(kwargs)
    ptuning = PTuningBackbone(
        backbone, PromptEncoderConfig(NUM_TOKENS), **backbone_kwargs
    )
    model = PTuningCausalLM(ptuning)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def _lm_data(rows=6, length=12, seed=0):
    """Rows with their first slot at 2..5, some right- and left-padded;
    next-token targets weighted after the first slot."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, 60, (rows, length)).astype("int32")
    padding_mask = np.ones((rows, length), "int32")
    for row in range(rows):
        first = 2 + row % 4
        token_ids[row, [first, first + 2, first + 4]] = SLOT
        if row % 3 == 1:
            padding_mask[row, -2:] = 0
        elif row % 3 == 2:
            padding_mask[row, :1] = 0
    targets = np.maximum(np.roll(token_ids, -1, axis=1), 0)
    weights = np.zeros((rows, length), "float32")
    weights[:, 6:-1] = 1.0
    x = {"token_ids": token_ids, "padding_mask": padding_mask}
    return x, targets, weights


@run_on_one_backend(
    "torch", "the cache applies to PyTorch's (eager) steps only"
)
@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_a_fit_with_the_prefix_cache_trains_as_without(family):
    x, y, weights = _lm_data()
    plain = _lm(family)
    initial = plain.get_weights()
    fit = dict(batch_size=3, epochs=3, shuffle=True, verbose=0)
    keras.utils.set_random_seed(5)
    plain.fit(x, y, sample_weight=weights, **fit)

    cached = _lm(family)
    cached.set_weights(initial)
    keras.utils.set_random_seed(5)
    history = cached.fit(
        x, y, sample_weight=weights, frozen_prefix_cache_bytes=2**30, **fit
    )
    stats = cached.last_frozen_prefix_cache
    # Every row stored in the first epoch, found in the next two.
    assert stats.misses == 6 and stats.hits == 12
    assert cached.backbone.frozen_prefix_cache is None
    assert len(history.history["loss"]) == 3
    for a, b in zip(cached.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

    # A budget for no row: nothing is kept, a warning says so, and the
    # training is the same.
    small = _lm(family)
    small.set_weights(initial)
    keras.utils.set_random_seed(5)
    with pytest.warns(UserWarning, match="frozen-prefix cache is full"):
        small.fit(
            x, y, sample_weight=weights, frozen_prefix_cache_bytes=1, **fit
        )
    assert small.last_frozen_prefix_cache.bytes == 0
    for a, b in zip(small.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


# Eager steps (JAX and TensorFlow run them with `run_eagerly=True`); on JAX
# op by op, one family.
@pytest.mark.parametrize("family", ["llama"] if ON_JAX else sorted(CAUSAL))
def test_a_step_projects_only_the_weighted_positions_to_the_same_update(
    family, monkeypatch
):
    x, y, weights = _lm_data()
    model = _lm(family)
    # A step of `rate * gradient`, large against float32's rounding.
    rate = 1e4
    model.compile(optimizer=keras.optimizers.SGD(rate), run_eagerly=True)
    found = []
    find = scored_positions.find
    monkeypatch.setattr(
        scored_positions, "find", lambda *a: found.append(find(*a)) or found[-1]
    )

    # The whole projection's weighted cross-entropy over every position
    # (keras' "sum_over_batch_size"), its gradients, and its accuracy.
    def loss_of(logits):
        losses = keras.losses.sparse_categorical_crossentropy(
            ops.convert_to_tensor(y), logits, from_logits=True
        )
        return ops.sum(losses * ops.convert_to_tensor(weights)) / y.size

    loss, gradients = loss_and_gradients(model, x, loss_of)
    hits = np.argmax(to_numpy(model(x)), -1) == y
    accuracy = np.sum(hits * weights) / np.sum(weights)
    before = [to_numpy(v) for v in model.trainable_variables]
    logs = model.train_on_batch(x, y, sample_weight=weights, return_dict=True)

    (positions,) = found
    np.testing.assert_array_equal(
        positions.indices, np.flatnonzero(weights.reshape(-1))
    )
    assert abs(logs["loss"] - loss) <= 1e-5 * max(1.0, abs(loss))
    np.testing.assert_allclose(
        logs["sparse_categorical_accuracy"], accuracy, atol=1e-6
    )
    after = [to_numpy(v) for v in model.trainable_variables]
    for old, new, gradient in zip(before, after, gradients):
        scale = np.abs(gradient).max()
        np.testing.assert_allclose(
            (old - new) / rate, gradient, atol=1e-4 * scale, rtol=1e-4
        )

    # Unweighted metrics would count the positions of weight 0: the step
    # projects every position.
    model.compile(metrics=["accuracy"], run_eagerly=True)
    model.train_on_batch(x, y, sample_weight=weights)
    assert found[-1] is None


def test_the_prefix_cache_is_refused_where_nothing_is_frozen_or_it_would_lie():
    x, y, weights = _lm_data(rows=2)
    with pytest.raises(ValueError, match="prompt slots"):
        _lm(placeholder_id=None).fit(
            {
                "token_ids": np.maximum(x["token_ids"], 0),
                **{"padding_mask": x["padding_mask"]},
            },
            y,
            frozen_prefix_cache_bytes=2**20,
        )
    with pytest.raises(ValueError, match="one dropout draw"):
        _lm(backbone_dropout=True).fit(x, y, frozen_prefix_cache_bytes=2**20)
    with pytest.raises(ValueError, match="frozen_prefix_cache_bytes=0"):
        _lm().fit(x, y, frozen_prefix_cache_bytes=0)
    if keras.config.backend() != "torch":
        with pytest.warns(UserWarning, match="has no effect here"):
            _lm().fit(
                x, y, epochs=1, verbose=0, frozen_prefix_cache_bytes=2**20
            )


def _choice_inputs(placement, demonstrations=(), rows=3):
    """Multiple-choice inputs laid out as a `ChoiceTemplate` lays them:
    each row is the example's context (lengths 5, 7, 5, with the 3 slots
    in it, after `demonstrations`, the same for every example), then one
    choice (1 to 3 tokens; the first `rows` of 3), right-padded."""
    contexts = [
        [7, SLOT, 8, SLOT, SLOT],
        [9, 10, 11, SLOT, 12, SLOT, SLOT],
        [13, 14, SLOT, SLOT, SLOT],
    ]
    choices = [
        [[20, 21], [22, 23, 24], [40]],
        [[25, 26, 27], [28, 29], [41, 42]],
        [[30, 31], [32, 33], [43, 44, 45]],
    ]
    length, width = 12 + len(demonstrations), 3
    token_ids = np.zeros((3, rows, length), "int32")
    padding_mask = np.zeros((3, rows, length), "int32")
    positions = np.zeros((3, rows, width), "int32")
    ids = np.zeros((3, rows, width), "int32")
    choice_mask = np.zeros((3, rows, width), "int32")
    for b, context in enumerate(contexts):
        if placement == "plain":
            context = [30 + t if t == SLOT else t for t in context]
        context = list(demonstrations) + context
        n = len(context)
        for c, choice in enumerate(choices[b][:rows]):
            row = context + choice
            token_ids[b, c, : len(row)] = row
            padding_mask[b, c, : len(row)] = 1
            k = len(choice)
            positions[b, c, :k] = c * length + n - 1 + np.arange(k)
            ids[b, c, :k] = choice
            choice_mask[b, c, :k] = 1
    return {
        "token_ids": token_ids,
        "padding_mask": padding_mask,
        "choice_positions": positions,
        "choice_ids": ids,
        "choice_mask": choice_mask,
    }


def _classifier(family, placement):
    from keras_ptuning import PTuningCausalLMClassifier

    backbone = FAMILIES[family]()
    if placement == "plain":
        return PTuningCausalLMClassifier(backbone)
    return PTuningCausalLMClassifier(
        backbone,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        placeholder_id=SLOT,
    )


def _score_gradients(model, inputs):
    """Choice scores (inference) and the gradients of a cross-entropy over
    them (training mode), in the backend's autodiff."""
    rows = ops.shape(inputs["token_ids"])[1]
    labels = ops.convert_to_tensor(np.array([0, 1, 1], "int32") % rows)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables
    scores = to_numpy(model(inputs))
    backend = keras.config.backend()
    if not variables:
        return scores, []
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(inputs, training=True))
        gradients = tape.gradient(loss, variables)
    elif backend == "jax":
        import jax

        def value(trainable):
            outputs, _ = model.stateless_call(
                trainable,
                [v.value for v in model.non_trainable_variables],
                inputs,
                training=True,
            )
            return loss_fn(labels, outputs)

        gradients = jax.grad(value)([v.value for v in variables])
    else:
        for v in variables:
            v.value.grad = None
        loss_fn(labels, model(inputs, training=True)).backward()
        gradients = [v.value.grad for v in variables]
    return scores, [to_numpy(g) for g in gradients]


# On JAX one case (op by op).
@pytest.mark.parametrize(
    "placement", ["slots"] if ON_JAX else ["slots", "plain"]
)
@pytest.mark.parametrize("family", ["llama"] if ON_JAX else sorted(CAUSAL))
def test_multiple_choice_runs_each_context_once_with_the_same_scores(
    family, placement, monkeypatch
):
    from keras_ptuning import PTuningCausalLMClassifier

    model = _classifier(family, placement)
    inputs = _choice_inputs(placement)
    calls, packed = [], []
    run = frozen_prefix.run_shared_context
    monkeypatch.setattr(
        frozen_prefix,
        "run_shared_context",
        lambda *a, **k: calls.append(1) or run(*a, **k),
    )
    rotary_positions = frozen_prefix._rotary_positions
    monkeypatch.setattr(
        frozen_prefix,
        "_rotary_positions",
        lambda *a, **k: packed.append(1) or rotary_positions(*a, **k),
    )
    shared_scores, shared_gradients = _score_gradients(model, inputs)
    # Contexts of two lengths still run in one call per model call (the
    # shortest example's 5 positions shared), eager calls only: inference,
    # and training where the backend can split (not TensorFlow).
    trains_split = keras.config.backend() != "tensorflow" and bool(
        model.trainable_variables
    )
    assert len(calls) == 1 + trains_split
    # RoPE decoders with a full attention mask run the choices side by
    # side in the context's call; the others (a learned position table,
    # Gemma's own masks, Mistral's 8-position window here) on its cache.
    decoder = (
        model.backbone.backbone if placement == "slots" else model.backbone
    )
    packs = family in ("llama", "llama3", "qwen")
    assert frozen_prefix.packs_choices(decoder, 64) == packs
    assert len(packed) == (len(calls) if packs else 0)
    patched = [layer for layer in sublayers(decoder) if "call" in vars(layer)]
    assert patched == []  # RoPE counts positions itself again.
    monkeypatch.setattr(
        PTuningCausalLMClassifier, "_shared_context_states", lambda *a: None
    )
    scores, gradients = _score_gradients(model, inputs)
    np.testing.assert_allclose(shared_scores, scores, atol=1e-5, rtol=1e-5)
    assert len(shared_gradients) == len(gradients)
    for shared, whole in zip(shared_gradients, gradients):
        scale = np.abs(whole).max()
        np.testing.assert_allclose(shared, whole, atol=1e-4 * scale, rtol=1e-4)


# Demonstrations of 20 tokens: with one row per example only the batch
# shares them; with three rows each example shares 25 positions, and the
# batch's 20 still save more (8 rows x 20 > 3 x 2 rows x 25).
@run_on_backends(
    ("tensorflow", "torch"),
    "JAX's op-by-op autodiff takes 30 s here; its suite runs the same "
    "run_shared_context on each example's rows (the test above)",
)
@pytest.mark.parametrize("rows", [1, 3])
def test_demonstrations_every_row_shares_run_once_with_the_same_scores(
    rows, monkeypatch
):
    from keras_ptuning import PTuningCausalLMClassifier

    family = "llama"
    model = _classifier(family, "slots")
    demonstrations = 46 + np.arange(20) % 12
    inputs = _choice_inputs("slots", demonstrations, rows)
    calls = []
    run = frozen_prefix.run_shared_context
    monkeypatch.setattr(
        frozen_prefix,
        "run_shared_context",
        lambda *a, **k: (
            calls.append((ops.shape(a[2]), k["pack"])) or run(*a, **k)
        ),
    )
    shared_scores, shared_gradients = _score_gradients(model, inputs)
    # One context of the 20 shared positions for the batch's 3 * rows
    # rows, run on its cache (not side by side).
    assert calls and all(c == ((1, 20, 16), False) for c in calls), calls
    monkeypatch.setattr(
        PTuningCausalLMClassifier, "_shared_context_states", lambda *a: None
    )
    scores, gradients = _score_gradients(model, inputs)
    assert scores.shape == (3, rows)
    np.testing.assert_allclose(shared_scores, scores, atol=1e-5, rtol=1e-5)
    assert len(shared_gradients) == len(gradients) > 0
    for shared, whole in zip(shared_gradients, gradients):
        scale = np.abs(whole).max()
        np.testing.assert_allclose(shared, whole, atol=1e-4 * scale, rtol=1e-4)


def test_a_short_prefix_every_row_shares_runs_with_the_rows(monkeypatch):
    """Below `MIN_BATCH_SHARED_LENGTH` shared positions (a start token, a
    template's opening words) one row per example runs as whole rows."""
    from keras_ptuning.models.ptuning_causal_lm_classifier import (
        MIN_BATCH_SHARED_LENGTH,
    )

    model = _classifier("llama", "slots")
    calls = []
    monkeypatch.setattr(
        frozen_prefix,
        "run_shared_context",
        lambda *a, **k: calls.append(ops.shape(a[2])),
    )
    for shared in (MIN_BATCH_SHARED_LENGTH - 1, MIN_BATCH_SHARED_LENGTH):
        demonstrations = 46 + np.arange(shared) % 12
        inputs = _choice_inputs("slots", demonstrations, rows=1)
        try:
            model(inputs)
        except TypeError:  # The stub returns nothing.
            pass
    assert calls == [(1, MIN_BATCH_SHARED_LENGTH, 16)]


@pytest.mark.parametrize("demonstrations", [0, 20])
def test_shared_scoring_refuses_rows_without_every_placeholder(
    demonstrations,
):
    """Each example's rows share their context, or the batch its 20
    demonstrations: either way a row that lost a placeholder (truncated)
    or holds an extra one is refused, as whole rows are."""
    model = _classifier("llama", "slots")
    inputs = _choice_inputs("slots", 46 + np.arange(demonstrations) % 12)
    for count in (NUM_TOKENS - 1, NUM_TOKENS + 1):
        token_ids = inputs["token_ids"].copy()
        for row in token_ids.reshape(-1, token_ids.shape[-1]):
            slots = np.flatnonzero(row == SLOT)
            if count < NUM_TOKENS:
                row[slots[-1]] = 12
            else:
                row[slots[0] - 1] = SLOT
        with pytest.raises(
            ValueError, match=f"exactly num_virtual_tokens={NUM_TOKENS}"
        ):
            model({**inputs, "token_ids": token_ids})

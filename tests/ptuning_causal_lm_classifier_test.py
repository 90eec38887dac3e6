import keras
import numpy as np
import pytest

from keras_ptuning import ChoiceTemplate
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PromptTemplate
from keras_ptuning import PTuningCausalLMClassifier
from keras_ptuning import export_saved_model
from keras_ptuning.backbones.backbone_split import causal_lm_class
from keras_ptuning.compat import keras_internals
from tests.backbones import CAUSAL
from tests.backbones import FAMILIES
from tests.backbones import fresh_backbone
from tests.choice_models import CHOICES
from tests.choice_models import FIELDS
from tests.choice_models import LABELS
from tests.choice_models import TEMPLATE
from tests.choice_models import choice_template
from tests.choice_models import choice_tokenizer
from tests.choice_models import trained_lora_classifier
from tests.support import backbone_weights
from tests.support import run_on_backends
from tests.support import run_on_one_backend
from tests.support import to_numpy


def _reference_scores(backbone, choices):
    """Choice log-likelihoods by hand, `{"mean": ..., "sum": ...}`:
    keras-hub's own causal LM on the manual prompt plus each choice as real
    tokens, log-softmax in NumPy."""
    lm = causal_lm_class(backbone)(backbone=backbone, preprocessor=None)
    tokenizer = choice_tokenizer()
    context = choice_template("text")(FIELDS)
    ids = to_numpy(context["token_ids"])
    lengths = to_numpy(context["padding_mask"]).sum(1)
    rows, spans = [], []
    for b in range(len(LABELS)):
        for choice in choices:
            text = choice.format(**{k: v[b] for k, v in FIELDS.items()})
            choice_ids = list(np.asarray(tokenizer(text)).reshape(-1))
            rows.append(list(ids[b, : lengths[b]]) + choice_ids)
            spans.append((lengths[b], choice_ids))
    width = max(map(len, rows))
    token_ids = np.zeros((len(rows), width), "int32")
    padding_mask = np.zeros((len(rows), width), "int32")
    for i, row in enumerate(rows):
        token_ids[i, : len(row)] = row
        padding_mask[i, : len(row)] = 1
    logits = lm.predict(
        {"token_ids": token_ids, "padding_mask": padding_mask}, verbose=0
    ).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_scores = [
        [log_probs[i, n - 1 + j, t] for j, t in enumerate(choice_ids)]
        for i, (n, choice_ids) in enumerate(spans)
    ]
    shape = (len(LABELS), len(choices))
    return {
        "mean": np.reshape([np.mean(t) for t in token_scores], shape),
        "sum": np.reshape([np.sum(t) for t in token_scores], shape),
    }


# The scoring is family-independent: TensorFlow's suite checks every
# family; JAX's and PyTorch's one family per kind of choices each, between
# them GPT-2 (learned positions), Llama 3 (rotary) and Gemma 3 (scaled
# embeddings, sliding windows).
_ALSO_SCORED_ON = {
    ("gemma3", "label_words"): "jax",
    ("gpt2", "continuations"): "jax",
    ("llama3", "label_words"): "torch",
    ("gemma3", "continuations"): "torch",
}


def _scoring_case(family, kind):
    also = _ALSO_SCORED_ON.get((family, kind))
    mark = run_on_backends(
        ("tensorflow",) + ((also,) if also else ()),
        "the scoring is family-independent; JAX and PyTorch check one "
        "family per kind of choices",
    )
    return pytest.param(family, kind, marks=mark)


@pytest.mark.parametrize(
    "family,kind",
    [
        _scoring_case(family, kind)
        for kind in sorted(CHOICES)
        for family in sorted(CAUSAL)
    ],
)
def test_scores_are_choice_log_likelihoods_and_the_text_start_is_the_text(
    family, kind
):
    """Against a hand computation from keras-hub's causal-LM logits: the
    frozen model on the manual prompt (plain backbone), and the p-tuned
    model whose `[P:"text"]` prompt starts at that text, before training
    (so it predicts exactly what the frozen model predicts)."""
    backbone = FAMILIES[family]()
    choices = CHOICES[kind]
    reference = _reference_scores(backbone, choices)
    for reduction in ("mean", "sum"):
        expected = reference[reduction]
        plain = PTuningCausalLMClassifier(
            backbone,
            preprocessor=ChoiceTemplate(choice_template("text"), choices),
            score_reduction=reduction,
        )
        assert not plain.has_prompt
        ptuned = PTuningCausalLMClassifier(
            backbone,
            preprocessor=ChoiceTemplate(choice_template(), choices),
            prompt_config=PromptEncoderConfig(2, prompt_init="text"),
            score_reduction=reduction,
        )
        assert ptuned.has_prompt
        plain_scores = plain.predict(FIELDS, verbose=0)
        ptuned_scores = ptuned.predict(FIELDS, verbose=0)
        np.testing.assert_allclose(plain_scores, expected, atol=2e-5)
        np.testing.assert_allclose(ptuned_scores, plain_scores, atol=1e-6)
        np.testing.assert_array_equal(
            ptuned_scores.argmax(-1), plain_scores.argmax(-1)
        )


def test_one_choice_is_scored_alone_and_needs_a_loss():
    """A single choice (WSC's candidate referent) scores its own
    log-likelihood; the default loss, 0 over one choice, is refused."""
    backbone = FAMILIES["gpt2"]()
    choices = [" {hypothesis}"]
    model = PTuningCausalLMClassifier(
        backbone,
        preprocessor=ChoiceTemplate(choice_template(), choices),
        prompt_config=PromptEncoderConfig(2, prompt_init="text"),
    )
    reference = _reference_scores(backbone, choices)["mean"]
    scores = model.predict(FIELDS, verbose=0)
    assert scores.shape == (len(LABELS), 1)
    np.testing.assert_allclose(scores, reference, atol=2e-5)
    # Refused by `fit` after the default compile, and by `compile`.
    with pytest.raises(ValueError, match="1 choice.*Received: loss='auto'"):
        model.fit(FIELDS, [1, 0, 1], verbose=0)
    with pytest.raises(ValueError, match="1 choice.*Received: loss='auto'"):
        model.compile()

    # The positives' mean negative log-likelihood (labels: 1 right, 0 not).
    def positives_nll(y, scores):
        right = keras.ops.cast(keras.ops.reshape(y, (-1,)), "float32")
        return -right * scores[:, 0]

    model.compile(optimizer="sgd", loss=positives_nll)
    expected = -np.mean([1, 0, 1] * reference[:, 0])
    loss = model.evaluate(FIELDS, [1, 0, 1], verbose=0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    history = model.fit(FIELDS, [1, 0, 1], epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0], history


def test_choice_template_layout():
    template = choice_template()
    ids = to_numpy(template(FIELDS)["token_ids"])
    lengths = (ids != 0).sum(1)  # no pad id 0 in these rows
    piece = choice_tokenizer().token_to_id
    shared = ChoiceTemplate(template, {"yes": " yes", "no": " no"})(FIELDS)
    assert shared["token_ids"].shape == (3, 1, 16)
    np.testing.assert_array_equal(shared["token_ids"][:, 0], ids)
    np.testing.assert_array_equal(
        shared["choice_positions"][:, :, 0], np.stack([lengths - 1] * 2, 1)
    )
    np.testing.assert_array_equal(
        shared["choice_ids"][:, :, 0], [[piece("▁yes"), piece("▁no")]] * 3
    )
    assert shared["choice_mask"].sum() == 6
    per_row = ChoiceTemplate(template, CHOICES["continuations"], 4)(FIELDS)
    assert per_row["token_ids"].shape == (3, 2, 20)
    # Row 1, choice 0: " the sun rose so", cut to 4 tokens, after the prompt.
    n = lengths[1]
    first = [piece(w) for w in ("▁the", "▁sun", "▁rose", "▁so")]
    np.testing.assert_array_equal(per_row["token_ids"][1, 0, n : n + 4], first)
    np.testing.assert_array_equal(per_row["choice_ids"][1, 0], first)
    np.testing.assert_array_equal(
        per_row["choice_positions"][1, 0], n - 1 + np.arange(4)
    )
    # Choice 1 is read from the example's second row: offset by its length.
    np.testing.assert_array_equal(
        per_row["choice_positions"][1, 1, :3], 20 + n - 1 + np.arange(3)
    )
    np.testing.assert_array_equal(per_row["choice_mask"][1, 1], [1, 1, 1, 0])


def test_text_slots_tokenize_as_the_manual_prompt():
    template = choice_template()
    text = choice_template("text")
    assert template.num_virtual_tokens == 2
    assert text.num_virtual_tokens == 0
    piece = choice_tokenizer().token_to_id
    assert template.prompt_init_ids == [piece("▁Question:"), piece("▁Answer:")]
    assert template.prompt_config().prompt_init == "text"
    slots = to_numpy(template(FIELDS)["token_ids"])
    words = to_numpy(text(FIELDS)["token_ids"])
    np.testing.assert_array_equal(words == slots, slots != -1)
    np.testing.assert_array_equal(
        words[slots == -1].reshape(3, 2), [template.prompt_init_ids] * 3
    )
    np.testing.assert_array_equal(
        to_numpy(template.as_text_prompt()(FIELDS)["token_ids"]), words
    )


def test_training_lowers_the_loss_and_changes_only_prompt_and_lora():
    backbone = fresh_backbone("llama3")
    before = backbone_weights(backbone)
    model = PTuningCausalLMClassifier(
        backbone,
        preprocessor=ChoiceTemplate(
            choice_template(), CHOICES["continuations"]
        ),
    )
    model.backbone.enable_lora(2)
    # Setting the wrapper trainable again must not unfreeze the base.
    model.backbone.trainable = False
    assert not model.trainable_variables
    model.backbone.trainable = True
    names = sorted(v.path for v in model.trainable_variables)
    assert any("lora_kernel" in n for n in names)
    assert any("prompt_encoder" in n for n in names)
    assert all("lora_kernel" in n or "prompt_encoder" in n for n in names)
    model.compile(optimizer=keras.optimizers.Adam(3e-2))
    lora = [to_numpy(v) for v in backbone.weights if "lora" in v.path]
    history = model.fit(FIELDS, LABELS, epochs=6, batch_size=3, verbose=0)
    loss = history.history["loss"]
    assert loss[-1] < loss[0] - 1e-3, loss
    base = [w for w in backbone.weights if "lora" not in w.path]
    for old, new in zip(before, base):
        np.testing.assert_array_equal(old, to_numpy(new))
    changed = [to_numpy(v) for v in backbone.weights if "lora" in v.path]
    assert any(not np.array_equal(a, b) for a, b in zip(lora, changed))


def test_keras_file_and_adapter_round_trips(tmp_path):
    model = trained_lora_classifier()
    expected = model.predict(FIELDS, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.backbone.lora_rank == 2
    np.testing.assert_allclose(
        loaded.predict(FIELDS, verbose=0), expected, 1e-6
    )
    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    loaded = PTuningCausalLMClassifier.from_preset(preset)
    assert loaded.backbone.lora_rank == 2
    np.testing.assert_allclose(
        loaded.predict(FIELDS, verbose=0), expected, 1e-6
    )
    # Without a prompt (the frozen model alone, here with LoRA) too: the
    # preset's backbone is then the plain keras-hub one.
    plain = PTuningCausalLMClassifier(
        fresh_backbone("gemma"),
        preprocessor=ChoiceTemplate(
            choice_template().as_text_prompt(), CHOICES["label_words"]
        ),
    )
    plain.backbone.enable_lora(2)
    plain.save_to_preset(str(tmp_path / "plain"))
    loaded = PTuningCausalLMClassifier.from_preset(str(tmp_path / "plain"))
    assert not loaded.has_prompt
    assert keras_internals.lora_rank(loaded.backbone) == 2
    np.testing.assert_allclose(
        loaded.predict(FIELDS, verbose=0),
        plain.predict(FIELDS, verbose=0),
        1e-6,
    )
    # The adapter holds the prompt (not LoRA): a fresh model without LoRA
    # takes it, and reads the trained prompt on the frozen backbone.
    adapter = str(tmp_path / "prompt.adapter.h5")
    model.save_adapter(adapter, include_encoder=True)
    fresh = PTuningCausalLMClassifier(
        model.backbone.backbone,
        preprocessor=ChoiceTemplate(choice_template(), CHOICES["label_words"]),
        prompt_config=model.backbone.prompt_config,
    )
    fresh.load_adapter(adapter)
    np.testing.assert_allclose(
        to_numpy(fresh.backbone.prompt_table()),
        to_numpy(model.backbone.prompt_table()),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(fresh.backbone.prompt_encoder.base_table),
        to_numpy(model.backbone.prompt_encoder.base_table),
    )


def test_bad_arguments_are_refused_with_the_argument_named():
    backbone = FAMILIES["gpt2"]()
    template = choice_template()
    with pytest.raises(ValueError, match="`choices` must hold at least 1"):
        ChoiceTemplate(template, [])
    with pytest.raises(TypeError, match="`choices` must be a list"):
        ChoiceTemplate(template, " yes")
    with pytest.raises(ValueError, match="max_choice_length"):
        ChoiceTemplate(template, [" yes", " no"], max_choice_length=0)
    with pytest.raises(ValueError, match="add_end_token=False"):
        ChoiceTemplate(
            PromptTemplate(TEMPLATE, choice_tokenizer(), 16), ["a", "b"]
        )
    choices = ChoiceTemplate(template, [" yes", " no"])
    with pytest.raises(ValueError, match="score_reduction"):
        PTuningCausalLMClassifier(backbone, choices, score_reduction="max")
    with pytest.raises(TypeError, match="ChoiceTemplate"):
        PTuningCausalLMClassifier(backbone, preprocessor=template)
    with pytest.raises(ValueError, match="decoder-only"):
        PTuningCausalLMClassifier(FAMILIES["bert"](), choices)
    with pytest.raises(ValueError, match="lacks \\['hypothesis'\\]"):
        choices({"premise": ["a man"]})
    with pytest.raises(ValueError, match="Label 2 is outside"):
        choices.label_ids([0, 2])
    with pytest.raises(ValueError, match="all start from text"):
        choice_template(template='{premise} [P:"Question:"] [P:2]')
    with pytest.raises(ValueError, match="prompt_init"):
        PromptEncoderConfig(2, prompt_init="vocab")
    model = PTuningCausalLMClassifier(backbone, choices)
    with pytest.raises(ValueError, match="`rank` must be an int >= 1"):
        model.backbone.enable_lora(0)
    with pytest.raises(ValueError, match="`token_ids` must be 2 int ids"):
        model.backbone.init_prompt_from_token_ids([1, 2, 3])
    with pytest.raises(ValueError, match=r"must be in \[0, 64\)"):
        model.backbone.init_prompt_from_token_ids([1, 99])
    with pytest.raises(TypeError, match="must be a PTuningTextClassifier"):
        export_saved_model(model, "never_written")


@run_on_one_backend("tensorflow", "tf.data is TensorFlow's")
def test_choice_template_refuses_tf_data():
    import tensorflow as tf

    choices = ChoiceTemplate(choice_template(), [" yes", " no"])
    dataset = tf.data.Dataset.from_tensor_slices(FIELDS).batch(2)
    with pytest.raises(TypeError, match="runs eagerly on NumPy"):
        next(iter(dataset.map(choices)))


def test_the_prompt_config_field_stays_out_of_default_dicts():
    assert "prompt_init" not in PromptEncoderConfig(3).to_dict()
    config = PromptEncoderConfig(3, prompt_init="text")
    assert PromptEncoderConfig.from_dict(config.to_dict()) == config

import keras
import numpy as np
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PromptTemplate
from keras_ptuning import PTuningNextTokenLM
from tests.backbones import CAUSAL
from tests.backbones import FAMILIES
from tests.backbones import VOCABULARY_SIZE
from tests.support import GPT2_VOCAB
from tests.support import backbone_weights
from tests.support import bert_tokenizer
from tests.support import gpt2_tokenizer
from tests.support import make_identity_prompt
from tests.support import make_inputs
from tests.support import run_on_one_backend
from tests.support import to_numpy
from tests.support import with_real_prompt

NUM_TOKENS = 3
VIRTUAL_IDS = [5, 9, 17]
# Slots before, around and after the subject, and the anchor "the".
TEMPLATE = "[P] {subject} [P] the [P]"


def _template(**kwargs):
    kwargs.setdefault("add_end_token", False)
    return PromptTemplate(TEMPLATE, gpt2_tokenizer(), 10, **kwargs)


# Every family on TensorFlow; JAX and PyTorch read the last real token of
# a learned-position family and two RoPE ones (that read is the same code
# for all; `ptuning_causal_lm_test.py` checks every family's logits there).
@pytest.mark.parametrize(
    "family",
    [
        pytest.param(
            family,
            marks=()
            if family in ("gpt2", "gemma3", "llama3")
            else run_on_one_backend(
                "tensorflow",
                "the last-token read is family-independent; JAX and PyTorch "
                "check three families",
            ),
        )
        for family in sorted(CAUSAL)
    ],
)
def test_logits_are_the_causal_lm_logits_after_the_last_real_token(family):
    """Against keras-hub's own causal LM on the prompt as real tokens, read
    at each row's last real position (rows of different lengths)."""
    backbone = FAMILIES[family]()
    model = PTuningNextTokenLM(
        backbone, prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    make_identity_prompt(model.backbone, VIRTUAL_IDS)
    plain = model.backbone.causal_lm_class(backbone=backbone, preprocessor=None)
    inputs = make_inputs(model.model_input_names, batch_size=3, length=6)
    reference = plain.predict(with_real_prompt(inputs, VIRTUAL_IDS), verbose=0)
    last = NUM_TOKENS + inputs["padding_mask"].sum(1) - 1
    logits = model.predict(inputs, verbose=0)
    assert logits.shape == (3, VOCABULARY_SIZE)
    np.testing.assert_allclose(
        logits, reference[np.arange(3), last], atol=1e-4, rtol=1e-4
    )


def test_training_on_the_object_token_lowers_its_loss_and_not_the_backbone():
    backbone = FAMILIES["llama3"]()
    template = _template()
    model = PTuningNextTokenLM(backbone, preprocessor=template)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    frozen = backbone_weights(backbone)
    x = {"subject": ["the", "the the", "t", "th the"]}
    # The object token after the template: one id a row ("Ġthe").
    y = np.full(4, GPT2_VOCAB["Ġthe"], "int32")
    # Tokenized once: model-ready arrays go straight to Keras (no tf.data
    # pipeline a call; text through the template is tested above).
    ready = {k: to_numpy(v) for k, v in template(x).items()}
    before = model.evaluate(ready, y, verbose=0, return_dict=True)
    repeated = {k: np.tile(v, (25, 1)) for k, v in ready.items()}
    model.fit(repeated, np.tile(y, 25), epochs=1, batch_size=4, verbose=0)
    after = model.evaluate(ready, y, verbose=0, return_dict=True)
    # A tiny random decoder's logits span a few tenths (small tied
    # embeddings), so the loss can only fall a little; the ranking can move.
    assert after["loss"] < before["loss"] - 0.05
    assert before["accuracy"] < 1.0 and after["accuracy"] == 1.0
    for old, new in zip(frozen, backbone_weights(backbone)):
        np.testing.assert_array_equal(old, new)
    assert [v.path for v in model.trainable_variables] == [
        v.path for v in model.backbone.prompt_encoder.trainable_variables
    ]
    top = model.predict_top_k(x, top_k=2)
    assert top["token_ids"].shape == top["probabilities"].shape == (4, 2)
    np.testing.assert_array_equal(top["token_ids"][:, 0], y)
    assert top["tokens"][0, 0] == "Ġthe"
    assert np.all(np.diff(top["probabilities"], axis=1) <= 0)


@run_on_one_backend(
    "tensorflow",
    "tokenization is TensorFlow code whatever the backend, and text reaches "
    "the model through the same Python on every backend",
)
def test_template_reads_subjects_and_targets_as_running_text():
    template = _template()
    model = PTuningNextTokenLM(FAMILIES["gpt2"](), preprocessor=template)
    ids = to_numpy(template(["the"])["token_ids"])[0]
    # <|endoftext|>, slot, "Ġthe" (subject after a space), slot, "Ġthe", slot
    np.testing.assert_array_equal(ids[:6], [0, -1, 1, -1, 1, -1])
    np.testing.assert_array_equal(model.target_ids(["the", "th"]), [1, 8])
    # Model-ready inputs skip the preprocessor: the same logits as text.
    np.testing.assert_allclose(
        model.predict(template(["the", "th"]), verbose=0),
        model.predict(["the", "th"], verbose=0),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="'tht' tokenizes to 2 tokens"):
        model.target_ids(["tht"])
    with pytest.raises(TypeError, match="list of strings"):
        model.target_ids("the")


def test_multi_task_template_passes_task_id_through():
    template = _template()
    model = PTuningNextTokenLM(
        FAMILIES["qwen"](), preprocessor=template, task_names=["a", "b"]
    )
    subjects = ["the", "the th", "t"]
    mixed = model.predict_top_k(
        {"subject": subjects, "task_id": np.array([1, 0, 1])}, top_k=3
    )
    for task in (0, 1):
        alone = model.predict_top_k(
            {"subject": subjects, "task_id": np.full(3, task)}, top_k=3
        )
        rows = np.array([1, 0, 1]) == task
        np.testing.assert_allclose(
            mixed["probabilities"][rows], alone["probabilities"][rows], 1e-5
        )
    assert not np.allclose(
        model.predict_top_k({"subject": subjects, "task_id": np.zeros(3)})[
            "probabilities"
        ],
        model.predict_top_k({"subject": subjects, "task_id": np.ones(3)})[
            "probabilities"
        ],
    )


def test_bad_templates_backbones_and_arguments_are_refused():
    with pytest.raises(ValueError, match="must not hold \\[MASK\\]"):
        PTuningNextTokenLM(
            FAMILIES["gpt2"](),
            preprocessor=PromptTemplate("{x} [P] [MASK]", bert_tokenizer(), 8),
        )
    with pytest.raises(ValueError, match="add_end_token=False"):
        PTuningNextTokenLM(
            FAMILIES["gpt2"](), preprocessor=_template(add_end_token=True)
        )
    with pytest.raises(ValueError, match="decoder-only backbone"):
        PTuningNextTokenLM(
            FAMILIES["bert"](), prompt_config=PromptEncoderConfig(2)
        )
    model = PTuningNextTokenLM(FAMILIES["gpt2"](), preprocessor=_template())
    with pytest.raises(ValueError, match="top_k.*Received: top_k=0"):
        model.predict_top_k(["the"], top_k=0)

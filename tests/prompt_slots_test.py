"""Virtual tokens at placeholder slots anywhere in the input."""

import keras
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningTextClassifier
from tests.backbones import CAUSAL
from tests.backbones import FAMILIES
from tests.backbones import HIDDEN_DIM
from tests.support import backbone_weights
from tests.support import make_identity_prompt
from tests.support import make_inputs
from tests.support import to_numpy
from tests.support import uncached_greedy

NUM_TOKENS = 3
VIRTUAL_IDS = [5, 9, 17]
PLACEHOLDER = -1
# Slot positions per row: the three rows of `make_inputs(length=8)` hold at
# least 4 real tokens, so every slot is a real (unpadded) position.
SLOTS = [[0, 3, 7], [1, 2, 3], [0, 1, 2]]


def _with_slots(inputs, slots=SLOTS, placeholder=PLACEHOLDER):
    """`inputs` with the placeholder written at `slots`, and the reference
    inputs with the identity prompt's real token ids there instead."""
    ours = {k: np.array(v) for k, v in inputs.items()}
    reference = {k: np.array(v) for k, v in inputs.items()}
    for row, positions in enumerate(slots):
        for k, position in enumerate(positions):
            ours["token_ids"][row, position] = placeholder
            reference["token_ids"][row, position] = VIRTUAL_IDS[k]
            ours["padding_mask"][row, position] = 1
            reference["padding_mask"][row, position] = 1
    return ours, reference


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def test_slots_equal_real_tokens_placed_by_hand(family):
    """The k-th placeholder of a row gets the k-th virtual token; with the
    prompt set to real embeddings the outputs equal the plain backbone's on
    those real tokens, at every position (nothing is prepended)."""
    backbone = FAMILIES[family]()
    model = PTuningBackbone(
        backbone, PromptEncoderConfig(NUM_TOKENS), placeholder_id=PLACEHOLDER
    )
    make_identity_prompt(model, VIRTUAL_IDS)
    inputs, reference_inputs = _with_slots(
        make_inputs(model.input_names, batch_size=3, length=8)
    )
    outputs = model.predict(inputs, verbose=0)
    reference = backbone.predict(reference_inputs, verbose=0)
    if isinstance(reference, dict):
        assert outputs["sequence_output"].shape == (3, 8, HIDDEN_DIM)
        for name in reference:
            np.testing.assert_allclose(
                outputs[name], reference[name], atol=1e-5, rtol=1e-4
            )
    else:
        assert outputs.shape == (3, 8, HIDDEN_DIM)
        np.testing.assert_allclose(outputs, reference, atol=1e-5, rtol=1e-4)


def test_slot_substitution_equals_hand_built_embeddings():
    """The layer alone: positions and order of substitution, any prompt."""
    encoder = keras_ptuning.PromptEncoder(
        PromptEncoderConfig(NUM_TOKENS, token_dim=4)
    )
    injection = keras_ptuning.PromptInjection(encoder, placeholder_id=7)
    token_ids = np.array([[7, 1, 7, 7, 2], [3, 7, 7, 4, 7]], "int32")
    embeddings = np.random.default_rng(0).normal(size=(2, 5, 4))
    embeddings = embeddings.astype("float32")
    out, extra = injection(
        embeddings, {"padding_mask": np.ones((2, 5))}, token_ids=token_ids
    )
    prompt = to_numpy(encoder.prompt_table())
    expected = embeddings.copy()
    for row in range(2):
        slots = np.flatnonzero(token_ids[row] == 7)
        expected[row, slots] = prompt
    np.testing.assert_allclose(to_numpy(out), expected, atol=1e-6)
    assert to_numpy(extra["padding_mask"]).shape == (2, 5)
    masked = to_numpy(injection.mask_placeholders(token_ids))
    np.testing.assert_array_equal(
        masked, np.where(token_ids == 7, 0, token_ids)
    )


def test_wrong_placeholder_counts_are_refused_before_compute():
    model = PTuningTextClassifier(
        FAMILIES["bert"](),
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        placeholder_id=PLACEHOLDER,
    )
    inputs, _ = _with_slots(make_inputs(model.backbone.input_names, length=8))
    inputs["token_ids"][1, 5] = PLACEHOLDER  # row 1: 4 placeholders
    inputs["token_ids"][2, :3] = 11  # row 2: none
    before = [to_numpy(w) for w in model.trainable_weights]
    with pytest.raises(ValueError, match=r"row 1: 4, row 2: 0"):
        model(inputs)
    with pytest.raises(ValueError, match="exactly num_virtual_tokens=3"):
        model.fit(inputs, np.array([0, 1, 0]), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="row 1: 4"):
        model.predict(inputs, verbose=0)
    for a, b in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(a, to_numpy(b))


def test_placeholder_id_inside_the_vocabulary():
    """An in-vocabulary id (a reserved `[unused]` token, say) works like the
    default; a row whose text holds that id too is caught by the count."""
    backbone = FAMILIES["bert"]()
    inputs, _ = _with_slots(make_inputs(["token_ids", "segment_ids"], length=8))
    inputs["token_ids"] = np.where(
        inputs["token_ids"] == 63, 1, inputs["token_ids"]
    )
    default = PTuningBackbone(
        backbone, PromptEncoderConfig(NUM_TOKENS), placeholder_id=PLACEHOLDER
    )
    reserved = PTuningBackbone(
        backbone, PromptEncoderConfig(NUM_TOKENS), placeholder_id=63
    )
    reserved.prompt_encoder.set_weights(default.prompt_encoder.get_weights())
    with_63 = dict(
        inputs,
        token_ids=np.where(inputs["token_ids"] == -1, 63, inputs["token_ids"]),
    )
    np.testing.assert_allclose(
        to_numpy(reserved(with_63)["sequence_output"]),
        to_numpy(default(inputs)["sequence_output"]),
        atol=1e-6,
    )
    with_63["token_ids"][0, 6] = 63
    with pytest.raises(ValueError, match="collides with a real token"):
        reserved(with_63)


def test_bad_placeholder_ids():
    with pytest.raises(TypeError, match="placeholder_id"):
        PTuningBackbone(
            FAMILIES["bert"](), PromptEncoderConfig(2), placeholder_id="x"
        )
    with pytest.raises(ValueError, match="int32"):
        PTuningBackbone(
            FAMILIES["bert"](), PromptEncoderConfig(2), placeholder_id=2**40
        )


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_fit_trains_the_prompt_only_and_keeps_the_backbone(family):
    backbone = FAMILIES[family]()
    before = backbone_weights(backbone)
    model = PTuningTextClassifier(
        backbone,
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        placeholder_id=PLACEHOLDER,
    )
    inputs, _ = _with_slots(make_inputs(model.backbone.input_names, length=8))
    prompt_before = to_numpy(model.backbone.prompt_table())
    model.fit(inputs, np.array([0, 1, 1]), epochs=3, batch_size=3, verbose=0)
    assert not np.allclose(
        to_numpy(model.backbone.prompt_table()), prompt_before
    )
    for a, b in zip(before, backbone_weights(backbone)):
        np.testing.assert_array_equal(a, b)
    # A sequence as long as the backbone allows: nothing is prepended.
    assert model.backbone.max_sequence_length == model.backbone.max_positions


def test_keras_round_trip_adapter_and_peft_refusal(tmp_path):
    model = PTuningTextClassifier(
        FAMILIES["roberta"](),
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        placeholder_id=PLACEHOLDER,
    )
    inputs, _ = _with_slots(make_inputs(model.backbone.input_names, length=8))
    model.fit(inputs, np.array([0, 1, 1]), epochs=1, verbose=0)
    expected = model.predict(inputs, verbose=0)
    path = str(tmp_path / "slots.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.backbone.placeholder_id == PLACEHOLDER
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), expected)

    adapter = str(tmp_path / "slots.adapter.h5")
    model.save_adapter(adapter)
    fresh = PTuningTextClassifier(
        model.backbone.backbone,
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        placeholder_id=PLACEHOLDER,
    )
    fresh.load_adapter(adapter)
    np.testing.assert_allclose(
        fresh.predict(inputs, verbose=0), expected, atol=1e-5
    )
    prepend = PTuningTextClassifier(
        model.backbone.backbone,
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
    )
    with pytest.raises(
        ValueError, match="placeholder_id=-1 \\(prompt slots\\)"
    ):
        prepend.load_adapter(adapter)
    with pytest.raises(ValueError, match="PEFT P-tuning only prepends"):
        keras_ptuning.save_peft_adapter(model, str(tmp_path / "peft"))
    assert not (tmp_path / "peft").exists()


# Both position kinds in segments (the default); one cache for RoPE.
@pytest.mark.parametrize(
    "family,cache_segments",
    [("gpt2", "segments"), ("llama", "segments"), ("llama", "one_segment")],
    indirect=["cache_segments"],
)
def test_slot_cached_greedy_equals_uncached_argmax_loop(family, cache_segments):
    """Slots inside the prompt: cached greedy generation equals re-running
    the full p-tuned forward pass on the growing sequence."""
    lm = PTuningCausalLM(
        FAMILIES[family](),
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        placeholder_id=PLACEHOLDER,
    )
    lm.compile(sampler="greedy")
    lengths = np.array([6, 4, 8])
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 64, (3, 11)).astype("int32")
    mask = np.arange(11)[None] < lengths[:, None]
    ids = np.where(mask, ids, 0)
    for row, positions in enumerate([[0, 2, 5], [1, 2, 3], [4, 6, 7]]):
        ids[row, positions] = PLACEHOLDER
    generated = lm.generate(
        {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
    )
    np.testing.assert_array_equal(
        to_numpy(generated["token_ids"]), uncached_greedy(lm, ids, lengths)
    )
    with pytest.raises(ValueError, match="row 0: 2"):
        bad = ids.copy()
        bad[0, 0] = 7
        lm.generate({"token_ids": bad, "padding_mask": mask})


def test_causal_lm_logits_stay_aligned_with_slots():
    family = sorted(CAUSAL)[0]
    backbone = FAMILIES[family]()
    lm = PTuningCausalLM(
        backbone,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        placeholder_id=PLACEHOLDER,
    )
    make_identity_prompt(lm.backbone, VIRTUAL_IDS)
    plain = lm.backbone.causal_lm_class(backbone=backbone, preprocessor=None)
    inputs, reference_inputs = _with_slots(
        make_inputs(lm.backbone.input_names, length=8)
    )
    np.testing.assert_allclose(
        lm.predict(inputs, verbose=0),
        plain.predict(reference_inputs, verbose=0),
        atol=1e-4,
        rtol=1e-4,
    )

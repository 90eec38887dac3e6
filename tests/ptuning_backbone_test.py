import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from tests.backbones import FAMILIES
from tests.backbones import HIDDEN_DIM
from tests.backbones import MAX_SEQUENCE_LENGTH
from tests.support import make_identity_prompt
from tests.support import make_inputs
from tests.support import to_numpy
from tests.support import with_real_prompt

NUM_TOKENS = 3


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def test_outputs_match_plain_backbone_on_concatenated_ids(family):
    backbone = FAMILIES[family]()
    model = PTuningBackbone(backbone, PromptEncoderConfig(NUM_TOKENS))
    virtual_ids = [5, 9, 17]
    make_identity_prompt(model, virtual_ids)
    inputs = make_inputs(model.input_names, batch_size=3, length=6)

    batch = inputs["token_ids"].shape[0]
    reference_inputs = with_real_prompt(inputs, virtual_ids)
    reference = backbone.predict(reference_inputs, verbose=0)
    outputs = model.predict(inputs, verbose=0)

    if isinstance(reference, dict):
        assert set(outputs) == set(reference)
        np.testing.assert_allclose(
            outputs["sequence_output"],
            reference["sequence_output"][:, NUM_TOKENS:],
            atol=1e-5,
            rtol=1e-4,
        )
        np.testing.assert_allclose(
            outputs["pooled_output"], reference["pooled_output"], atol=1e-5
        )
    else:
        assert outputs.shape == (batch, 6, HIDDEN_DIM)
        np.testing.assert_allclose(
            outputs, reference[:, NUM_TOKENS:], atol=1e-5, rtol=1e-4
        )


def test_structure_shapes_and_trainable_variables(family):
    backbone = FAMILIES[family]()
    model = PTuningBackbone(backbone, PromptEncoderConfig(NUM_TOKENS))
    assert model.backbone is backbone
    assert model.input_names == ["token_ids"] + sorted(
        set(backbone.input) - {"token_ids"}
    )
    assert backbone.trainable is False
    encoder_ids = {id(v) for v in model.prompt_encoder.trainable_variables}
    assert {id(v) for v in model.trainable_variables} == encoder_ids
    table_size = NUM_TOKENS * HIDDEN_DIM  # the collapsed-prompt variable
    assert model.count_params() == (
        backbone.count_params()
        + model.prompt_encoder.count_params()
        + table_size
    )
    for length in (4, 9):
        inputs = make_inputs(model.input_names, batch_size=2, length=length)
        outputs = model(inputs)
        sequence = (
            outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        )
        assert tuple(sequence.shape) == (2, length, HIDDEN_DIM)


def test_backbone_stays_frozen_when_wrapper_is_set_trainable():
    backbone = FAMILIES["bert"]()
    model = PTuningBackbone(backbone, PromptEncoderConfig(NUM_TOKENS))
    model.trainable = False
    assert model.trainable_variables == []
    model.trainable = True
    assert backbone.trainable is False
    assert len(model.trainable_variables) == len(
        model.prompt_encoder.trainable_variables
    )


def test_lstm_encoder_runs_in_backbone():
    model = PTuningBackbone(
        FAMILIES["gpt2"](),
        PromptEncoderConfig(NUM_TOKENS, encoder_reparameterization_type="LSTM"),
    )
    inputs = make_inputs(model.input_names, length=5)
    assert tuple(model(inputs).shape) == (3, 5, HIDDEN_DIM)


def test_token_dim_fills_from_backbone_and_mismatch_is_refused():
    model = PTuningBackbone(FAMILIES["bert"](), PromptEncoderConfig(2))
    assert model.prompt_config.token_dim == HIDDEN_DIM
    with pytest.raises(
        ValueError, match=f"hidden size \\({HIDDEN_DIM}\\).*token_dim=8"
    ):
        PTuningBackbone(FAMILIES["bert"](), PromptEncoderConfig(2, token_dim=8))


def test_too_long_sequence_names_the_numbers():
    model = PTuningBackbone(FAMILIES["bert"](), PromptEncoderConfig(4))
    assert model.max_sequence_length == MAX_SEQUENCE_LENGTH - 4
    inputs = make_inputs(model.input_names, length=MAX_SEQUENCE_LENGTH - 1)
    with pytest.raises(
        ValueError, match="4 \\+ 31 = 35 exceeds.*maximum of 32"
    ):
        model(inputs)


def test_too_many_virtual_tokens_is_refused():
    with pytest.raises(ValueError, match="num_virtual_tokens=32"):
        PTuningBackbone(FAMILIES["gpt2"](), PromptEncoderConfig(32))


def test_missing_and_extra_keys_are_refused():
    model = PTuningBackbone(FAMILIES["bert"](), PromptEncoderConfig(2))
    inputs = make_inputs(model.input_names)
    del inputs["segment_ids"]
    with pytest.raises(ValueError, match="Missing: \\['segment_ids'\\]"):
        model(inputs)
    inputs = make_inputs(model.input_names)
    inputs["labels"] = inputs["token_ids"]
    with pytest.raises(ValueError, match="unexpected: \\['labels'\\]"):
        model(inputs)
    with pytest.raises(TypeError, match="dict"):
        model(inputs["token_ids"])


def test_float_token_ids_are_refused():
    model = PTuningBackbone(FAMILIES["gpt2"](), PromptEncoderConfig(2))
    inputs = make_inputs(model.input_names)
    inputs["token_ids"] = inputs["token_ids"].astype("float32")
    with pytest.raises(TypeError, match="integer `token_ids`.*float32"):
        model(inputs)


def test_non_backbone_and_backbone_without_token_embedding():
    with pytest.raises(TypeError, match="keras_hub.models.Backbone"):
        PTuningBackbone(
            keras.Sequential([keras.layers.Dense(2)]), PromptEncoderConfig(2)
        )
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    outputs = keras.layers.Dense(4)(
        ops.cast(ops.expand_dims(token_ids, -1), "float32")
    )
    plain = keras_hub.models.Backbone(
        inputs={"token_ids": token_ids}, outputs=outputs
    )
    with pytest.raises(ValueError, match="token_embedding"):
        PTuningBackbone(plain, PromptEncoderConfig(2))


def test_wrong_prompt_config_type():
    with pytest.raises(TypeError, match="prompt_config"):
        PTuningBackbone(FAMILIES["bert"](), 20)


def test_config_round_trip_and_backbone_unchanged(family):
    backbone = FAMILIES[family]()
    model = PTuningBackbone(backbone, PromptEncoderConfig(NUM_TOKENS))
    config = model.get_config()
    assert config["prompt_config"]["num_virtual_tokens"] == NUM_TOKENS
    restored = PTuningBackbone.from_config(config)
    assert restored.prompt_config == model.prompt_config
    assert type(restored.backbone) is type(backbone)
    assert restored.count_params() == model.count_params()


def test_collapsed_prompt_gives_the_same_outputs_and_freezes_encoder():
    model = PTuningBackbone(
        FAMILIES["llama"](),
        PromptEncoderConfig(NUM_TOKENS, encoder_reparameterization_type="LSTM"),
    )
    inputs = make_inputs(model.input_names)
    expected = to_numpy(model(inputs))
    table = to_numpy(model.prompt_table())
    model.collapse_prompt()
    assert model.prompt_source == "table"
    np.testing.assert_array_equal(to_numpy(model.prompt_table()), table)
    np.testing.assert_allclose(to_numpy(model(inputs)), expected, atol=1e-6)
    assert model.trainable_variables == []
    model.trainable = True
    assert model.trainable_variables == []
    restored = PTuningBackbone.from_config(model.get_config())
    assert restored.prompt_source == "table"
    with pytest.raises(ValueError, match="prompt_source='cache'"):
        model.prompt_injection.set_prompt_source("cache")


def test_switching_prompt_source_keeps_a_frozen_encoder_frozen(tmp_path):
    """Back on the encoder (directly, or by loading an adapter with the
    encoder) an encoder the user froze stays frozen; one that trained
    trains again."""
    model = PTuningBackbone(FAMILIES["llama"](), PromptEncoderConfig(2))
    injection = model.prompt_injection
    encoder = model.prompt_encoder
    encoder.trainable = False
    injection.set_prompt_source("encoder")
    assert not encoder.trainable and model.trainable_variables == []
    injection.set_prompt_source("table")
    injection.set_prompt_source("encoder")
    assert not encoder.trainable
    path = str(tmp_path / "a.adapter.h5")
    model.save_adapter(path, include_encoder=True)
    model.load_adapter(path)
    assert not encoder.trainable and model.trainable_variables == []
    encoder.trainable = True
    injection.set_prompt_source("table")
    assert not encoder.trainable
    injection.set_prompt_source("encoder")
    assert encoder.trainable and len(model.trainable_variables) > 0


def test_a_text_start_never_silently_misses_a_collapsed_prompt():
    model = PTuningBackbone(
        FAMILIES["llama"](), PromptEncoderConfig(2, prompt_init="text")
    )
    model.init_prompt_from_token_ids([3, 4])
    model.collapse_prompt(np.ones((2, HIDDEN_DIM), "float32"))
    with pytest.raises(ValueError, match="prompt_source='table'"):
        model.init_prompt_from_token_ids([5, 6])
    np.testing.assert_array_equal(to_numpy(model.prompt_table()), 1.0)


def _dropout_bert():
    return keras_hub.models.BertBackbone(
        vocabulary_size=64,
        num_layers=1,
        num_heads=2,
        hidden_dim=HIDDEN_DIM,
        intermediate_dim=32,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        dropout=0.5,
    )


def test_the_frozen_backbone_trains_without_its_dropout_unless_asked():
    backbone = _dropout_bert()
    inputs = make_inputs(["token_ids", "padding_mask", "segment_ids"], 2, 6)
    frozen = PTuningBackbone(backbone, PromptEncoderConfig(NUM_TOKENS))
    inference = to_numpy(frozen(inputs)["sequence_output"])
    training = to_numpy(frozen(inputs, training=True)["sequence_output"])
    # Keras's convention for a frozen base: as at inference.
    np.testing.assert_array_equal(training, inference)

    dropping = PTuningBackbone(
        backbone, PromptEncoderConfig(NUM_TOKENS), backbone_dropout=True
    )
    dropping.set_weights(frozen.get_weights())
    np.testing.assert_array_equal(
        to_numpy(dropping(inputs)["sequence_output"]), inference
    )
    dropped = to_numpy(dropping(inputs, training=True)["sequence_output"])
    assert np.mean(np.abs(dropped - inference)) > 0.1


def test_the_prompt_encoder_keeps_its_dropout_in_training():
    backbone = _dropout_bert()
    config = PromptEncoderConfig(NUM_TOKENS, encoder_dropout=0.5)
    model = PTuningBackbone(backbone, config)
    # A nonzero last layer, so the MLP's dropout reaches the prompt.
    with_noise = [
        w + np.random.default_rng(0).normal(size=w.shape).astype(w.dtype)
        for w in model.prompt_encoder.get_weights()
    ]
    model.prompt_encoder.set_weights(with_noise)
    inputs = make_inputs(model.input_names, 2, 6)
    inference = to_numpy(model(inputs)["sequence_output"])
    training = to_numpy(model(inputs, training=True)["sequence_output"])
    # (Without the encoder in training mode the two would be equal.)
    assert np.abs(training - inference).max() > 1e-4
    # The training mode ends with the call.
    np.testing.assert_array_equal(
        to_numpy(model(inputs)["sequence_output"]), inference
    )


def test_backbone_dropout_round_trips_and_older_configs_keep_it_on():
    backbone = FAMILIES["bert"]()
    model = PTuningBackbone(backbone, PromptEncoderConfig(NUM_TOKENS))
    config = model.get_config()
    assert config["backbone_dropout"] is False
    assert PTuningBackbone.from_config(config).backbone_dropout is False
    del config["backbone_dropout"]
    assert PTuningBackbone.from_config(config).backbone_dropout is True
    with pytest.raises(TypeError, match="backbone_dropout=1"):
        PTuningBackbone(backbone, PromptEncoderConfig(1), backbone_dropout=1)

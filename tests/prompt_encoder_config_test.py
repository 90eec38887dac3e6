import pytest

from keras_ptuning import PromptEncoderConfig
from tests.support import run_on_one_backend

pytestmark = run_on_one_backend(
    "tensorflow", "a pure-Python config, the same on every backend"
)


def test_defaults_match_peft():
    config = PromptEncoderConfig(num_virtual_tokens=20)
    assert config.token_dim is None
    assert config.encoder_reparameterization_type == "MLP"
    assert config.encoder_hidden_size is None
    assert config.encoder_num_layers == 2
    assert config.encoder_dropout == 0.0


def test_type_is_case_insensitive():
    config = PromptEncoderConfig(4, encoder_reparameterization_type="lstm")
    assert config.encoder_reparameterization_type == "LSTM"


def test_hidden_size_defaults_to_token_dim():
    assert PromptEncoderConfig(4, token_dim=16).hidden_size == 16
    assert PromptEncoderConfig(4, 16, encoder_hidden_size=8).hidden_size == 8


def test_dict_round_trip():
    config = PromptEncoderConfig(
        num_virtual_tokens=5,
        token_dim=32,
        encoder_reparameterization_type="LSTM",
        encoder_hidden_size=12,
        encoder_num_layers=3,
        encoder_dropout=0.25,
    )
    assert PromptEncoderConfig.from_dict(config.to_dict()) == config


def test_from_dict_rejects_unknown_field():
    with pytest.raises(ValueError, match="peft_type"):
        PromptEncoderConfig.from_dict(
            {"num_virtual_tokens": 2, "peft_type": "X"}
        )


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_virtual_tokens", 0),
        ("num_virtual_tokens", -3),
        ("num_virtual_tokens", 2.0),
        ("num_virtual_tokens", True),
        ("token_dim", 0),
        ("token_dim", "16"),
        ("encoder_reparameterization_type", "GRU"),
        ("encoder_reparameterization_type", 1),
        ("encoder_hidden_size", 0),
        ("encoder_num_layers", 0),
        ("encoder_num_layers", 1.5),
        ("encoder_dropout", -0.1),
        ("encoder_dropout", 1.0),
        ("encoder_dropout", 1.5),
        ("encoder_dropout", "0.1"),
    ],
)
def test_invalid_values_name_field_and_value(field, value):
    kwargs = {"num_virtual_tokens": 4, field: value}
    with pytest.raises(ValueError) as error:
        PromptEncoderConfig(**kwargs)
    assert field in str(error.value)
    assert repr(value) in str(error.value)


def test_with_token_dim():
    config = PromptEncoderConfig(4)
    assert config.with_token_dim(16).token_dim == 16
    assert PromptEncoderConfig(4, 16).with_token_dim(16).token_dim == 16
    with pytest.raises(ValueError, match="384.*token_dim=16"):
        PromptEncoderConfig(4, 16).with_token_dim(384)

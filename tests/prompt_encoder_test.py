import keras
import numpy as np
import pytest

from keras_ptuning import PromptEncoder
from keras_ptuning import PromptEncoderConfig
from tests.support import to_numpy


def _mlp_params(n, d, h, layers):
    return n * d + (d * h + h) + (layers - 1) * (h * h + h) + (h * d + d)


def _lstm_params(n, d, h, layers):
    """PEFT's count, less Keras' merged LSTM bias (4h per direction)."""
    peft = n * d
    for layer in range(layers):
        width = d if layer == 0 else 2 * h
        peft += 2 * (4 * h * width + 4 * h * h + 8 * h)
    peft += (2 * h * 2 * h + 2 * h) + (2 * h * d + d)
    return peft - layers * 2 * 4 * h


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_mlp_parameter_count_matches_peft_formula(layers):
    encoder = PromptEncoder(
        num_virtual_tokens=20,
        token_dim=24,
        encoder_hidden_size=10,
        encoder_num_layers=layers,
    )
    assert encoder.count_params() == _mlp_params(20, 24, 10, layers)
    trainable = sum(int(np.prod(v.shape)) for v in encoder.trainable_variables)
    assert trainable == _mlp_params(20, 24, 10, layers)


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_parameter_count_matches_peft_formula(layers):
    encoder = PromptEncoder(
        num_virtual_tokens=20,
        token_dim=24,
        encoder_hidden_size=10,
        encoder_reparameterization_type="LSTM",
        encoder_num_layers=layers,
    )
    assert encoder.count_params() == _lstm_params(20, 24, 10, layers)


def test_minilm_sized_counts():
    """The figures quoted in the README for all-MiniLM-L6-v2 with N=20."""
    mlp = PromptEncoder(num_virtual_tokens=20, token_dim=384)
    lstm = PromptEncoder(
        num_virtual_tokens=20,
        token_dim=384,
        encoder_reparameterization_type="LSTM",
    )
    assert mlp.count_params() == _mlp_params(20, 384, 384, 2) == 451_200
    assert lstm.count_params() == _lstm_params(20, 384, 384, 2) == 6_797_952


def test_mlp_math_against_numpy_reference():
    encoder = PromptEncoder(
        num_virtual_tokens=5,
        token_dim=6,
        encoder_hidden_size=4,
        encoder_num_layers=3,
    )
    table = to_numpy(encoder.embedding.embeddings)
    x = table
    for dense in encoder.encoder_layers:
        x = np.maximum(x @ to_numpy(dense.kernel) + to_numpy(dense.bias), 0)
    expected = x @ to_numpy(encoder.output_dense.kernel) + to_numpy(
        encoder.output_dense.bias
    )
    indices = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]], "int32")
    out = to_numpy(encoder(indices))
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    np.testing.assert_allclose(out[1], expected[::-1], atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(encoder.prompt_table()), expected, atol=1e-5
    )


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _numpy_lstm(x, kernel, recurrent, bias):
    h = np.zeros(recurrent.shape[0])
    c = np.zeros_like(h)
    outputs = []
    for step in x:
        z = step @ kernel + h @ recurrent + bias
        i, f, g, o = np.split(z, 4)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs)


def test_lstm_math_against_numpy_reference():
    encoder = PromptEncoder(
        num_virtual_tokens=4,
        token_dim=6,
        encoder_hidden_size=3,
        encoder_reparameterization_type="LSTM",
        encoder_num_layers=2,
    )
    x = to_numpy(encoder.embedding.embeddings)
    for layer in encoder.encoder_layers:
        if isinstance(layer, keras.layers.Bidirectional):
            fw = [to_numpy(w) for w in layer.forward_layer.weights]
            bw = [to_numpy(w) for w in layer.backward_layer.weights]
            x = np.concatenate(
                [_numpy_lstm(x, *fw), _numpy_lstm(x[::-1], *bw)[::-1]], axis=-1
            )
        else:
            x = np.maximum(x @ to_numpy(layer.kernel) + to_numpy(layer.bias), 0)
    expected = x @ to_numpy(encoder.output_dense.kernel) + to_numpy(
        encoder.output_dense.bias
    )
    np.testing.assert_allclose(
        to_numpy(encoder.prompt_table()), expected, atol=1e-5
    )


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_output_shapes(kind):
    encoder = PromptEncoder(
        num_virtual_tokens=3, token_dim=8, encoder_reparameterization_type=kind
    )
    assert tuple(encoder(np.array([0, 1, 2])).shape) == (3, 8)
    assert tuple(encoder(np.zeros((2, 3), "int32")).shape) == (2, 3, 8)
    assert tuple(encoder(np.zeros((2, 5, 3), "int32")).shape) == (2, 5, 3, 8)
    assert tuple(encoder.prompt_table().shape) == (3, 8)


def test_dropout_is_inference_free_in_prompt_table():
    encoder = PromptEncoder(
        num_virtual_tokens=3, token_dim=8, encoder_dropout=0.5
    )
    indices = np.array([[0, 1, 2]], "int32")
    np.testing.assert_allclose(
        to_numpy(encoder.prompt_table()),
        to_numpy(encoder(indices, training=False))[0],
    )
    trained = to_numpy(encoder(indices, training=True))[0]
    assert not np.allclose(trained, to_numpy(encoder.prompt_table()))


def test_requires_token_dim():
    with pytest.raises(ValueError, match="token_dim=None"):
        PromptEncoder(PromptEncoderConfig(num_virtual_tokens=3))


def test_config_and_keyword_construction_agree():
    config = PromptEncoderConfig(3, 8, "lstm", 5, 1, 0.0)
    a = PromptEncoder(config)
    b = PromptEncoder(**config.to_dict())
    assert a.prompt_config == b.prompt_config
    assert a.count_params() == b.count_params()


def test_float32_variables_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    encoder = PromptEncoder(num_virtual_tokens=3, token_dim=8)
    assert all(v.dtype == "float32" for v in encoder.weights)
    assert (
        keras.backend.standardize_dtype(encoder.prompt_table().dtype)
        == "float32"
    )


def test_serialization_round_trip(tmp_path):
    encoder = PromptEncoder(
        num_virtual_tokens=3,
        token_dim=8,
        encoder_reparameterization_type="LSTM",
    )
    restored = PromptEncoder.from_config(encoder.get_config())
    assert restored.prompt_config == encoder.prompt_config
    inputs = keras.Input((3,), dtype="int32")
    model = keras.Model(inputs, encoder(inputs))
    path = str(tmp_path / "encoder.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    indices = np.array([[0, 1, 2]], "int32")
    np.testing.assert_array_equal(
        to_numpy(loaded(indices)), to_numpy(model(indices))
    )


class _EveryObjectSeen(dict):
    """A Keras object-sharing map in which every `id()` was seen before."""

    def __init__(self, decoy):
        super().__init__()
        self.decoy = decoy

    def __contains__(self, key):
        return True

    def __getitem__(self, key):
        return {}

    def get(self, key, default=None):
        return self.decoy


def test_lstm_layers_are_their_own_inside_a_loads_sharing_scope():
    # Inside `load_model`, Keras matches `Bidirectional`'s internal copies
    # of a layer by `id()`; a fresh LSTM at the address of one serialized
    # earlier in the load was returned as that earlier layer. Force that
    # collision for every object: each encoder LSTM must still be its own.
    from keras.src.backend.common import global_state
    from keras.src.saving import serialization_lib

    decoy = keras.layers.LSTM(2, return_sequences=True, name="decoy")
    with serialization_lib.ObjectSharingScope():
        global_state.set_global_attribute(
            "shared_objects/id_to_obj_map", _EveryObjectSeen(decoy)
        )
        global_state.set_global_attribute(
            "shared_objects/id_to_config_map", _EveryObjectSeen(decoy)
        )
        # 3 virtual tokens of width 8, two bidirectional LSTMs of width 5.
        encoder = PromptEncoder(PromptEncoderConfig(3, 8, "LSTM", 5, 2, 0.0))
        still_sharing = global_state.get_global_attribute(
            "shared_objects/id_to_obj_map"
        )
    assert isinstance(still_sharing, _EveryObjectSeen)
    lstms = [
        (layer.forward_layer, layer.backward_layer)
        for layer in encoder.encoder_layers
        if isinstance(layer, keras.layers.Bidirectional)
    ]
    assert len(lstms) == 2
    for forward, backward in lstms:
        assert decoy not in (forward, backward)
        assert (forward.go_backwards, backward.go_backwards) == (False, True)
        assert forward.units == backward.units == 5
    assert encoder.count_params() == _lstm_params(3, 8, 5, 2)

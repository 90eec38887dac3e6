"""Our `PromptEncoder` against PEFT's, weight for weight (needs peft, torch)."""

import numpy as np
import pytest
from keras import ops

from keras_ptuning import PromptEncoder

# Real checkpoints, real data or child processes of other backends.
pytestmark = pytest.mark.slow

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float32")


def _peft_encoder(kind, n, d, h, layers):
    config = peft.PromptEncoderConfig(
        task_type="SEQ_CLS",
        num_virtual_tokens=n,
        token_dim=d,
        num_transformer_submodules=1,
        encoder_reparameterization_type=kind,
        encoder_hidden_size=h,
        encoder_num_layers=layers,
    )
    return peft.PromptEncoder(config).eval()


def _copy_dense(dense, linear):
    linear.weight.copy_(torch.from_numpy(_numpy(dense.kernel).T))
    linear.bias.copy_(torch.from_numpy(_numpy(dense.bias)))


def _copy_lstm(keras_lstm, torch_lstm, suffix):
    kernel, recurrent, bias = (_numpy(w) for w in keras_lstm.weights)
    getattr(torch_lstm, f"weight_ih_{suffix}").copy_(torch.from_numpy(kernel.T))
    getattr(torch_lstm, f"weight_hh_{suffix}").copy_(
        torch.from_numpy(recurrent.T)
    )
    getattr(torch_lstm, f"bias_ih_{suffix}").copy_(torch.from_numpy(bias))
    getattr(torch_lstm, f"bias_hh_{suffix}").zero_()


def _peft_count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@torch.no_grad()
def test_mlp_matches_peft():
    ours = PromptEncoder(
        num_virtual_tokens=6, token_dim=10, encoder_hidden_size=7
    )
    theirs = _peft_encoder("MLP", 6, 10, 7, 2)
    assert ours.count_params() == _peft_count(theirs)
    theirs.embedding.weight.copy_(
        torch.from_numpy(_numpy(ours.embedding.embeddings))
    )
    linears = [m for m in theirs.mlp_head if isinstance(m, torch.nn.Linear)]
    for dense, linear in zip(
        ours.encoder_layers + [ours.output_dense], linears
    ):
        _copy_dense(dense, linear)
    indices = np.tile(np.arange(6, dtype="int64"), (2, 1))
    expected = theirs(torch.from_numpy(indices)).numpy()
    np.testing.assert_allclose(_numpy(ours(indices)), expected, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_matches_peft(layers):
    ours = PromptEncoder(
        num_virtual_tokens=5,
        token_dim=8,
        encoder_hidden_size=6,
        encoder_reparameterization_type="LSTM",
        encoder_num_layers=layers,
    )
    theirs = _peft_encoder("LSTM", 5, 8, 6, layers)
    # PyTorch keeps two LSTM bias vectors where Keras keeps their sum.
    assert _peft_count(theirs) - ours.count_params() == layers * 2 * 4 * 6
    theirs.embedding.weight.copy_(
        torch.from_numpy(_numpy(ours.embedding.embeddings))
    )
    bidirectional = [
        layer
        for layer in ours.encoder_layers
        if hasattr(layer, "forward_layer")
    ]
    for i, layer in enumerate(bidirectional):
        _copy_lstm(layer.forward_layer, theirs.lstm_head, f"l{i}")
        _copy_lstm(layer.backward_layer, theirs.lstm_head, f"l{i}_reverse")
    head = [m for m in theirs.mlp_head if isinstance(m, torch.nn.Linear)]
    _copy_dense(ours.encoder_layers[-1], head[0])
    _copy_dense(ours.output_dense, head[1])
    indices = np.arange(5, dtype="int64")[None]
    expected = theirs(torch.from_numpy(indices)).numpy()
    np.testing.assert_allclose(_numpy(ours(indices)), expected, atol=1e-5)

"""`PromptEncoder`: the trainable part of P-tuning."""

import math

import keras
from keras import ops

from keras_ptuning.compat.keras_internals import outside_object_sharing
from keras_ptuning.layers.prompt_encoder_config import PromptEncoderConfig


def _torch_linear_initializers(fan_in):
    """PyTorch's `nn.Linear` initialisation, as PEFT's encoder gets it.

    Weights and biases are uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`.
    """
    limit = 1.0 / math.sqrt(fan_in)
    return {
        "kernel_initializer": keras.initializers.VarianceScaling(
            scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
        ),
        "bias_initializer": keras.initializers.RandomUniform(-limit, limit),
    }


@keras.saving.register_keras_serializable(package="keras_ptuning")
class PromptEncoder(keras.layers.Layer):
    """The P-tuning prompt encoder (Liu et al., 2021), PEFT-compatible.

    Maps virtual-token ids `0..num_virtual_tokens - 1` to continuous
    embeddings: an embedding table of shape `(num_virtual_tokens, token_dim)`
    reparameterized either by an MLP applied to each token, or by stacked
    bidirectional LSTMs over the virtual-token sequence followed by
    `Dense(2h) ReLU Dense(token_dim)`, exactly as PEFT's `PromptEncoder`.

    With `prompt_init="text"` the prompt is a fixed, non-trainable
    `base_table` (the token embeddings of a text) plus the encoder's
    output, whose last layer starts at zero: before training the prompt is
    exactly that text, and training moves it from there.

    The encoder keeps float32 variables and computes in float32 whatever the
    global dtype policy; the models that use it cast its output to the
    backbone's compute dtype.

    Args:
        config: a `keras_ptuning.PromptEncoderConfig` (or its dict) with
            `token_dim` set. Alternatively pass the config's fields as keyword
            arguments.
        num_virtual_tokens: keyword-only, as are the six below: the
            `PromptEncoderConfig` field of the same name, used when
            `config` is `None`.
        token_dim: see `num_virtual_tokens`.
        encoder_reparameterization_type: see `num_virtual_tokens`.
        encoder_hidden_size: see `num_virtual_tokens`.
        encoder_num_layers: see `num_virtual_tokens`.
        encoder_dropout: see `num_virtual_tokens`.
        prompt_init: see `num_virtual_tokens`.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, ...).

    Example:
    ```python
    encoder = keras_ptuning.PromptEncoder(num_virtual_tokens=4, token_dim=16)
    embeddings = encoder(np.array([[0, 1, 2, 3]]))  # (1, 4, 16)
    table = encoder.prompt_table()  # (4, 16), inference mode
    ```
    """

    def __init__(
        self,
        config=None,
        *,
        num_virtual_tokens=None,
        token_dim=None,
        encoder_reparameterization_type="MLP",
        encoder_hidden_size=None,
        encoder_num_layers=2,
        encoder_dropout=0.0,
        prompt_init="random",
        **kwargs,
    ):
        if config is None:
            config = PromptEncoderConfig(
                num_virtual_tokens=num_virtual_tokens,
                token_dim=token_dim,
                encoder_reparameterization_type=encoder_reparameterization_type,
                encoder_hidden_size=encoder_hidden_size,
                encoder_num_layers=encoder_num_layers,
                encoder_dropout=encoder_dropout,
                prompt_init=prompt_init,
            )
        else:
            config = PromptEncoderConfig.from_dict(config)
        if config.token_dim is None:
            raise ValueError(
                "`PromptEncoder` needs `token_dim`. Received: token_dim=None. "
                "Set it, or let `PTuningBackbone` fill it from the backbone."
            )
        # The encoder is tiny; float32 keeps its training stable under
        # mixed precision. Callers cast the output to their compute dtype.
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.prompt_config = config
        num_tokens = config.num_virtual_tokens
        dim = config.token_dim
        self.embedding = keras.layers.Embedding(
            num_tokens,
            dim,
            # `torch.nn.Embedding`'s standard-normal initialisation, as PEFT.
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
            dtype="float32",
            name="embedding",
        )
        if config.encoder_reparameterization_type == "MLP":
            self.encoder_layers, head_width = _mlp_layers(config)
        else:
            self.encoder_layers, head_width = _lstm_layers(config)
        output_initializers = _torch_linear_initializers(head_width)
        if self.starts_from_text:
            # The prompt starts exactly at `base_table`: the encoder's
            # output layer starts at zero, as LoRA's second factor does.
            output_initializers = {
                "kernel_initializer": "zeros",
                "bias_initializer": "zeros",
            }
        self.output_dense = keras.layers.Dense(
            dim,
            dtype="float32",
            name="mlp_head_output" if self.is_lstm else "mlp_output",
            **output_initializers,
        )
        self.base_table = None
        if self.starts_from_text:
            self.base_table = self.add_weight(
                shape=(num_tokens, dim),
                initializer="zeros",
                trainable=False,
                dtype="float32",
                name="base_table",
            )
        self.build()

    @property
    def starts_from_text(self):
        """Whether the prompt is `base_table` plus the encoder's output
        (`prompt_init="text"`)."""
        return self.prompt_config.prompt_init == "text"

    def set_base_table(self, table):
        """Sets the fixed `(N, D)` start of a `prompt_init="text"` prompt.

        Args:
            table: an array of shape `(num_virtual_tokens, token_dim)`.
        """
        if not self.starts_from_text:
            raise ValueError(
                "`set_base_table` needs an encoder built with "
                "prompt_init='text'. Received: prompt_init="
                f"{self.prompt_config.prompt_init!r}"
            )
        shape = tuple(ops.shape(table))
        expected = (self.num_virtual_tokens, self.token_dim)
        if shape != expected:
            raise ValueError(
                f"The base table must have shape {expected} "
                f"(num_virtual_tokens, token_dim). Received: shape {shape}"
            )
        self.base_table.assign(ops.cast(table, "float32"))

    @property
    def is_lstm(self):
        return self.prompt_config.encoder_reparameterization_type == "LSTM"

    @property
    def num_virtual_tokens(self):
        return self.prompt_config.num_virtual_tokens

    @property
    def token_dim(self):
        return self.prompt_config.token_dim

    def build(self, input_shape=None):
        if self.built:
            return
        shape = (None, self.prompt_config.num_virtual_tokens)
        self.embedding.build(shape)
        shape = shape + (self.prompt_config.token_dim,)
        for layer in self.encoder_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.output_dense.build(shape)
        self.built = True

    def call(self, indices, training=None):
        indices = ops.convert_to_tensor(indices)
        leading_shape = tuple(ops.shape(indices)[:-1])
        if len(leading_shape) != 1:
            indices = ops.reshape(indices, (-1, self.num_virtual_tokens))
        x = self.embedding(indices)
        for layer in self.encoder_layers:
            x = layer(x, training=training)
        x = self.output_dense(x)
        if self.base_table is not None:
            x = x + self.base_table
        if len(leading_shape) != 1:
            x = ops.reshape(
                x, leading_shape + (self.num_virtual_tokens, self.token_dim)
            )
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.prompt_config.token_dim,)

    def prompt_table(self, training=False):
        """The `(num_virtual_tokens, token_dim)` prompt, in inference mode.

        Args:
            training: bool. `True` computes it in training mode (dropout on),
                as the models do during `fit`.
        """
        indices = ops.expand_dims(
            ops.arange(self.num_virtual_tokens, dtype="int32"), 0
        )
        return self(indices, training=training)[0]

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(self.prompt_config.to_dict())
        return config


def _mlp_layers(config):
    """PEFT's MLP encoder: `encoder_num_layers` ReLU layers of the hidden
    size (each followed by dropout, where set), and the width they leave."""
    layers, width = [], config.token_dim
    for i in range(config.encoder_num_layers):
        layers.append(
            keras.layers.Dense(
                config.hidden_size,
                activation="relu",
                dtype="float32",
                name=f"mlp_dense_{i}",
                **_torch_linear_initializers(width),
            )
        )
        if config.encoder_dropout > 0:
            layers.append(
                keras.layers.Dropout(
                    config.encoder_dropout,
                    dtype="float32",
                    name=f"mlp_dropout_{i}",
                )
            )
        width = config.hidden_size
    return layers, config.hidden_size


def _lstm_layers(config):
    """PEFT's LSTM encoder: `encoder_num_layers` bidirectional LSTM layers
    (dropout between them, as `torch.nn.LSTM`) and a ReLU layer of twice
    the hidden size, and the width they leave."""
    hidden = config.hidden_size
    layers = []
    for i in range(config.encoder_num_layers):
        if i > 0 and config.encoder_dropout > 0:
            layers.append(
                keras.layers.Dropout(
                    config.encoder_dropout,
                    dtype="float32",
                    name=f"lstm_dropout_{i}",
                )
            )
        limit = 1.0 / math.sqrt(hidden)
        uniform = keras.initializers.RandomUniform(-limit, limit)
        lstm = keras.layers.LSTM(
            hidden,
            return_sequences=True,
            kernel_initializer=uniform,
            recurrent_initializer=uniform,
            bias_initializer=uniform,
            unit_forget_bias=False,
            dtype="float32",
            name=f"lstm_{i}",
        )
        with outside_object_sharing():
            bidirectional = keras.layers.Bidirectional(
                lstm, dtype="float32", name=f"bidirectional_lstm_{i}"
            )
        layers.append(bidirectional)
    layers.append(
        keras.layers.Dense(
            2 * hidden,
            activation="relu",
            dtype="float32",
            name="mlp_head_dense_0",
            **_torch_linear_initializers(2 * hidden),
        )
    )
    return layers, 2 * hidden

"""`PromptInjection`: puts virtual-token embeddings into the token stream."""

import keras
from keras import ops

from keras_ptuning.backbone_split import SEQUENCE_INPUT_FILL


@keras.saving.register_keras_serializable(package="keras_ptuning")
class PromptInjection(keras.layers.Layer):
    """Prepends the prompt encoder's virtual tokens to a token sequence.

    Takes token embeddings `(batch, L, D)` and the backbone's other
    sequence inputs (`padding_mask`, `segment_ids`, each `(batch, L)`), and
    returns them with `num_virtual_tokens` positions in front: the prompt
    encoder's table (computed once per call and broadcast over the batch,
    cast to the embeddings' dtype), a padding mask of ones and segment ids
    of zeros.

    Args:
        prompt_encoder: a `keras_ptuning.PromptEncoder`, or its config dict.
        max_positions: int or `None`. The backbone's position limit; inputs
            with `num_virtual_tokens + L` over it are refused.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    encoder = keras_ptuning.PromptEncoder(num_virtual_tokens=2, token_dim=8)
    injection = keras_ptuning.layers.PromptInjection(encoder)
    x, extra = injection(np.zeros((3, 5, 8)), {"padding_mask": np.ones((3, 5))})
    x.shape  # (3, 7, 8)
    ```
    """

    def __init__(self, prompt_encoder, max_positions=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(prompt_encoder, dict):
            prompt_encoder = keras.saving.deserialize_keras_object(
                prompt_encoder
            )
        self.prompt_encoder = prompt_encoder
        self.max_positions = max_positions
        self.built = True

    @property
    def num_virtual_tokens(self):
        return self.prompt_encoder.num_virtual_tokens

    def check_sequence_length(self, sequence_length):
        """Raises if `sequence_length` leaves no room for the prompt."""
        if self.max_positions is None or sequence_length is None:
            return
        if self.num_virtual_tokens + sequence_length > self.max_positions:
            raise ValueError(
                f"num_virtual_tokens + sequence_length = "
                f"{self.num_virtual_tokens} + {sequence_length} = "
                f"{self.num_virtual_tokens + sequence_length} exceeds the "
                f"backbone's maximum of {self.max_positions} positions. Use "
                f"sequences of at most "
                f"{self.max_positions - self.num_virtual_tokens} tokens."
            )

    def call(self, embeddings, sequence_inputs, training=None):
        shape = ops.shape(embeddings)
        batch_size, sequence_length = shape[0], shape[1]
        if isinstance(sequence_length, int):
            self.check_sequence_length(sequence_length)
        num_tokens = self.num_virtual_tokens
        indices = ops.expand_dims(ops.arange(num_tokens, dtype="int32"), 0)
        prompts = self.prompt_encoder(indices, training=training)
        prompts = ops.cast(prompts, embeddings.dtype)
        prompts = ops.broadcast_to(
            prompts, (batch_size, num_tokens, ops.shape(prompts)[-1])
        )
        embeddings = ops.concatenate([prompts, embeddings], axis=1)
        extended = {}
        for name, value in sequence_inputs.items():
            value = ops.convert_to_tensor(value)
            fill = ops.full(
                (batch_size, num_tokens), SEQUENCE_INPUT_FILL[name], value.dtype
            )
            extended[name] = ops.concatenate([fill, value], axis=1)
        return embeddings, extended

    def compute_output_spec(self, embeddings, sequence_inputs, training=None):
        def grow(spec):
            length = spec.shape[1]
            if length is not None:
                self.check_sequence_length(length)
                length = length + self.num_virtual_tokens
            shape = (spec.shape[0], length) + tuple(spec.shape[2:])
            return keras.KerasTensor(shape, dtype=spec.dtype)

        return grow(embeddings), {
            name: grow(spec) for name, spec in sequence_inputs.items()
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "prompt_encoder": keras.saving.serialize_keras_object(
                    self.prompt_encoder
                ),
                "max_positions": self.max_positions,
            }
        )
        return config

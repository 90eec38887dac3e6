"""`PromptInjection`: puts virtual-token embeddings into the token stream."""

import contextlib

import keras
from keras import ops

from keras_ptuning.layers.multi_task_prompt_encoder import (
    MultiTaskPromptEncoder,
)
from keras_ptuning.placement.prompt_placement import prompt_placement
from keras_ptuning.placement.prompt_sources import (
    prompt_source as make_prompt_source,
)


@keras.saving.register_keras_serializable(package="keras_ptuning")
class PromptInjection(keras.layers.Layer):
    """Puts the prompt encoder's virtual tokens into a token sequence.

    Two placements:

    - Prepend (`placeholder_id=None`, PEFT's only mode): takes token
      embeddings `(batch, L, D)` and the backbone's other sequence inputs
      (`padding_mask`, `segment_ids`, each `(batch, L)`), and returns them
      with `num_virtual_tokens` positions in front: the prompt (computed once
      per call and broadcast over the batch, cast to the embeddings' dtype),
      a padding mask of ones and segment ids of zeros.
    - Slots (`placeholder_id` an int): the `token_ids` passed to `call` hold
      `placeholder_id` where virtual tokens go; the k-th placeholder of a row
      takes the k-th virtual token, every other position keeps its
      embedding, and nothing changes length. Embed the real tokens with
      `mask_placeholders(token_ids)` so the placeholder id never reaches the
      embedding table. Rows must hold exactly `num_virtual_tokens`
      placeholders: the models check that on concrete inputs; inside a
      compiled function nothing is checked, a row's placeholders after the
      N-th all take the last virtual token and missing ones leave virtual
      tokens unused.

    With a `keras_ptuning.MultiTaskPromptEncoder` as `prompt_encoder`, each
    row takes the prompt of its task: pass `task_id` `(batch,)` to `call`.

    The prompt comes from the prompt encoder (`prompt_source="encoder"`,
    for training) or from the layer's own non-trainable `(N, D)` variable
    `prompt_table` (`prompt_source="table"`: the collapsed prompt that
    adapters and exports hold, as PEFT's inference mode).

    The two choices are independent and each is one small object: the
    layer's `placement` (`keras_ptuning.placement.prompt_placement`: prepend or
    slots) and `source` (`keras_ptuning.placement.prompt_sources`: encoder,
    table, or one encoder per task). `call` asks the source for the prompts and
    the placement to put them in.

    Args:
        prompt_encoder: a `keras_ptuning.PromptEncoder` or
            `keras_ptuning.MultiTaskPromptEncoder`, or its config dict.
        max_positions: int or `None`. The backbone's position limit; inputs
            with `num_virtual_tokens + L` over it are refused.
        prompt_source: `"encoder"` (default) or `"table"`.
        placeholder_id: `None` (default: prepend) or the int id that marks
            virtual-token slots in `token_ids` (`-1`, never a vocabulary id,
            is the usual choice).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    encoder = keras_ptuning.PromptEncoder(num_virtual_tokens=2, token_dim=8)
    injection = keras_ptuning.PromptInjection(encoder)
    x, extra = injection(np.zeros((3, 5, 8)), {"padding_mask": np.ones((3, 5))})
    x.shape  # (3, 7, 8)
    ```
    """

    def __init__(
        self,
        prompt_encoder,
        max_positions=None,
        prompt_source="encoder",
        placeholder_id=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.placement = prompt_placement(placeholder_id)
        if isinstance(prompt_encoder, dict):
            prompt_encoder = keras.saving.deserialize_keras_object(
                prompt_encoder
            )
        self.prompt_encoder = prompt_encoder
        self.max_positions = max_positions
        self.prompt_table = self.add_weight(
            shape=(prompt_encoder.num_virtual_tokens, prompt_encoder.token_dim),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            name="prompt_table",
        )
        self.source = None
        self._prompt_training = None
        self.set_prompt_source(prompt_source)
        self.built = True

    def set_prompt_source(self, prompt_source):
        """Switches between the encoder and the collapsed `prompt_table`.

        With `"table"` the encoder is frozen, since it no longer takes part.
        Back on `"encoder"` it trains again only if it did before the switch
        to the table: an encoder the user froze stays frozen. Models must
        retrace their compiled functions after a switch.
        """
        if self.source is None or self.source.trains_encoder:
            # Leaving (or starting on) the encoder: remember its setting.
            self._encoder_trainable = self.prompt_encoder.trainable
        self.source = make_prompt_source(
            prompt_source, self.prompt_encoder, self.prompt_table
        )
        self.prompt_encoder.trainable = (
            self.source.trains_encoder and self._encoder_trainable
        )

    @property
    def prompt_source(self):
        """`"encoder"` or `"table"`: where the prompt comes from."""
        return self.source.name

    @contextlib.contextmanager
    def prompt_training_mode(self):
        """Makes calls inside compute the prompt in training mode, whatever
        `training` they get (the frozen backbone around it runs as at
        inference: `PTuningBackbone(backbone_dropout=False)`)."""
        self._prompt_training = True
        try:
            yield
        finally:
            self._prompt_training = None

    def current_prompt(self, training=None):
        """The `(N, D)` prompt in effect (float32); `(T, N, D)` for a
        multi-task prompt."""
        return self.source.table(training)

    @property
    def num_virtual_tokens(self):
        return self.prompt_encoder.num_virtual_tokens

    @property
    def is_multi_task(self):
        """Whether the prompt comes from a `MultiTaskPromptEncoder`."""
        return isinstance(self.prompt_encoder, MultiTaskPromptEncoder)

    @property
    def placeholder_id(self):
        """The slot marker in `token_ids`, or `None` when prepending."""
        return self.placement.placeholder_id

    @property
    def uses_slots(self):
        """Whether virtual tokens go to placeholder slots (else prepended)."""
        return self.placement.uses_slots

    def mask_placeholders(self, token_ids):
        """`token_ids` as the embedding sees them: placeholders become 0."""
        return self.placement.mask_placeholders(token_ids)

    def check_sequence_length(self, sequence_length):
        """Raises if `sequence_length` leaves no room for the prompt."""
        self.placement.check_sequence_length(
            sequence_length, self.max_positions, self.num_virtual_tokens
        )

    def call(
        self,
        embeddings,
        sequence_inputs,
        token_ids=None,
        task_id=None,
        training=None,
    ):
        length = ops.shape(embeddings)[1]
        if isinstance(length, int):
            self.check_sequence_length(length)
        if self._prompt_training:
            training = True
        prompts, first = self.source.prompts(task_id, training)
        return self.placement.insert(
            embeddings,
            sequence_inputs,
            ops.cast(prompts, embeddings.dtype),
            first,
            self.num_virtual_tokens,
            token_ids,
        )

    def compute_output_spec(
        self,
        embeddings,
        sequence_inputs,
        token_ids=None,
        task_id=None,
        training=None,
    ):
        def grow(spec):
            self.check_sequence_length(spec.shape[1])
            length = self.placement.output_length(
                spec.shape[1], self.num_virtual_tokens
            )
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
                "prompt_source": self.prompt_source,
                "placeholder_id": self.placeholder_id,
            }
        )
        return config

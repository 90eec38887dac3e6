"""`PromptInjection`: puts virtual-token embeddings into the token stream."""

import numbers

import keras
from keras import ops

from keras_ptuning.backbone_split import SEQUENCE_INPUT_FILL

PROMPT_SOURCES = ("encoder", "table")

# The default placeholder id of slot placement: no vocabulary uses it.
DEFAULT_PLACEHOLDER_ID = -1


def check_placeholder_id(placeholder_id):
    """Raises unless `placeholder_id` is `None` or an int."""
    if placeholder_id is None:
        return
    if isinstance(placeholder_id, bool) or not isinstance(
        placeholder_id, numbers.Integral
    ):
        raise TypeError(
            "`placeholder_id` must be an int (slot placement) or None "
            f"(prepend). Received: placeholder_id={placeholder_id!r}"
        )
    if not -(2**31) <= placeholder_id < 2**31:
        raise ValueError(
            "`placeholder_id` must fit in int32. Received: "
            f"placeholder_id={placeholder_id}"
        )


def slot_indices(token_ids, placeholder_id, num_virtual_tokens):
    """`(is_slot, k)`: where the placeholders are, and for each position the
    virtual token its slot takes (the k-th placeholder of a row takes k).

    Beyond the N-th placeholder every slot takes the last virtual token.
    """
    is_slot = ops.equal(token_ids, placeholder_id)
    index = ops.cumsum(ops.cast(is_slot, "int32"), axis=1) - 1
    return is_slot, ops.clip(index, 0, num_virtual_tokens - 1)


def task_offsets(task_id, num_tasks, num_virtual_tokens):
    """`(batch, 1)` first rows of each row's prompt in a `(T * N, D)` table.

    Out-of-range ids cannot raise inside compiled steps: they are clipped.
    """
    task_id = ops.clip(ops.cast(task_id, "int32"), 0, num_tasks - 1)
    return ops.reshape(task_id * num_virtual_tokens, (-1, 1))


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
    injection = keras_ptuning.layers.PromptInjection(encoder)
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
        check_placeholder_id(placeholder_id)
        self.placeholder_id = (
            None if placeholder_id is None else int(placeholder_id)
        )
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
        self.prompt_source = None
        self.set_prompt_source(prompt_source)
        self.built = True

    def set_prompt_source(self, prompt_source):
        """Switches between the encoder and the collapsed `prompt_table`.

        With `"table"` the encoder is frozen, since it no longer takes part.
        Models must retrace their compiled functions after a switch.
        """
        if prompt_source not in PROMPT_SOURCES:
            raise ValueError(
                f"`prompt_source` must be one of {PROMPT_SOURCES}. "
                f"Received: prompt_source={prompt_source!r}"
            )
        if prompt_source == "table" and self.is_multi_task:
            raise ValueError(
                "A multi-task prompt runs on its encoders: "
                "prompt_source='table' is for single-task models."
            )
        self.prompt_source = prompt_source
        self.prompt_encoder.trainable = prompt_source == "encoder"

    def current_prompt(self, training=None):
        """The `(N, D)` prompt in effect (float32); `(T, N, D)` for a
        multi-task prompt."""
        if self.is_multi_task:
            return self.prompt_encoder.prompt_tables(training=training)
        if self.prompt_source == "table":
            return ops.convert_to_tensor(self.prompt_table)
        return self.prompt_encoder.prompt_table(training=training)

    @property
    def num_virtual_tokens(self):
        return self.prompt_encoder.num_virtual_tokens

    @property
    def is_multi_task(self):
        """Whether the prompt comes from a `MultiTaskPromptEncoder`."""
        return hasattr(self.prompt_encoder, "prompt_tables")

    def _row_prompts(self, task_id, dtype, training):
        """`(flat_table, first_index)`: rows' prompts are `flat_table`'s
        rows `first_index + k`; `first_index` is `(batch, 1)` or 0."""
        if not self.is_multi_task:
            return ops.cast(self.current_prompt(training), dtype), 0
        if task_id is None:
            raise ValueError(
                "A multi-task prompt needs `task_id`. Received: task_id=None"
            )
        tables = self.prompt_encoder.prompt_tables(training=training)
        flat = ops.reshape(tables, (-1, ops.shape(tables)[-1]))
        first = task_offsets(
            task_id, self.prompt_encoder.num_tasks, self.num_virtual_tokens
        )
        return ops.cast(flat, dtype), first

    @property
    def uses_slots(self):
        """Whether virtual tokens go to placeholder slots (else prepended)."""
        return self.placeholder_id is not None

    def mask_placeholders(self, token_ids):
        """`token_ids` with placeholders replaced by id 0, for embedding."""
        if not self.uses_slots:
            return token_ids
        return ops.where(
            ops.equal(token_ids, self.placeholder_id), 0, token_ids
        )

    def check_sequence_length(self, sequence_length):
        """Raises if `sequence_length` leaves no room for the prompt."""
        if self.max_positions is None or sequence_length is None:
            return
        if self.uses_slots:
            if sequence_length > self.max_positions:
                raise ValueError(
                    f"sequence_length={sequence_length} exceeds the "
                    f"backbone's maximum of {self.max_positions} positions."
                )
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

    def call(
        self,
        embeddings,
        sequence_inputs,
        token_ids=None,
        task_id=None,
        training=None,
    ):
        shape = ops.shape(embeddings)
        batch_size, sequence_length = shape[0], shape[1]
        if isinstance(sequence_length, int):
            self.check_sequence_length(sequence_length)
        num_tokens = self.num_virtual_tokens
        prompts, first = self._row_prompts(task_id, embeddings.dtype, training)
        if self.uses_slots:
            if token_ids is None:
                raise ValueError(
                    "Slot placement needs the `token_ids` that mark the "
                    "slots. Received: token_ids=None"
                )
            is_slot, slot_index = slot_indices(
                token_ids, self.placeholder_id, num_tokens
            )
            virtual = ops.take(prompts, first + slot_index, axis=0)
            embeddings = ops.where(
                ops.expand_dims(is_slot, -1), virtual, embeddings
            )
            return embeddings, dict(sequence_inputs)
        if self.is_multi_task:
            positions = ops.arange(num_tokens, dtype="int32")[None, :]
            prompts = ops.take(prompts, first + positions, axis=0)
        else:
            prompts = ops.broadcast_to(
                ops.expand_dims(prompts, 0),
                (batch_size, num_tokens, ops.shape(prompts)[-1]),
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

    def compute_output_spec(
        self,
        embeddings,
        sequence_inputs,
        token_ids=None,
        task_id=None,
        training=None,
    ):
        def grow(spec):
            length = spec.shape[1]
            if self.uses_slots:
                self.check_sequence_length(length)
                return keras.KerasTensor(spec.shape, dtype=spec.dtype)
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
                "prompt_source": self.prompt_source,
                "placeholder_id": self.placeholder_id,
            }
        )
        return config

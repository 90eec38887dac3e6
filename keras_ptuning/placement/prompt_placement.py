"""Where virtual tokens go: prepended, or at placeholder slots.

A placement is a small stateless object, chosen once from `placeholder_id`
(`prompt_placement(placeholder_id)`). It holds everything that differs
between the two placements, for the forward pass and for cached
generation, so each placement's code path reads in one class:

- `PrependPlacement` (`placeholder_id=None`, PEFT's only mode): the
  prompt goes in front; the sequence grows by `N` and outputs drop those
  positions again.
- `SlotPlacement(placeholder_id)`: `token_ids` mark the `N` slots with
  `placeholder_id`; the k-th slot of a row takes virtual token k and
  nothing changes length.

Where the prompts come from (one encoder, a collapsed table, one encoder
per task) is the other, independent choice:
`keras_ptuning.placement.prompt_sources`.
Both give and take prompts as `(flat_table, first)`: row `b`'s virtual
token `k` is `flat_table[first[b] + k]` (`first` is `0` for one prompt).
"""

import numbers

from keras import ops
from keras import tree

from keras_ptuning.backbones.backbone_split import SEQUENCE_INPUT_FILL

# The default placeholder id of slot placement: no vocabulary uses it.
DEFAULT_PLACEHOLDER_ID = -1
# The multi-task models' input: each row's task index, `(batch,)`.
TASK_ID = "task_id"


def check_placeholder_id(placeholder_id):
    """Raises unless `placeholder_id` is `None` or an int in int32."""
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


def _too_long(num_tokens, length, max_positions):
    return ValueError(
        f"num_virtual_tokens + sequence_length = {num_tokens} + {length} = "
        f"{num_tokens + length} exceeds the backbone's maximum of "
        f"{max_positions} positions. Use sequences of at most "
        f"{max_positions - num_tokens} tokens."
    )


class PrependPlacement:
    """Virtual tokens in front of every row (PEFT's placement)."""

    placeholder_id = None
    uses_slots = False

    def mask_placeholders(self, token_ids):
        """`token_ids` as the embedding sees them (unchanged)."""
        return token_ids

    def max_sequence_length(self, max_positions, num_tokens):
        """The longest input that fits with the prompt, or `None`."""
        if max_positions is None:
            return None
        return max_positions - num_tokens

    def check_sequence_length(self, length, max_positions, num_tokens):
        if max_positions is None or length is None:
            return
        if num_tokens + length > max_positions:
            raise _too_long(num_tokens, length, max_positions)

    def output_length(self, length, num_tokens):
        """The sequence length the backbone's body runs on."""
        return None if length is None else length + num_tokens

    def insert(
        self, embeddings, sequence_inputs, prompts, first, num_tokens, token_ids
    ):
        """Prepends each row's prompt, ones to `padding_mask`, zeros to
        `segment_ids`."""
        batch_size = ops.shape(embeddings)[0]
        dim = ops.shape(prompts)[-1]
        positions = ops.arange(num_tokens, dtype="int32")[None, :]
        rows = ops.take(prompts, first + positions, axis=0)
        rows = ops.broadcast_to(rows, (batch_size, num_tokens, dim))
        embeddings = ops.concatenate([rows, embeddings], axis=1)
        extended = {}
        for name, value in sequence_inputs.items():
            value = ops.convert_to_tensor(value)
            fill = ops.full(
                (batch_size, num_tokens), SEQUENCE_INPUT_FILL[name], value.dtype
            )
            extended[name] = ops.concatenate([fill, value], axis=1)
        return embeddings, extended

    def drop_virtual_positions(self, outputs, num_tokens):
        """The backbone's outputs aligned with the inputs again."""

        def drop(x):
            return x[:, num_tokens:] if len(x.shape) >= 3 else x

        return tree.map_structure(drop, outputs)

    def virtual_token_inputs(self, inputs, first_id, num_tokens):
        """Generation inputs with each row's virtual-token ids in front.

        `first_id` is the id of each row's first virtual token (the
        vocabulary size, plus the task's offset with several tasks).
        """
        token_ids = ops.convert_to_tensor(inputs["token_ids"], "int32")
        padding_mask = ops.cast(inputs["padding_mask"], "bool")
        batch_size = ops.shape(token_ids)[0]
        virtual_ids = ops.broadcast_to(
            first_id + ops.arange(num_tokens, dtype="int32")[None, :],
            (batch_size, num_tokens),
        )
        return {
            "token_ids": ops.concatenate([virtual_ids, token_ids], 1),
            "padding_mask": ops.concatenate(
                [ops.ones((batch_size, num_tokens), "bool"), padding_mask], 1
            ),
        }

    def generated_outputs(self, outputs, vocabulary_size, num_tokens):
        """Generated ids aligned with the inputs: the prompt dropped."""
        return {
            name: outputs[name][:, num_tokens:]
            for name in ("token_ids", "padding_mask")
        }


class SlotPlacement:
    """Virtual tokens at the rows' placeholder slots.

    Args:
        placeholder_id: the int that marks the slots in `token_ids`.
    """

    uses_slots = True

    def __init__(self, placeholder_id):
        check_placeholder_id(placeholder_id)
        self.placeholder_id = int(placeholder_id)

    def mask_placeholders(self, token_ids):
        """`token_ids` with placeholders replaced by id 0, for embedding."""
        return ops.where(
            ops.equal(token_ids, self.placeholder_id), 0, token_ids
        )

    def max_sequence_length(self, max_positions, num_tokens):
        return max_positions

    def check_sequence_length(self, length, max_positions, num_tokens):
        if max_positions is None or length is None:
            return
        if length > max_positions:
            raise ValueError(
                f"sequence_length={length} exceeds the backbone's maximum "
                f"of {max_positions} positions."
            )

    def output_length(self, length, num_tokens):
        return length

    def insert(
        self, embeddings, sequence_inputs, prompts, first, num_tokens, token_ids
    ):
        """Puts the k-th virtual token of each row at its k-th slot."""
        if token_ids is None:
            raise ValueError(
                "Slot placement needs the `token_ids` that mark the slots. "
                "Received: token_ids=None"
            )
        is_slot, k = slot_indices(token_ids, self.placeholder_id, num_tokens)
        virtual = ops.take(prompts, first + k, axis=0)
        embeddings = ops.where(
            ops.expand_dims(is_slot, -1), virtual, embeddings
        )
        return embeddings, dict(sequence_inputs)

    def drop_virtual_positions(self, outputs, num_tokens):
        return outputs

    def virtual_token_inputs(self, inputs, first_id, num_tokens):
        """Generation inputs with the k-th placeholder of each row turned
        into its k-th virtual-token id."""
        token_ids = ops.convert_to_tensor(inputs["token_ids"], "int32")
        is_slot, k = slot_indices(token_ids, self.placeholder_id, num_tokens)
        return {
            "token_ids": ops.where(is_slot, first_id + k, token_ids),
            "padding_mask": ops.cast(inputs["padding_mask"], "bool"),
        }

    def generated_outputs(self, outputs, vocabulary_size, num_tokens):
        """Generated ids with virtual-token ids back to the placeholder."""
        generated = outputs["token_ids"]
        return {
            "token_ids": ops.where(
                ops.greater_equal(generated, vocabulary_size),
                self.placeholder_id,
                generated,
            ),
            "padding_mask": outputs["padding_mask"],
        }


def prompt_placement(placeholder_id):
    """`PrependPlacement()` for `None`, else `SlotPlacement(placeholder_id)`."""
    if placeholder_id is None:
        return PrependPlacement()
    return SlotPlacement(placeholder_id)

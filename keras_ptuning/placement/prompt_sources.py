"""Where the prompt comes from: an encoder, a collapsed table, or one
encoder per task.

A source is a small object over the prompt state that a
`keras_ptuning.PromptInjection` owns (its prompt encoder and its
non-trainable `prompt_table` variable), chosen by name with
`prompt_source(name, prompt_encoder, prompt_table)`, the one place that
says which combinations exist:

| `prompt_encoder` | `"encoder"` | `"table"` |
| --- | --- | --- |
| `PromptEncoder` | `EncoderSource` | `TableSource` |
| `MultiTaskPromptEncoder` | `TaskEncodersSource` | refused |

Every source gives the prompts as `(flat_table, first)`: row `b`'s virtual
token `k` is `flat_table[first[b] + k]`, with `first` `0` for one prompt.
Where the prompts go is the placement's business
(`keras_ptuning.placement.prompt_placement`).
"""

from keras import ops

from keras_ptuning.layers.multi_task_prompt_encoder import (
    MultiTaskPromptEncoder,
)

PROMPT_SOURCES = ("encoder", "table")


def task_offsets(task_id, num_tasks, num_virtual_tokens):
    """`(batch, 1)` first rows of each row's prompt in a `(T * N, D)` table.

    Out-of-range ids cannot raise inside compiled steps: they are clipped.
    """
    task_id = ops.clip(ops.cast(task_id, "int32"), 0, num_tasks - 1)
    return ops.reshape(task_id * num_virtual_tokens, (-1, 1))


class EncoderSource:
    """The prompt encoder's output: what trains.

    Args:
        prompt_encoder: a `keras_ptuning.PromptEncoder`.
    """

    name = "encoder"
    trains_encoder = True

    def __init__(self, prompt_encoder):
        self.prompt_encoder = prompt_encoder

    def table(self, training=False):
        """The `(N, D)` prompt, float32."""
        return self.prompt_encoder.prompt_table(training=training)

    def prompts(self, task_id=None, training=None):
        return self.table(training), 0


class TableSource:
    """The collapsed `(N, D)` prompt in a non-trainable variable, as
    adapters, PEFT adapters and exports hold it; the encoder is idle.

    Args:
        prompt_table: the `(N, D)` float32 variable.
    """

    name = "table"
    trains_encoder = False

    def __init__(self, prompt_table):
        self.prompt_table = prompt_table

    def table(self, training=False):
        return ops.convert_to_tensor(self.prompt_table)

    def prompts(self, task_id=None, training=None):
        return self.table(), 0


class TaskEncodersSource:
    """One prompt encoder per task; each row takes its task's prompt.

    Args:
        prompt_encoder: a `keras_ptuning.MultiTaskPromptEncoder`.
    """

    name = "encoder"
    trains_encoder = True

    def __init__(self, prompt_encoder):
        self.prompt_encoder = prompt_encoder

    def table(self, training=False):
        """The `(T, N, D)` prompts of all tasks, float32."""
        return self.prompt_encoder.prompt_tables(training=training)

    def prompts(self, task_id=None, training=None):
        if task_id is None:
            raise ValueError(
                "A multi-task prompt needs `task_id`. Received: task_id=None"
            )
        tables = self.table(training)
        flat = ops.reshape(tables, (-1, ops.shape(tables)[-1]))
        first = task_offsets(
            task_id,
            self.prompt_encoder.num_tasks,
            self.prompt_encoder.num_virtual_tokens,
        )
        return flat, first


def prompt_source(name, prompt_encoder, prompt_table):
    """The source called `name` over a model's prompt state.

    Args:
        name: `"encoder"` or `"table"`.
        prompt_encoder: a `PromptEncoder` or `MultiTaskPromptEncoder`.
        prompt_table: the `(N, D)` variable that holds a collapsed prompt.
    """
    if name not in PROMPT_SOURCES:
        raise ValueError(
            f"`prompt_source` must be one of {PROMPT_SOURCES}. "
            f"Received: prompt_source={name!r}"
        )
    if isinstance(prompt_encoder, MultiTaskPromptEncoder):
        if name == "table":
            raise ValueError(
                "A multi-task prompt runs on its encoders: "
                "prompt_source='table' is for single-task models. Received: "
                f"prompt_source={name!r} with tasks "
                f"{prompt_encoder.task_names}"
            )
        return TaskEncodersSource(prompt_encoder)
    if name == "table":
        return TableSource(prompt_table)
    return EncoderSource(prompt_encoder)

"""`MultiTaskPromptEncoder`: one prompt encoder per task, picked per row."""

import keras
from keras import ops

from keras_ptuning.compat.keras_internals import tracking_unlocked
from keras_ptuning.layers.prompt_encoder import PromptEncoder
from keras_ptuning.layers.prompt_encoder_config import PromptEncoderConfig
from keras_ptuning.layers.trainable_tasks import TrainableTasksMixin


def check_task_names(task_names):
    """Raises unless `task_names` is a non-empty list of distinct strings."""
    if not isinstance(task_names, (list, tuple)) or not task_names:
        raise ValueError(
            "`task_names` must be a non-empty list of strings. Received: "
            f"task_names={task_names!r}"
        )
    for name in task_names:
        if not isinstance(name, str) or not name:
            raise ValueError(
                "Every task name must be a non-empty string. Received: "
                f"task_names={task_names!r}"
            )
    if len(set(task_names)) != len(task_names):
        raise ValueError(
            f"Task names must be distinct. Received: task_names={task_names!r}"
        )


@keras.saving.register_keras_serializable(package="keras_ptuning")
class MultiTaskPromptEncoder(TrainableTasksMixin, keras.layers.Layer):
    """A prompt table with one P-tuning prompt encoder per task.

    Every task has its own `keras_ptuning.PromptEncoder` with the same
    config, so one frozen backbone serves many tasks and a batch may mix
    them: `prompt_tables()` stacks the tasks' prompts into
    `(num_tasks, num_virtual_tokens, token_dim)`, and the model picks a row's
    prompt by its `task_id` (the index of its task in `task_names`). Tasks
    can be added later (`add_task`) and frozen one by one
    (`set_trainable_tasks`) without touching the others' weights.

    Args:
        config: a `keras_ptuning.PromptEncoderConfig` (or its dict) with
            `token_dim` set, shared by every task.
        task_names: list of distinct task names, in `task_id` order.
        trainable_tasks: `None` (all) or the names of the tasks that train.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    encoders = keras_ptuning.MultiTaskPromptEncoder(
        keras_ptuning.PromptEncoderConfig(4, token_dim=16), ["sst2", "rte"]
    )
    encoders.prompt_tables().shape  # (2, 4, 16)
    encoders.add_task("qnli")       # task_id 2
    ```
    """

    def __init__(self, config, task_names, trainable_tasks=None, **kwargs):
        super().__init__(**kwargs)
        config = PromptEncoderConfig.from_dict(config)
        if config.token_dim is None:
            raise ValueError(
                "`config.token_dim` must be set. Received: token_dim=None"
            )
        check_task_names(list(task_names))
        self.config = config
        self.task_names = []
        self.encoders = []
        for name in task_names:
            self.add_task(name)
        if trainable_tasks is not None:
            self.set_trainable_tasks(trainable_tasks)
        self.built = True

    def _task_layers(self):
        return getattr(self, "encoders", [])

    def add_task(self, name):
        """Adds a task with a fresh encoder; returns its `task_id`."""
        check_task_names(self.task_names + [name])
        encoder = PromptEncoder(self.config, name=f"task_{name}")
        encoder.build()
        # New state after build, as Keras' own `enable_lora` adds it.
        with tracking_unlocked(self):
            self.encoders.append(encoder)
        self.task_names.append(name)
        return len(self.task_names) - 1

    def task_id(self, name):
        """The `task_id` of task `name`."""
        if name not in self.task_names:
            raise ValueError(
                f"Unknown task {name!r}. Known tasks: {self.task_names}"
            )
        return self.task_names.index(name)

    @property
    def num_tasks(self):
        return len(self.task_names)

    @property
    def num_virtual_tokens(self):
        return self.config.num_virtual_tokens

    @property
    def token_dim(self):
        return self.config.token_dim

    def prompt_tables(self, training=None):
        """`(num_tasks, num_virtual_tokens, token_dim)`, float32."""
        return ops.stack(
            [
                encoder.prompt_table(training=training)
                for encoder in self.encoders
            ]
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "config": self.config.to_dict(),
                "task_names": list(self.task_names),
                "trainable_tasks": self.trainable_tasks,
            }
        )
        return config

"""`TaskHeads`: one `Dense` head per task, picked per row by `task_id`."""

import keras
from keras import ops

from keras_ptuning.compat.keras_internals import tracking_unlocked
from keras_ptuning.layers.trainable_tasks import TrainableTasksMixin

# The classifier head's initial kernel: keras-hub's BERT-style text
# classifiers and HF `*ForSequenceClassification` (what PEFT trains) start
# their heads at a 0.02 standard deviation, with zero bias.
HEAD_STDDEV = 0.02


def head_kernel_initializer():
    """The initializer of every classifier head's kernel."""
    return keras.initializers.TruncatedNormal(stddev=HEAD_STDDEV)


@keras.saving.register_keras_serializable(package="keras_ptuning")
class TaskHeads(TrainableTasksMixin, keras.layers.Layer):
    """A `Dense` layer per task; each row goes through its task's head.

    The classifier head of a multi-task P-tuning model: every task keeps
    its own weights, so training or adding one task leaves the others'
    outputs unchanged.

    Args:
        units: int. Output size of every head (the number of classes).
        task_names: list of task names, in `task_id` order.
        activation: activation of every head; `None` for logits.
        trainable_tasks: `None` (all) or the names of the tasks that train.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    heads = keras_ptuning.TaskHeads(2, ["sst2", "imdb"])
    heads(np.ones((3, 16)), task_id=np.array([0, 1, 0]))  # (3, 2)
    ```
    """

    def __init__(
        self, units, task_names, activation=None, trainable_tasks=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.task_names = []
        self.heads = []
        self._input_dim = None
        for name in task_names:
            self.add_task(name)
        if trainable_tasks is not None:
            self.set_trainable_tasks(trainable_tasks)

    def add_task(self, name):
        """Adds a fresh head for task `name`; returns its index."""
        head = keras.layers.Dense(
            self.units,
            activation=self.activation,
            kernel_initializer=head_kernel_initializer(),
            dtype=self.dtype_policy,
            name=f"logits_{name}",
        )
        if self._input_dim is not None:
            head.build((None, self._input_dim))
        # New state after build, as Keras' own `enable_lora` adds it.
        with tracking_unlocked(self):
            self.heads.append(head)
        self.task_names.append(name)
        return len(self.heads) - 1

    def _task_layers(self):
        return getattr(self, "heads", [])

    def build(self, inputs_shape, task_id_shape=None):
        self._input_dim = inputs_shape[-1]
        for head in self.heads:
            head.build(inputs_shape)
        self.built = True

    def call(self, inputs, task_id):
        outputs = ops.stack([head(inputs) for head in self.heads], axis=1)
        task_id = ops.clip(ops.cast(task_id, "int32"), 0, len(self.heads) - 1)
        index = ops.reshape(task_id, (-1, 1, 1))
        return ops.take_along_axis(outputs, index, axis=1)[:, 0]

    def compute_output_shape(self, inputs_shape, task_id_shape=None):
        return tuple(inputs_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "task_names": list(self.task_names),
                "activation": keras.activations.serialize(self.activation),
                "trainable_tasks": self.trainable_tasks,
            }
        )
        return config

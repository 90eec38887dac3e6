"""`TrainableTasksMixin`: per-task layers that train or stay frozen."""

import keras


class TrainableTasksMixin:
    """For layers holding one sublayer per task (`task_names`, in order).

    `set_trainable_tasks(names)` trains the sublayers of `names` only. The
    choice is the layer's own state: setting the layer (or a model holding
    it) trainable again, which Keras passes down to every sublayer, leaves
    the frozen tasks frozen. Subclasses list their per-task sublayers in
    `_task_layers()`.
    """

    def _task_layers(self):
        raise NotImplementedError

    def set_trainable_tasks(self, names):
        """Trains tasks `names` only; the others are frozen."""
        for name in names:
            if name not in self.task_names:
                raise ValueError(
                    f"Unknown task {name!r}. Known tasks: {self.task_names}"
                )
        self._frozen_tasks = set(self.task_names) - set(names)
        self._apply_frozen_tasks()

    @property
    def trainable_tasks(self):
        """The tasks that train, in `task_id` order."""
        frozen = getattr(self, "_frozen_tasks", set())
        return [name for name in self.task_names if name not in frozen]

    def _apply_frozen_tasks(self):
        frozen = getattr(self, "_frozen_tasks", set())
        task_names = getattr(self, "task_names", [])
        for task, layer in zip(task_names, self._task_layers()):
            layer.trainable = self.trainable and task not in frozen

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        keras.layers.Layer.trainable.fset(self, value)
        self._apply_frozen_tasks()

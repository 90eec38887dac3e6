"""`PTuningTask`: what every P-tuning task model adds to its keras-hub task."""

import keras
import keras_hub

from keras_ptuning import keras_internals


class PTuningTask:
    """Mixin for the P-tuning task models, before their keras-hub task class.

    - Calls check the inputs before Keras standardizes them, so errors name
      the argument, the value and our limits. `fit`, `evaluate` and
      `predict` on arrays check every row's placeholder count (slot
      placement) and `task_id` (multi-task) up front, since compiled steps
      cannot.
    - Serialization is keras-hub's: `get_config` holds the
      `PTuningBackbone` (which owns all prompt state) and the preprocessor;
      a `.keras` file restores the compile config and the optimizer state
      (`compile_from_config`, one for every task), so `fit` resumes. The
      saved `jit_compile` is the one passed to `compile` (`"auto"` unless
      given): Keras would save what `"auto"` resolved to on the saving
      backend, so a model saved on JAX would load on PyTorch wrapped in
      `torch.compile`, and on a TensorFlow CPU in XLA.
    - `fit`, `evaluate` and `predict` also take a `keras.utils.PyDataset`
      (such as `keras_ptuning.LengthBucketedDataset`), as core Keras models
      do. Its batches are model-ready, so they go straight to Keras:
      keras-hub's own pipeline takes only arrays and `tf.data` datasets, and
      would run the preprocessor again. So does any input of a model
      without a preprocessor: keras-hub's pipeline would only wrap arrays
      in a `tf.data` pipeline, whose threads compete with a JAX or PyTorch
      step for the same cores. Nor does a dict holding every model input
      (`token_ids`, ...: already preprocessed, e.g. by calling the
      preprocessor once), which would not be raw input for it anyway.
    """

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads a preset written by this task's `save_to_preset`.

        A p-tuned preset holds the whole task: its `PTuningBackbone` (the
        frozen backbone with the prompt, as trained or loaded) or, for a
        `PTuningCausalLMClassifier` without a prompt, the plain backbone,
        its head and its preprocessor. keras-hub finds a task class by the
        preset's backbone class; here the task's own `task.json` decides,
        so a preset loads whatever backbone it holds. Keyword arguments
        override the task's config, as in keras-hub (`num_classes=` starts
        a fresh head).
        """
        task_cls = keras_internals.preset_task_class(preset)
        if task_cls is not None and issubclass(task_cls, cls):
            return keras_internals.preset_loader(preset).load_task(
                task_cls, load_weights, "num_classes" not in kwargs, **kwargs
            )
        return super().from_preset(preset, load_weights, **kwargs)

    @property
    def model_input_names(self):
        """The names of the model's inputs (the backbone's, by default)."""
        return list(self.backbone.input_names)

    def __call__(self, inputs, *args, **kwargs):
        self.backbone.check_inputs(
            inputs, self.model_input_names, type(self).__name__
        )
        return super().__call__(inputs, *args, **kwargs)

    def _check_array_inputs(self, x):
        names = set(self.backbone.input_names)
        if isinstance(x, dict) and names <= set(x):
            self.backbone.check_values(x)

    def add_task(self, name):
        """Adds a task (multi-task models); returns its `task_id`.

        The new task gets a fresh prompt encoder (and head, where the task
        has one); the other tasks' weights and outputs do not change.
        Compiled functions are retraced and a compiled model is recompiled
        from its compile config, with a fresh optimizer.
        """
        task_id = self.backbone.add_task(name)
        self._add_task_head(name)
        self._reset_after_prompt_change()
        return task_id

    def set_trainable_tasks(self, names):
        """Trains tasks `names` only (prompt and head); freezes the others.

        As `add_task`, recompiles a compiled model.
        """
        self.backbone.set_trainable_tasks(names)
        self._set_trainable_task_heads(names)
        self._reset_after_prompt_change()

    def compile(self, *args, jit_compile="auto", **kwargs):
        self._jit_compile_argument = jit_compile
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is None:
            return config
        if "jit_compile" in config:
            config["jit_compile"] = getattr(
                self, "_jit_compile_argument", config["jit_compile"]
            )
        if getattr(self, "sampler", None) is not None:
            config["sampler"] = keras_hub.samplers.serialize(self.sampler)
        return config

    def compile_from_config(self, config):
        # Keras skips this for models with a custom `compile()`. Restoring
        # the compile config and building the optimizer lets Keras load the
        # saved optimizer state, so `fit` resumes where it stopped.
        config = dict(config)
        sampler = config.pop("sampler", None)
        config = keras.saving.deserialize_keras_object(config)
        if sampler is not None:
            config["sampler"] = keras_hub.samplers.get(sampler)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _add_task_head(self, name):
        pass

    def _set_trainable_task_heads(self, names):
        pass

    def _straight_to_keras(self, x):
        """Whether `x` skips keras-hub's preprocessing pipeline."""
        model_ready = isinstance(x, dict) and set(
            self.model_input_names
        ) <= set(x)
        return (
            isinstance(x, keras.utils.PyDataset)
            or self.preprocessor is None
            or model_ready
        )

    def fit(self, x=None, *args, **kwargs):
        self._check_array_inputs(x)
        if self._straight_to_keras(x):
            return keras.Model.fit(self, x, *args, **kwargs)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._check_array_inputs(x)
        if self._straight_to_keras(x):
            return keras.Model.evaluate(self, x, *args, **kwargs)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._check_array_inputs(x)
        if self._straight_to_keras(x):
            return keras.Model.predict(self, x, *args, **kwargs)
        return super().predict(x, *args, **kwargs)

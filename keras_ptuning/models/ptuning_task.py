"""`PTuningTask`: what every P-tuning task model adds to its keras-hub task."""

import warnings

import keras
import keras_hub

from keras_ptuning.backbones.frozen_prefix import FrozenPrefixCache
from keras_ptuning.backbones.ptuning_backbone import PTuningBackbone
from keras_ptuning.compat import keras_internals
from keras_ptuning.layers.prompt_encoder_config import PromptEncoderConfig
from keras_ptuning.preprocessing.choice_template import ChoiceTemplate
from keras_ptuning.preprocessing.prompt_template import PromptTemplate
from keras_ptuning.saving import prompt_presets

# `optimizer="auto"`: `Adam` at this rate, for every task.
AUTO_LEARNING_RATE = 1e-3


def _prompt_template(preprocessor):
    """A `ChoiceTemplate`'s `PromptTemplate`, else the preprocessor."""
    if isinstance(preprocessor, ChoiceTemplate):
        return preprocessor.template
    return preprocessor


def keras_hub_argument_order(task_name, preprocessor, prompt_config):
    """`(preprocessor, prompt_config)` of a task built with keras-hub's
    argument order (`preprocessor` right after the backbone, or after
    `num_classes`); the order before it (`prompt_config` first) still
    works for one release, with a `DeprecationWarning`.

    The two are told apart by type: a `PromptEncoderConfig` (or its dict)
    where the preprocessor goes, or a keras-hub preprocessor where the
    config goes.
    """
    config_first = isinstance(preprocessor, PromptEncoderConfig) or (
        isinstance(preprocessor, dict) and "num_virtual_tokens" in preprocessor
    )
    if config_first or isinstance(prompt_config, keras_hub.models.Preprocessor):
        warnings.warn(
            f"{task_name} takes `preprocessor` before `prompt_config` now, "
            "as keras-hub's tasks do; the old positional order is read as "
            "before, for this release only. Pass them as keywords "
            "(`preprocessor=..., prompt_config=...`).",
            DeprecationWarning,
            stacklevel=3,
        )
        return prompt_config, preprocessor
    return preprocessor, prompt_config


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

    # The keras-hub preprocessor a base preset gives this task (`None`:
    # raw text goes through a `template=` only).
    preset_preprocessor_cls = None

    @classmethod
    def from_preset(
        cls,
        preset,
        load_weights=True,
        num_virtual_tokens=None,
        prompt_config=None,
        template=None,
        sequence_length=None,
        **kwargs,
    ):
        """Builds the task from a keras-hub preset, or loads a p-tuned one.

        From a base preset (a keras-hub preset name, an `hf://` or
        `kaggle://` handle, or a local folder such as
        `keras_ptuning.presets.minilm_preset_dir()`), as keras-hub's own
        `from_preset` does: the frozen backbone with its weights, the
        preprocessor (the family's keras-hub preprocessor, or a
        `PromptTemplate` with `template=`) and a fresh prompt. A preset
        written by this task's `save_to_preset` loads whole instead (the
        frozen backbone with the prompt as trained or loaded, the head,
        the preprocessor); keyword arguments then override its config, as
        in keras-hub (`num_classes=` starts a fresh head).

        Args:
            preset: the preset.
            load_weights: bool. Load the pretrained (or p-tuned) weights;
                else they are randomly initialised.
            num_virtual_tokens: int. The prompt's length (a default
                `PromptEncoderConfig`); or give `prompt_config`, or a
                `template` with slots, which sets both.
            prompt_config: a `keras_ptuning.PromptEncoderConfig`.
            template: optional str, a `keras_ptuning.PromptTemplate`
                template (slots, fields, anchors) over the preset's
                tokenizer: the task then takes its fields as raw text.
            sequence_length: optional int, the preprocessor's length. By
                default the keras-hub preprocessor's, cut to what the
                backbone's positions leave beside a prepended prompt.
            **kwargs: the task's other arguments (`num_classes`,
                `pooling`, `placeholder_id`, `task_names`, ...; for a
                `PTuningCausalLMClassifier`, `choices` and
                `max_choice_length`, which go to its `ChoiceTemplate`).

        Example:
        ```python
        classifier = keras_ptuning.PTuningTextClassifier.from_preset(
            "bert_base_en_uncased", num_classes=2, num_virtual_tokens=20
        )
        sentences = ["a gripping, funny film", "a dull mess"]
        classifier.fit(sentences, [1, 0])
        ```
        """
        task_cls = keras_internals.preset_task_class(preset)
        if task_cls is not None and issubclass(task_cls, cls):
            for name, value in (
                ("num_virtual_tokens", num_virtual_tokens),
                ("prompt_config", prompt_config),
                ("template", template),
                ("sequence_length", sequence_length),
            ):
                if value is not None:
                    raise ValueError(
                        f"{preset!r} is a p-tuned {task_cls.__name__} preset "
                        f"with its own prompt and preprocessor. Received: "
                        f"{name}={value!r}"
                    )
            return keras_internals.preset_loader(preset).load_task(
                task_cls, load_weights, "num_classes" not in kwargs, **kwargs
            )
        if num_virtual_tokens is not None:
            if prompt_config is not None:
                raise ValueError(
                    "Pass `num_virtual_tokens` or `prompt_config`, not both."
                    f" Received: num_virtual_tokens={num_virtual_tokens!r}, "
                    f"prompt_config={prompt_config!r}"
                )
            prompt_config = PromptEncoderConfig(num_virtual_tokens)
        if template is not None and not isinstance(template, str):
            raise TypeError(
                "`template` must be a str (a PromptTemplate template). "
                f"Received: template of type {type(template).__name__}"
            )
        if template is None and prompt_config is None:
            raise ValueError(
                f"{cls.__name__}.from_preset needs the prompt: "
                "num_virtual_tokens=, prompt_config= or a template= with "
                "slots. Received none of them"
            )
        return cls._from_base_preset(
            preset,
            load_weights,
            prompt_config,
            template,
            sequence_length,
            kwargs,
        )

    def save_to_preset(
        self,
        preset_dir,
        max_shard_size=10,
        base_preset=None,
        include_encoder=False,
    ):
        """Saves the task to a keras-hub preset directory.

        `from_preset(preset_dir)` (this class's, or keras-hub's `Task`,
        `CausalLM`, `TextClassifier`...) loads it back on any backend.

        Args:
            preset_dir: the directory.
            max_shard_size: int or float, the largest weights file in GB
                (keras-hub's `Task.save_to_preset`).
            base_preset: `None` (default: a whole preset, the frozen
                backbone's weights included) or str, the keras-hub preset
                name, `hf://`/`kaggle://` handle or directory the frozen
                backbone was loaded from: a prompt-only preset of
                kilobytes, holding the prompt, the head, the configs
                (template, verbalizer) and that handle, for
                `keras_hub.upload_preset`. Loading it loads the base preset
                and refuses one of another class, architecture or
                checkpoint (see `keras_ptuning.saving.prompt_presets`).
            include_encoder: bool, with `base_preset`: also keep the prompt
                encoder's weights, so that a model loading the preset can
                resume training; by default the preset holds the collapsed
                prompt table and loads on it (`prompt_source="table"`), as
                `save_adapter` does.

        Example:
        ```python
        classifier = keras_ptuning.PTuningTextClassifier.from_preset(
            "bert_base_en_uncased", num_classes=2, num_virtual_tokens=20
        )
        classifier.save_to_preset(
            "my_prompt", base_preset="bert_base_en_uncased"
        )
        keras_ptuning.PTuningTextClassifier.from_preset("my_prompt")
        ```
        """
        prompt_presets.save_to_preset(
            lambda directory: super(PTuningTask, self).save_to_preset(
                directory, max_shard_size=max_shard_size
            ),
            self,
            preset_dir,
            base_preset,
            include_encoder,
        )

    @classmethod
    def from_config(cls, config):
        task = super().from_config(config)
        backbone = task.backbone
        base = getattr(backbone, "base_preset", None)
        if base is not None and task.preprocessor is not None:
            # A prompt-only preset holds no vocabulary: the base has it.
            prompt_presets.read_assets_from_base(task.preprocessor, base)
        return task

    # Arguments of the `PromptTemplate` a `template=` builds.
    preset_template_kwargs = {}

    @classmethod
    def _from_base_preset(
        cls, preset, load_weights, prompt_config, template, length, kwargs
    ):
        backbone = keras_hub.models.Backbone.from_preset(
            preset, load_weights=load_weights
        )
        preprocessor = cls._preset_preprocessor(preset, template, length)
        ptuning = PTuningBackbone.wrap(
            backbone,
            prompt_config,
            kwargs.pop("placeholder_id", None),
            _prompt_template(preprocessor),
            kwargs.pop("task_names", None),
        )
        preprocessor = cls._fitting_preprocessor(
            preset, template, length, ptuning, preprocessor
        )
        return cls._from_parts(preset, ptuning, preprocessor, kwargs)

    @classmethod
    def _fitting_preprocessor(
        cls, preset, template, length, ptuning, preprocessor
    ):
        """`preprocessor`, or one whose default length is cut to what the
        backbone's positions leave beside a prepended prompt (a given
        `length` is the task's to check)."""
        limit = ptuning.max_sequence_length
        current = getattr(_prompt_template(preprocessor), "sequence_length", 0)
        if length is None and limit is not None and (current or 0) > limit:
            return cls._preset_preprocessor(preset, template, limit)
        return preprocessor

    @classmethod
    def _from_parts(cls, preset, ptuning, preprocessor, kwargs):
        return cls(ptuning, preprocessor=preprocessor, **kwargs)

    @classmethod
    def _preset_preprocessor(cls, preset, template, length):
        """The preprocessor of a task built from a base preset."""
        if template is not None:
            tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
            extra = {} if length is None else {"sequence_length": length}
            return PromptTemplate(
                template, tokenizer, **cls.preset_template_kwargs, **extra
            )
        if cls.preset_preprocessor_cls is None:
            return None
        preprocessor = cls.preset_preprocessor_cls.from_preset(preset)
        if length is not None:
            preprocessor.sequence_length = length
        return preprocessor

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

    def compile(self, optimizer="auto", *args, jit_compile="auto", **kwargs):
        # Every task's `"auto"` optimizer: only the prompt encoder (and a
        # head) train, from scratch, at a larger rate than fine-tuning's.
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(AUTO_LEARNING_RATE)
        self._jit_compile_argument = jit_compile
        super().compile(optimizer, *args, jit_compile=jit_compile, **kwargs)

    def _model_inputs(self, inputs):
        """`inputs` as model inputs: a dict holding `token_ids` as it is,
        anything else through the preprocessor."""
        if isinstance(inputs, dict) and "token_ids" in inputs:
            return inputs
        if self.preprocessor is None:
            raise ValueError(
                "This model has no preprocessor: pass a dict of "
                f"{self.model_input_names}. Received: {type(inputs).__name__}"
            )
        return self.preprocessor(inputs)

    def _wrap_backbone(
        self,
        backbone,
        prompt_config,
        placeholder_id,
        preprocessor,
        task_names=None,
        decoder=False,
    ):
        """`backbone` as a `PTuningBackbone` (`PTuningBackbone.wrap`),
        checked to be a decoder where the task needs one and to match the
        preprocessor's inputs."""
        backbone = PTuningBackbone.wrap(
            backbone, prompt_config, placeholder_id, preprocessor, task_names
        )
        if decoder:
            backbone.check_decoder(type(self).__name__)
        backbone.check_preprocessor(preprocessor)
        return backbone

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

    def fit(self, x=None, *args, frozen_prefix_cache_bytes=None, **kwargs):
        """Trains the model, as `keras.Model.fit` does.

        Args:
            frozen_prefix_cache_bytes: `None` (default) or an int: a
                memory budget in bytes for keeping each training row's
                frozen prefix (its states before its first virtual token)
                from its first step to the end of this call, so that later
                epochs run only the positions after it (a decoder with
                prompt slots and a frozen backbone; see
                `keras_ptuning.backbones.frozen_prefix.FrozenPrefixCache`). Rows
                beyond the budget run their prefix forward every step, and
                a warning says so. Refused with `backbone_dropout=True`: a
                kept prefix would reuse one dropout draw in every epoch.
                Where steps cannot split (TensorFlow, JAX under `jit`) it
                has no effect, and a warning says so.
            *args: `keras.Model.fit`'s positional arguments.
            **kwargs: `keras.Model.fit`'s keyword arguments.
        """
        if frozen_prefix_cache_bytes is None:
            return self._fit(x, *args, **kwargs)
        backbone = self._frozen_prefix_backbone(frozen_prefix_cache_bytes)
        backbone.frozen_prefix_cache = FrozenPrefixCache(
            frozen_prefix_cache_bytes
        )
        try:
            return self._fit(x, *args, **kwargs)
        finally:
            self.last_frozen_prefix_cache = backbone.frozen_prefix_cache
            self.last_frozen_prefix_cache.rows = {}
            backbone.frozen_prefix_cache = None

    def _frozen_prefix_backbone(self, max_bytes):
        FrozenPrefixCache(max_bytes)  # Checks the budget.
        backbone = self.backbone
        if not isinstance(backbone, PTuningBackbone) or not (
            backbone.splits_frozen_prefix
        ):
            raise ValueError(
                "`frozen_prefix_cache_bytes` needs a p-tuned decoder with "
                "prompt slots (placeholder_id) whose backbone is frozen (no "
                "LoRA) and `frozen_prefix=True`: only there is the text "
                "before the first virtual token frozen. Received: "
                f"frozen_prefix_cache_bytes={max_bytes} for "
                f"{type(self).__name__} on {type(backbone).__name__}"
            )
        if backbone.backbone_dropout:
            raise ValueError(
                "`frozen_prefix_cache_bytes` with backbone_dropout=True "
                "would reuse one dropout draw of each row's prefix in every "
                "epoch. Build the PTuningBackbone with backbone_dropout="
                f"False. Received: frozen_prefix_cache_bytes={max_bytes}"
            )
        backend = keras.config.backend()
        if backend == "tensorflow" or (
            backend == "jax" and not self.run_eagerly
        ):
            warnings.warn(
                "`frozen_prefix_cache_bytes` has no effect here: "
                f"{backend}'s compiled steps cannot split the sequence "
                "(see keras_ptuning.backbones.frozen_prefix); they run it "
                "whole.",
                stacklevel=3,
            )
        return backbone

    def _fit(self, x=None, *args, **kwargs):
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

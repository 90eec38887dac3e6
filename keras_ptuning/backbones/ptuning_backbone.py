"""`PTuningBackbone`: a frozen keras-hub backbone with virtual tokens."""

import json

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_ptuning.backbones import frozen_prefix
from keras_ptuning.backbones.backbone_split import BackboneSplit
from keras_ptuning.compat import keras_internals
from keras_ptuning.input_validation import check_inputs
from keras_ptuning.input_validation import check_model_kwargs
from keras_ptuning.input_validation import check_placeholder_counts
from keras_ptuning.input_validation import check_positive_int
from keras_ptuning.input_validation import concrete_numpy
from keras_ptuning.layers.multi_task_prompt_encoder import (
    MultiTaskPromptEncoder,
)
from keras_ptuning.layers.prompt_encoder import PromptEncoder
from keras_ptuning.layers.prompt_encoder_config import PromptEncoderConfig
from keras_ptuning.placement.prompt_injection import PromptInjection
from keras_ptuning.placement.prompt_placement import TASK_ID
from keras_ptuning.placement.prompt_placement import check_placeholder_id
from keras_ptuning.preprocessing.prompt_template import PromptTemplate
from keras_ptuning.saving import prompt_presets
from keras_ptuning.saving.adapter import AdapterMixin


def model_inputs(input_names):
    """`keras.Input`s for `input_names`: `(batch,)` for `task_id`,
    `(batch, sequence)` for the others, all int32."""
    return {
        name: keras.Input(
            shape=() if name == TASK_ID else (None,), dtype="int32", name=name
        )
        for name in input_names
    }


@keras.saving.register_keras_serializable(package="keras_ptuning")
class PTuningBackbone(AdapterMixin, keras_hub.models.Backbone):
    """A frozen keras-hub backbone run with trainable virtual tokens.

    Wraps any keras-hub text backbone whose graph applies a token embedding to
    `token_ids` (BERT, DistilBERT, RoBERTa, GPT-2, Gemma, Gemma 3 text,
    Llama, Llama 3, Mistral, Qwen, ...). It freezes the backbone and never
    changes its weights. On a call it embeds the real tokens with the
    backbone's own embedding layer, puts `num_virtual_tokens` embeddings
    from a `keras_ptuning.PromptEncoder` into the sequence, and runs the
    rest of the backbone. It takes exactly the backbone's inputs and returns
    the backbone's output structure, aligned with the inputs (length `L`);
    pooled outputs are the backbone's own.

    This object owns everything about the prompt: where it comes from
    (`prompt_source`, the collapsed table's values, the tasks and which of
    them train) and where it goes (`placeholder_id`). Task models serialize
    it whole, so a `.keras` file, an adapter or an export always carries
    the prompt the model runs on.

    Where the virtual tokens go:

    - Prepended (`placeholder_id=None`, the default, as PEFT does): at
      positions `0..N-1`, with `padding_mask` extended by ones and
      `segment_ids` by zeros; sequence outputs drop those positions.
    - Anywhere (`placeholder_id` an int, e.g. `-1`): `token_ids` holds
      `placeholder_id` at the N slots of every row, such as a
      `keras_ptuning.PromptTemplate` writes; the k-th slot takes the k-th
      virtual token, real tokens keep their embeddings and positions, and
      nothing changes length. Each row must hold exactly N placeholders:
      eager calls and `fit` on arrays check it and raise a `ValueError`;
      inside compiled functions it is not checked (see
      `keras_ptuning.PromptInjection`). Not expressible in PEFT.

    Args:
        backbone: a `keras_hub.models.Backbone` for text.
        prompt_config: a `keras_ptuning.PromptEncoderConfig` (or its dict).
            A `token_dim` of `None` takes the backbone's hidden size.
        prompt_source: `"encoder"` (default: the prompt encoder makes the
            virtual tokens, for training) or `"table"` (the collapsed prompt
            in the non-trainable `prompt_injection.prompt_table`, as loaded
            from an adapter).
        placeholder_id: `None` (default: prepend the virtual tokens) or the
            int that marks their slots in `token_ids`.
        backbone_dropout: bool. Whether the frozen backbone's own dropout
            (and any other training-mode behaviour of its layers) runs
            while training. Defaults to `False`: the backbone computes as
            at inference, Keras's convention for a frozen base model
            (`base_model(x, training=False)`), so the same prompt gives
            the same outputs in every epoch (what frozen-prefix caching
            relies on) and a step costs what plain prompt tuning does
            (the backbone's dropout layers are skipped).
            The prompt encoder's own dropout trains either way. `True`
            is PEFT's behaviour (HF's `model.train()` turns the frozen
            model's dropout on too), and what models saved before this
            option did.
        task_names: `None` (default: one prompt) or a list of task names:
            one prompt encoder per task (a `MultiTaskPromptEncoder`) and an
            extra `task_id` input `(batch,)`, the index of each row's task,
            so one batch can mix tasks. Tasks can be added later
            (`add_task`) and trained one at a time (`set_trainable_tasks`).
        trainable_tasks: `None` (default: all) or the names of the tasks
            whose prompts train (multi-task only).
        **kwargs: standard `keras.Model` arguments (`name`, ...).

    Example:
    ```python
    backbone = keras_hub.models.BertBackbone.from_preset("bert_tiny_en_uncased")
    model = keras_ptuning.PTuningBackbone(
        backbone, keras_ptuning.PromptEncoderConfig(num_virtual_tokens=20)
    )
    outputs = model({
        "token_ids": np.ones((2, 12), "int32"),
        "segment_ids": np.zeros((2, 12), "int32"),
        "padding_mask": np.ones((2, 12), "int32"),
    })
    outputs["sequence_output"].shape  # (2, 12, 128)
    ```
    """

    def __init__(
        self,
        backbone,
        prompt_config,
        prompt_source="encoder",
        placeholder_id=None,
        task_names=None,
        trainable_tasks=None,
        backbone_dropout=False,
        **kwargs,
    ):
        check_model_kwargs(kwargs, type(self).__name__)
        if not isinstance(backbone_dropout, bool):
            raise TypeError(
                "`backbone_dropout` must be a bool. Received: "
                f"backbone_dropout={backbone_dropout!r}"
            )
        base_preset = None
        if prompt_presets.is_base_reference(backbone):
            base_preset = backbone[prompt_presets.BASE_PRESET]
            backbone = prompt_presets.load_base_backbone(backbone)
        elif isinstance(backbone, dict):
            backbone = keras.layers.deserialize(backbone)
        split = BackboneSplit(backbone)
        check_placeholder_id(placeholder_id)
        prompt_config = _checked_prompt_config(
            prompt_config, split, placeholder_id
        )
        backbone.trainable = False

        # === Layers ===
        prompt_encoder = _prompt_encoder(
            prompt_config, task_names, trainable_tasks
        )
        injection = PromptInjection(
            prompt_encoder,
            max_positions=split.max_positions,
            prompt_source=prompt_source,
            placeholder_id=placeholder_id,
            dtype=backbone.dtype_policy,
            name="prompt_injection",
        )
        self.backbone = backbone
        self.prompt_encoder = prompt_encoder
        self.prompt_injection = injection
        self.token_embedding = backbone.token_embedding
        # The base preset the frozen backbone came from, where it was
        # loaded from a prompt-only preset's reference.
        self.base_preset = base_preset
        # JSON of the reference while a prompt-only preset is written
        # (`keras_ptuning.saving.prompt_presets`).
        self.writing_base_reference = None

        # === Functional model ===
        input_names = list(split.input_names)
        if task_names is not None:
            input_names.append(TASK_ID)
        inputs = model_inputs(input_names)
        token_ids = inputs["token_ids"]
        embeddings = split.embed_tokens(injection.mask_placeholders(token_ids))
        sequence_inputs = {name: inputs[name] for name in split.input_names[1:]}
        embeddings, sequence_inputs = injection(
            embeddings,
            sequence_inputs,
            token_ids=token_ids if injection.uses_slots else None,
            task_id=inputs.get(TASK_ID),
        )
        embeddings = split.finish_embeddings(embeddings)
        outputs = split.body(
            [embeddings] + [sequence_inputs[n] for n in split.input_names[1:]]
        )
        outputs = injection.placement.drop_virtual_positions(
            outputs, prompt_config.num_virtual_tokens
        )
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            dtype=backbone.dtype_policy,
            **kwargs,
        )

        # === Config ===
        self.prompt_config = prompt_config
        self.input_names = input_names
        self.hidden_dim = split.hidden_dim
        self.is_causal = split.is_causal
        self.causal_lm_class = split.causal_lm_class
        self.max_positions = split.max_positions
        self.backbone_dropout = backbone_dropout
        # Training steps run the text before the first virtual token as
        # constants, where they can (`keras_ptuning.backbones.frozen_prefix`).
        self.frozen_prefix = True
        # A `frozen_prefix.FrozenPrefixCache` while a `fit` keeps one.
        self.frozen_prefix_cache = None
        self._split = split

    def call(self, inputs, training=None, mask=None, **kwargs):
        if not training:
            return super().call(inputs, training=training, mask=mask, **kwargs)
        if self.splits_frozen_prefix:
            split = frozen_prefix.split_point(
                inputs["token_ids"], self.placeholder_id
            )
            if split is not None:
                return self._call_split(inputs, split)
        if not self.backbone_dropout:
            # The frozen backbone computes as at inference; the prompt
            # encoder alone trains in training mode.
            with self.prompt_injection.prompt_training_mode():
                return super().call(inputs, training=False, mask=mask, **kwargs)
        return super().call(inputs, training=True, mask=mask, **kwargs)

    @property
    def splits_frozen_prefix(self):
        """Whether training steps run the text before the first virtual
        token as constants (`keras_ptuning.backbones.frozen_prefix`): a
        decoder with slots, every backbone weight frozen (no LoRA)."""
        return (
            self.frozen_prefix
            and self.uses_slots
            and self._split.is_causal
            and frozen_prefix.supports(self.backbone, self.causal_lm_class)
            and not self.backbone.trainable_weights
        )

    def embed_inputs(self, inputs, training=None):
        """The spliced embeddings the backbone's body runs on (real and
        virtual tokens, the backbone's token-embedding output) and the
        sequence inputs that go with them (`padding_mask`, ...)."""
        injection = self.prompt_injection
        token_ids = inputs["token_ids"]
        embeddings = self._split.embed_tokens(
            injection.mask_placeholders(token_ids)
        )
        sequence_inputs = {
            name: inputs[name] for name in self._split.input_names[1:]
        }
        return injection(
            embeddings,
            sequence_inputs,
            token_ids=token_ids if self.uses_slots else None,
            task_id=inputs.get(TASK_ID),
            training=training,
        )

    def _call_split(self, inputs, split):
        token_ids = inputs["token_ids"]
        embeddings, sequence_inputs = self.embed_inputs(inputs, training=True)
        cache = self.frozen_prefix_cache
        keys = None
        if cache is not None:
            keys = frozen_prefix.row_keys(
                ops.convert_to_numpy(token_ids),
                ops.convert_to_numpy(inputs["padding_mask"]),
                self.placeholder_id,
            )
        return frozen_prefix.run_split(
            self.causal_lm_class,
            self.backbone,
            embeddings,
            sequence_inputs["padding_mask"],
            split,
            training=self.backbone_dropout,
            prefix_cache=cache,
            row_keys=keys,
        )

    @classmethod
    def wrap(
        cls,
        backbone,
        prompt_config,
        placeholder_id=None,
        preprocessor=None,
        task_names=None,
    ):
        """`backbone` if it is a `PTuningBackbone`, else wraps it.

        Task models take either; a plain keras-hub backbone needs
        `prompt_config`, unless `preprocessor` is a
        `keras_ptuning.PromptTemplate`: its slot count and placeholder id
        then give the number of virtual tokens and the slot placement.
        """
        if isinstance(backbone, cls):
            backbone.check_wraps(prompt_config, placeholder_id, task_names)
            return backbone
        if isinstance(preprocessor, PromptTemplate):
            if prompt_config is None:
                prompt_config = preprocessor.prompt_config()
            if placeholder_id is None:
                placeholder_id = preprocessor.placeholder_id
        if prompt_config is None:
            raise ValueError(
                "`prompt_config` is required when `backbone` is a plain "
                "keras-hub backbone. Received: prompt_config=None"
            )
        ptuning = cls(
            backbone,
            prompt_config,
            placeholder_id=placeholder_id,
            task_names=task_names,
        )
        init_ids = getattr(preprocessor, "prompt_init_ids", None)
        # A slot count that differs is the task's `check_preprocessor`'s
        # error to raise.
        if (
            init_ids is not None
            and len(init_ids) == ptuning.num_virtual_tokens
            and ptuning.prompt_config.prompt_init == "text"
        ):
            ptuning.init_prompt_from_token_ids(init_ids)
        return ptuning

    def check_wraps(
        self, prompt_config=None, placeholder_id=None, task_names=None
    ):
        """Raises if arguments given with this backbone ask for another
        prompt than it has (task models would otherwise ignore them)."""
        if prompt_config is not None:
            if isinstance(prompt_config, dict):
                prompt_config = PromptEncoderConfig.from_dict(prompt_config)
            config = prompt_config.with_token_dim(self.hidden_dim)
            if config != self.prompt_config:
                raise ValueError(
                    "`prompt_config` differs from the given PTuningBackbone's"
                    f" ({self.prompt_config.to_dict()}); pass one or the "
                    f"other. Received: prompt_config={config.to_dict()}"
                )
        if placeholder_id is not None and placeholder_id != self.placeholder_id:
            raise ValueError(
                "`placeholder_id` differs from the given PTuningBackbone's "
                f"({self.placeholder_id}). Received: "
                f"placeholder_id={placeholder_id}"
            )
        if task_names is not None and list(task_names) != self.task_names:
            raise ValueError(
                "`task_names` differ from the given PTuningBackbone's "
                f"({self.task_names}). Received: task_names={task_names!r}"
            )

    def _ptuning_backbone(self):
        return self

    @property
    def num_virtual_tokens(self):
        return self.prompt_config.num_virtual_tokens

    @property
    def is_multi_task(self):
        return self.prompt_injection.is_multi_task

    @property
    def task_names(self):
        """The task names in `task_id` order, or `None` for one prompt."""
        if not self.is_multi_task:
            return None
        return list(self.prompt_encoder.task_names)

    def _check_multi_task(self, what):
        if not self.is_multi_task:
            raise ValueError(
                f"`{what}` needs a multi-task model (built with task_names)."
            )

    def add_task(self, name):
        """Adds a task with a fresh prompt encoder; returns its `task_id`.

        The other tasks' weights and outputs do not change. Models holding
        this backbone must retrace and recompile (the task models'
        `add_task` does it).
        """
        self._check_multi_task("add_task")
        return self.prompt_encoder.add_task(name)

    def set_trainable_tasks(self, names):
        """Trains the prompts of tasks `names` only; the others are frozen."""
        self._check_multi_task("set_trainable_tasks")
        self.prompt_encoder.set_trainable_tasks(list(names))

    @property
    def trainable_tasks(self):
        """The tasks whose prompts train, or `None` for one prompt."""
        if not self.is_multi_task:
            return None
        return self.prompt_encoder.trainable_tasks

    @property
    def placement(self):
        """Where the virtual tokens go
        (`keras_ptuning.placement.prompt_placement`)."""
        return self.prompt_injection.placement

    @property
    def placeholder_id(self):
        """The slot marker in `token_ids`, or `None` when prepending."""
        return self.placement.placeholder_id

    @property
    def uses_slots(self):
        return self.placement.uses_slots

    @property
    def max_sequence_length(self):
        """The longest input sequence that fits, or `None` if unlimited."""
        return self.placement.max_sequence_length(
            self.max_positions, self.num_virtual_tokens
        )

    @property
    def prompt_source(self):
        return self.prompt_injection.prompt_source

    def prompt_table(self):
        """The `(N, D)` prompt in effect, in inference mode (float32)."""
        return self.prompt_injection.current_prompt(training=False)

    def collapse_prompt(self, table=None):
        """Freezes the prompt into `prompt_injection.prompt_table`.

        Args:
            table: optional `(N, D)` array to use; defaults to the prompt
                encoder's current output (PEFT's "prompt embeddings to save").

        Compiled functions of models holding this backbone must be retraced
        afterwards (the task models' `load_adapter` does it).
        """
        if table is None:
            table = self.prompt_encoder.prompt_table()
        self.prompt_injection.prompt_table.assign(ops.cast(table, "float32"))
        self.prompt_injection.set_prompt_source("table")

    def init_prompt_from_token_ids(self, token_ids):
        """Starts the prompt at the token embeddings of `token_ids`.

        Needs `prompt_init="text"` in the prompt config. Afterwards the
        k-th virtual token is exactly the embedding of `token_ids[k]`, so
        the untrained model reads the text those ids spell (a
        `keras_ptuning.PromptTemplate` with `[P:"text"]` slots calls this
        with its slot text's ids). The encoder's own weights are not
        touched; its output layer starts at zero.

        Args:
            token_ids: a list of `num_virtual_tokens` vocabulary ids.
        """
        if self.is_multi_task or not self.prompt_encoder.starts_from_text:
            raise ValueError(
                "`init_prompt_from_token_ids` needs a single-task prompt "
                "built with prompt_init='text'. Received: prompt_config="
                f"{self.prompt_config.to_dict()}"
            )
        if self.prompt_source != "encoder":
            raise ValueError(
                "`init_prompt_from_token_ids` starts the prompt encoder, but "
                "this model runs on its collapsed prompt table (as loaded "
                "from an adapter), which it would leave in place. Call "
                "`prompt_injection.set_prompt_source('encoder')` first to "
                "replace it. Received: prompt_source="
                f"{self.prompt_source!r}"
            )
        ids = np.asarray(token_ids).reshape(-1)
        vocabulary_size = int(self.token_embedding.input_dim)
        if ids.shape[0] != self.num_virtual_tokens or not np.issubdtype(
            ids.dtype, np.integer
        ):
            raise ValueError(
                f"`token_ids` must be {self.num_virtual_tokens} int ids "
                f"(num_virtual_tokens). Received: token_ids={ids.tolist()}"
            )
        if np.any(ids < 0) or np.any(ids >= vocabulary_size):
            raise ValueError(
                f"`token_ids` must be in [0, {vocabulary_size}) (the "
                f"vocabulary). Received: token_ids={ids.tolist()}"
            )
        table = self.token_embedding(ops.convert_to_tensor(ids, "int32"))
        self.prompt_encoder.set_base_table(ops.cast(table, "float32"))

    @property
    def lora_rank(self):
        """The LoRA rank of the wrapped backbone, or `None` without LoRA."""
        return keras_internals.lora_rank(self.backbone)

    def enable_lora(self, rank, target_layer_names=None):
        """Adds keras-hub LoRA to the wrapped backbone (P-tuning + LoRA).

        Calls the backbone's own `enable_lora` (keras-hub's query and value
        layers by default) and trains only the new LoRA factors: every
        other backbone variable, biases of the LoRA layers included, stays
        frozen and bit-identical. The prompt trains as before. Compiled
        functions of models holding this backbone must be recompiled.

        Args:
            rank: int >= 1. The LoRA rank.
            target_layer_names: `None` (keras-hub's default layers) or a
                list of layer names.
        """
        check_positive_int("rank", rank)
        if self.lora_rank is not None:
            raise ValueError(
                f"LoRA is already enabled (rank {self.lora_rank}). "
                f"Received: rank={rank}"
            )
        self.backbone.enable_lora(rank, target_layer_names)
        self._lora_target_layer_names = target_layer_names
        self._freeze_all_but_lora()

    def _freeze_all_but_lora(self, lora_trainable=True):
        for variable in self.backbone.weights:
            is_lora = variable.path.endswith(("lora_kernel_a", "lora_kernel_b"))
            variable.trainable = is_lora and lora_trainable

    def check_decoder(self, model_name):
        """Raises unless this is a decoder-only backbone with a keras-hub
        `CausalLM` (what `model_name`, a causal task model, runs on)."""
        if self.causal_lm_class is None:
            raise ValueError(
                f"`{model_name}` needs a decoder-only backbone with a "
                "keras-hub `CausalLM`. Received: "
                f"{type(self.backbone).__name__}"
            )

    def check_preprocessor(self, preprocessor, input_names=None):
        """Raises if `preprocessor` does not fit this backbone.

        Its `sequence_length` must leave room for the prompt; a
        `keras_ptuning.PromptTemplate` must have as many slots as there are
        virtual tokens and mark them with this backbone's placeholder id.
        A template left to choose (`segment_ids=None`) is set to emit
        `segment_ids` exactly when the model takes them. `input_names` are
        the model's inputs (defaults to the backbone's).
        """
        if isinstance(preprocessor, PromptTemplate):
            if not self.uses_slots:
                raise ValueError(
                    "A PromptTemplate preprocessor needs slot placement, but "
                    "this PTuningBackbone prepends its virtual tokens "
                    "(placeholder_id=None). Build it with placeholder_id="
                    f"{preprocessor.placeholder_id}."
                )
            if preprocessor.placeholder_id != self.placeholder_id:
                raise ValueError(
                    "The PromptTemplate marks slots with placeholder_id="
                    f"{preprocessor.placeholder_id}, the backbone with "
                    f"placeholder_id={self.placeholder_id}."
                )
            slots = preprocessor.num_virtual_tokens
            # `None`: text slots whose tokenizer has no vocabulary yet (a
            # model being loaded; its saved config is the count).
            if slots is not None and slots != self.num_virtual_tokens:
                raise ValueError(
                    f"The PromptTemplate has {preprocessor.num_virtual_tokens}"
                    " slots, but the prompt encoder makes "
                    f"num_virtual_tokens={self.num_virtual_tokens}."
                )
            preprocessor.match_inputs(
                self.input_names if input_names is None else input_names
            )
        length = getattr(preprocessor, "sequence_length", None)
        if length is None or self.max_sequence_length is None:
            return
        if length > self.max_sequence_length:
            raise ValueError(
                f"The preprocessor's sequence_length={length} leaves no room "
                f"for num_virtual_tokens={self.num_virtual_tokens}: the "
                f"backbone has {self.max_positions} positions, so "
                f"sequence_length must be <= {self.max_sequence_length}."
            )

    @property
    def trainable(self):
        return keras.Model.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        keras.Model.trainable.fset(self, value)
        # The wrapped backbone stays frozen whatever the wrapper is set to
        # (but for its LoRA factors, if any), and so does an encoder that
        # the collapsed prompt has replaced.
        backbone = getattr(self, "backbone", None)
        if backbone is not None and self.lora_rank is None:
            backbone.trainable = False
        elif backbone is not None:
            self._freeze_all_but_lora(lora_trainable=bool(value))
        injection = getattr(self, "prompt_injection", None)
        if injection is not None and not injection.source.trains_encoder:
            injection.prompt_encoder.trainable = False

    def check_inputs(self, inputs, input_names=None, model_name=None):
        """Raises a clear error for wrong inputs, before any compute.

        Checks the keys and dtype always, and on concrete (eager) values the
        placeholder count of every row in slot placement.
        """
        check_inputs(
            inputs,
            self.input_names if input_names is None else input_names,
            model_name or type(self).__name__,
        )
        self.check_values(inputs)

    def check_values(self, inputs):
        """Raises if concrete (eager) inputs break the placement or tasks:
        a row without exactly `num_virtual_tokens` placeholders, or a
        `task_id` out of range. Symbolic inputs are not checked."""
        if self.uses_slots:
            check_placeholder_counts(
                inputs["token_ids"],
                self.placeholder_id,
                self.num_virtual_tokens,
            )
        if self.is_multi_task:
            task_id = concrete_numpy(inputs[TASK_ID])
            num_tasks = len(self.task_names)
            if task_id is not None and (
                task_id.ndim > 1
                or np.any(task_id < 0)
                or np.any(task_id >= num_tasks)
            ):
                raise ValueError(
                    f"`task_id` must hold one int per row in [0, {num_tasks})"
                    f" (tasks {self.task_names}). Received: task_id="
                    f"{task_id.tolist()}"
                )

    def save_to_preset(
        self,
        preset_dir,
        max_shard_size=10,
        base_preset=None,
        include_encoder=False,
    ):
        """Saves the backbone to a keras-hub preset directory.

        Args:
            preset_dir: the directory.
            max_shard_size: int or float, the largest weights file in GB
                (keras-hub's `Backbone.save_to_preset`).
            base_preset: `None` (default: the whole backbone, frozen
                weights included) or str, the keras-hub preset name,
                `hf://`/`kaggle://` handle or directory the frozen backbone
                was loaded from: a prompt-only preset, kilobytes, that
                `from_preset` resolves by loading the base (see
                `keras_ptuning.saving.prompt_presets`).
            include_encoder: bool, with `base_preset`: also keep the prompt
                encoder's weights, so that a model loading the preset can
                resume training; by default the preset holds the collapsed
                prompt table and loads on it (`prompt_source="table"`), as
                `save_adapter` does.
        """
        prompt_presets.save_to_preset(
            lambda directory: super(PTuningBackbone, self).save_to_preset(
                directory, max_shard_size=max_shard_size
            ),
            self,
            preset_dir,
            base_preset,
            include_encoder,
        )

    def save_weights(self, filepath, *args, **kwargs):
        if self.writing_base_reference is not None:
            prompt_presets.save_prompt_weights(
                self, filepath, json.loads(self.writing_base_reference)
            )
            return
        super().save_weights(filepath, *args, **kwargs)

    def load_weights(self, filepath, *args, **kwargs):
        """As `keras.Model.load_weights`; a prompt-only preset's
        `model.weights.h5` sets the prompt alone, after checking that the
        frozen backbone is the base it was trained on."""
        reference = prompt_presets.prompt_weights_reference(filepath)
        if reference is not None:
            prompt_presets.load_prompt_weights(self, filepath, reference)
            return
        super().load_weights(filepath, *args, **kwargs)

    def __call__(self, inputs, *args, **kwargs):
        # Before Keras standardizes the inputs, so errors name our limits.
        self.check_inputs(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def get_config(self):
        # Not chained to `Backbone.get_config`: its `trainable` and `dtype`
        # are not ours to set (the backbone is frozen, the dtype its own).
        prompt_source = self.prompt_source
        if self.writing_base_reference is not None:
            backbone = json.loads(self.writing_base_reference)
            if not backbone["include_encoder"]:
                prompt_source = "table"
        else:
            backbone = keras.layers.serialize(self.backbone)
        return {
            "name": self.name,
            "backbone": backbone,
            "prompt_config": self.prompt_config.to_dict(),
            "prompt_source": prompt_source,
            "placeholder_id": self.placeholder_id,
            "task_names": self.task_names,
            "trainable_tasks": self.trainable_tasks,
            "backbone_dropout": self.backbone_dropout,
            "lora_rank": self.lora_rank,
            "lora_target_layer_names": getattr(
                self, "_lora_target_layer_names", None
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Written by keras_ptuning 0.1 files; derived from the backbone.
        config.pop("dtype", None)
        config.pop("trainable", None)
        # Models saved before `backbone_dropout` trained with it on.
        config.setdefault("backbone_dropout", True)
        lora_rank = config.pop("lora_rank", None)
        target_layer_names = config.pop("lora_target_layer_names", None)
        model = cls(**config)
        if lora_rank is not None:
            model.enable_lora(lora_rank, target_layer_names)
        return model


def _checked_prompt_config(prompt_config, split, placeholder_id):
    """`prompt_config` as a `PromptEncoderConfig` with the backbone's
    hidden size, refused where a prepended prompt would leave no position
    for real tokens."""
    if isinstance(prompt_config, dict):
        prompt_config = PromptEncoderConfig.from_dict(prompt_config)
    if not isinstance(prompt_config, PromptEncoderConfig):
        raise TypeError(
            "`prompt_config` must be a `keras_ptuning.PromptEncoderConfig` "
            f"or its dict. Received: prompt_config={prompt_config!r}"
        )
    prompt_config = prompt_config.with_token_dim(split.hidden_dim)
    if (
        split.max_positions is not None
        and prompt_config.num_virtual_tokens >= split.max_positions
        and placeholder_id is None
    ):
        raise ValueError(
            f"`num_virtual_tokens` must leave room for real tokens in the "
            f"backbone's {split.max_positions} positions. Received: "
            f"num_virtual_tokens={prompt_config.num_virtual_tokens}"
        )
    return prompt_config


def _prompt_encoder(prompt_config, task_names, trainable_tasks):
    """One `PromptEncoder`, or a `MultiTaskPromptEncoder` for `task_names`."""
    if task_names is None and trainable_tasks is not None:
        raise ValueError(
            "`trainable_tasks` needs a multi-task model (task_names). "
            f"Received: trainable_tasks={trainable_tasks!r}"
        )
    if task_names is None:
        return PromptEncoder(prompt_config, name="prompt_encoder")
    return MultiTaskPromptEncoder(
        prompt_config,
        list(task_names),
        trainable_tasks=trainable_tasks,
        name="prompt_encoder",
    )

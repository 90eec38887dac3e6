"""`PTuningTextClassifier`: sequence classification with P-tuning."""

import keras
import keras_hub

from keras_ptuning.backbones.ptuning_backbone import TASK_ID
from keras_ptuning.backbones.ptuning_backbone import PTuningBackbone
from keras_ptuning.backbones.ptuning_backbone import model_inputs
from keras_ptuning.input_validation import check_model_kwargs
from keras_ptuning.layers.pooling import POOLING_MODES
from keras_ptuning.layers.pooling import default_pooling
from keras_ptuning.layers.pooling import has_pooled_output
from keras_ptuning.layers.pooling import hf_pooling
from keras_ptuning.layers.pooling import pool
from keras_ptuning.layers.task_heads import TaskHeads
from keras_ptuning.layers.task_heads import head_kernel_initializer
from keras_ptuning.models.ptuning_task import PTuningTask
from keras_ptuning.models.ptuning_task import keras_hub_argument_order
from keras_ptuning.saving.adapter import AdapterMixin


@keras.saving.register_keras_serializable(package="keras_ptuning")
class PTuningTextClassifier(
    PTuningTask, AdapterMixin, keras_hub.models.TextClassifier
):
    """A P-tuned text classifier over a frozen keras-hub backbone.

    Like keras-hub's `TextClassifier`, with the backbone wrapped in a
    `keras_ptuning.PTuningBackbone`. By default the head reads the mean of
    the real tokens' hidden states for encoders (BERT, DistilBERT, RoBERTa,
    ...) and the last non-padding token for decoder-only models (GPT-2,
    Gemma, Llama, ...); `pooling` picks another readout, such as
    `"pooled"`, what HF's `BertForSequenceClassification` (and so PEFT)
    reads. Then dropout and a `Dense` layer whose kernel starts at
    `TruncatedNormal(stddev=0.02)` and bias at zero, as keras-hub's
    `BertTextClassifier` and HF's heads. Only the prompt encoder and the
    head are trainable.

    Args:
        backbone: a keras-hub text backbone (or a `PTuningBackbone`).
        num_classes: int. The number of classes.
        preprocessor: `None`, a keras-hub `TextClassifierPreprocessor` or a
            `keras_ptuning.PromptTemplate`. With one, `fit`/`evaluate`/
            `predict` take raw strings. Its `sequence_length` must leave room
            for prepended virtual tokens.
        prompt_config: a `keras_ptuning.PromptEncoderConfig` (or its dict).
            Only for a plain backbone: a `PTuningBackbone` brings its own
            (one that differs is refused). May be
            `None` with a `PromptTemplate` preprocessor (its slot count).
        activation: `None`, a string or callable applied to the logits.
            `None` (default) returns logits.
        dropout: float. Dropout before the `Dense` head. Defaults to 0.0
            (no dropout on the pooled output; see the results page,
            `docs/results.md`, for how dropout there compared on SST-2).
        pooling: `None` or what the head reads: `"mean"` (the mean over the
            non-padding tokens), `"last"` (the last non-padding token),
            `"first"` (the first position: `[CLS]`, `<s>`), or `"pooled"`
            (the backbone's `pooled_output`, BERT's pooler; only for
            backbones that have one). Prepended virtual tokens are read
            only through `"pooled"` (BERT's pooler reads position 0, the
            first virtual token, as in HF and PEFT); with prompt slots,
            `"mean"` includes the slots' hidden states.
            Defaults to `"last"` for decoder-only backbones and `"mean"`
            for encoders (see `docs/results.md` for the mean against
            BERT's pooler on SST-2).
            `keras_ptuning.hf_pooling(backbone)` is HF's readout, needed
            to exchange a head with PEFT.
        placeholder_id: `None` (prepend the virtual tokens) or the int that
            marks their slots in `token_ids`; see `PTuningBackbone`. A
            `PromptTemplate` preprocessor sets it.
        task_names: `None` or a list of task names: a multi-task model with
            one prompt encoder and one `Dense` head per task and a `task_id`
            input `(batch,)`; see `PTuningBackbone`.
        **kwargs: standard `keras.Model` arguments.

    Example:
    ```python
    from keras_ptuning.presets import minilm_preset_dir

    model_dir = minilm_preset_dir()  # all-MiniLM-L6-v2, offline
    backbone = keras_hub.models.BertBackbone.from_preset(model_dir)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        model_dir, sequence_length=64
    )
    classifier = keras_ptuning.PTuningTextClassifier(
        backbone,
        num_classes=2,
        prompt_config=keras_ptuning.PromptEncoderConfig(num_virtual_tokens=20),
        preprocessor=preprocessor,
    )
    classifier.fit(x=["great film", "dull film"], y=[1, 0], batch_size=2)
    classifier.predict(["What an amazing movie!"])
    ```
    """

    # keras-hub finds the task class for a preset by its backbone class:
    # a p-tuned preset's backbone is the `PTuningBackbone`.
    backbone_cls = PTuningBackbone
    preset_preprocessor_cls = keras_hub.models.TextClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        prompt_config=None,
        activation=None,
        dropout=0.0,
        pooling=None,
        placeholder_id=None,
        task_names=None,
        **kwargs,
    ):
        check_model_kwargs(kwargs, type(self).__name__)
        preprocessor, prompt_config = keras_hub_argument_order(
            type(self).__name__, preprocessor, prompt_config
        )
        if pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(
                f"`pooling` must be None or one of {POOLING_MODES}. "
                f"Received: pooling={pooling!r}"
            )
        backbone = self._wrap_backbone(
            backbone, prompt_config, placeholder_id, preprocessor, task_names
        )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise ValueError(
                f"`num_classes` must be an int >= 1. Received: "
                f"num_classes={num_classes!r}"
            )
        if num_classes < 1:
            raise ValueError(
                "`num_classes` must be >= 1. Received: "
                f"num_classes={num_classes}"
            )
        if pooling is None:
            pooling = default_pooling(backbone)
        if pooling == "pooled" and not has_pooled_output(backbone):
            raise ValueError(
                '`pooling="pooled"` needs a backbone with a `pooled_output` '
                f"(BERT); {type(backbone.backbone).__name__} has none. Use "
                f"one of {POOLING_MODES[1:]}. Received: pooling={pooling!r}"
            )

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=backbone.dtype_policy, name="output_dropout"
        )
        if backbone.is_multi_task:
            self.output_dense = TaskHeads(
                num_classes,
                backbone.task_names,
                activation=activation,
                trainable_tasks=backbone.trainable_tasks,
                dtype=backbone.dtype_policy,
                name="logits",
            )
        else:
            self.output_dense = keras.layers.Dense(
                num_classes,
                activation=activation,
                kernel_initializer=head_kernel_initializer(),
                dtype=backbone.dtype_policy,
                name="logits",
            )

        # === Functional model ===
        inputs = model_inputs(backbone.input_names)
        outputs = backbone(inputs)
        x = pool(outputs, inputs["padding_mask"], pooling)
        x = self.output_dropout(x)
        if backbone.is_multi_task:
            outputs = self.output_dense(x, task_id=inputs[TASK_ID])
        else:
            outputs = self.output_dense(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.activation = keras.activations.get(activation)
        self.dropout = dropout
        self.pooling = pooling

    def _add_task_head(self, name):
        self.output_dense.add_task(name)

    def _set_trainable_task_heads(self, names):
        self.output_dense.set_trainable_tasks(names)

    def _head_pooling(self):
        return self.pooling

    def _head_variables(self):
        if self.backbone.is_multi_task:
            return {}
        return {
            "kernel": self.output_dense.kernel,
            "bias": self.output_dense.bias,
        }

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kw):
        """Configures training, with P-tuning defaults.

        Defaults: `Adam(1e-3)` (the prompt encoder and head train from
        scratch, so P-tuning uses a larger rate than fine-tuning's 5e-5),
        sparse categorical cross-entropy (from logits unless `activation` is
        softmax), and sparse categorical accuracy. Any argument overrides.
        """
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kw)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "pooling": self.pooling,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        if "pooling" not in config:
            # Saved before `pooling` existed: those classifiers read what
            # HF's do, so their heads keep the input they were trained on.
            config = dict(config)
            if isinstance(config["backbone"], dict):
                config["backbone"] = keras.layers.deserialize(
                    config["backbone"]
                )
            config["pooling"] = hf_pooling(config["backbone"])
        return super().from_config(config)

"""`PTuningMaskedLM`: cloze-style P-tuning of a frozen masked LM."""

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_ptuning.backbones.ptuning_backbone import PTuningBackbone
from keras_ptuning.backbones.ptuning_backbone import model_inputs
from keras_ptuning.input_validation import check_model_kwargs
from keras_ptuning.input_validation import check_positive_int
from keras_ptuning.input_validation import concrete_numpy
from keras_ptuning.models.ptuning_task import PTuningTask
from keras_ptuning.preprocessing.verbalizer import REDUCTIONS
from keras_ptuning.preprocessing.verbalizer import Verbalizer
from keras_ptuning.preprocessing.verbalizer import label_word_ids
from keras_ptuning.preprocessing.vocabulary import check_top_k
from keras_ptuning.preprocessing.vocabulary import top_k_tokens
from keras_ptuning.saving.adapter import AdapterMixin


def _serialize_head_task(masked_lm):
    """The masked LM's config without its backbone and preprocessor: the
    backbone travels once, inside the `PTuningBackbone`."""
    config = keras.layers.serialize(masked_lm)
    config["config"] = dict(config["config"], preprocessor=None)
    config["config"].pop("backbone", None)
    # Its compile state (a fresh optimizer's name) is not the task's.
    for key in ("compile_config", "build_config"):
        config.pop(key, None)
    return config


@keras.saving.register_keras_serializable(package="keras_ptuning")
class PTuningMaskedLM(PTuningTask, AdapterMixin, keras_hub.models.Task):
    """Cloze-style P-tuning: a frozen masked LM fills in `[MASK]`.

    The P-tuning paper's NLU setting. A keras-hub masked LM (`BertMaskedLM`,
    `RobertaMaskedLM`, `DistilBertMaskedLM`, `AlbertMaskedLM`, ...: a
    backbone and its LM head, both frozen) reads a template such as
    `"{sentence} [P:4] It was [MASK] ."` with virtual tokens at the slots
    (see `keras_ptuning.PromptTemplate`) and predicts the token at the mask.

    - With a `verbalizer` (classification): each class has one or more
      label words, and its score is the mean (or max, `score_reduction`) of
      their logits at the first mask. The model outputs the class scores
      (logits; `activation=None`, the default, as `PTuningTextClassifier`
      and keras-hub's classifiers) or class probabilities
      (`activation="softmax"`), and `fit`/`evaluate`/`predict` work with integer
      class labels.
    - Without (fill-in, the LAMA knowledge-probing use): the model outputs
      vocabulary logits `(batch, num_masks, vocabulary_size)` at the masks,
      trains on target token ids as keras-hub's `MaskedLM` does, and
      `fill_mask()` returns the top-k tokens.

    Only the prompt encoder trains.

    Args:
        masked_lm: a keras-hub `MaskedLM` task with a `masked_lm_head` (its
            weights are used, frozen; its preprocessor is not).
        prompt_config: a `keras_ptuning.PromptEncoderConfig` (or its dict).
            May be `None` with a `PromptTemplate` preprocessor (its slot
            count).
        verbalizer: `None`, a dict of class name to label words (`{"neg":
            ["bad", "terrible"], "pos": ["good", "great"]}`; class `i` is the
            `i`-th key), or a list of label-word lists. Words are strings
            (each must be one token of the vocabulary) or token ids.
        preprocessor: `None` or a `keras_ptuning.PromptTemplate` whose
            template holds a `[MASK]`. With one, the model takes raw text.
        score_reduction: `"mean"` (default) or `"max"` over a class's words.
        activation: applied to the class scores; `None` (default) gives
            the scores (logits), `"softmax"` probabilities. Ignored
            without a verbalizer.
        placeholder_id: `None` or the int that marks virtual-token slots in
            `token_ids`; a `PromptTemplate` preprocessor sets it. `None`
            with no template prepends the virtual tokens.
        backbone: `None` (default: wrap `masked_lm.backbone`) or a
            `keras_ptuning.PTuningBackbone` over `masked_lm.backbone`, with
            its prompt (as `get_config` stores it).
        **kwargs: standard `keras.Model` arguments.

    Example:
    ```python
    masked_lm = keras_hub.models.BertMaskedLM.from_preset("bert_base_en")
    template = keras_ptuning.PromptTemplate(
        "{sentence} [P:4] It was [MASK] .",
        masked_lm.preprocessor.tokenizer,
        sequence_length=64,
    )
    model = keras_ptuning.PTuningMaskedLM(
        masked_lm,
        verbalizer={"negative": ["bad", "terrible"], "positive": ["good"]},
        preprocessor=template,
    )
    model.fit({"sentence": ["a gem", "a mess"]}, [1, 0], epochs=3)
    model.predict({"sentence": ["pure joy"]})  # class probabilities
    ```
    """

    # keras-hub finds the task class for a preset by its backbone class:
    # a p-tuned preset's backbone is the `PTuningBackbone`.
    backbone_cls = PTuningBackbone

    @classmethod
    def _from_base_preset(
        cls, preset, load_weights, prompt_config, template, length, kwargs
    ):
        masked_lm = keras_hub.models.MaskedLM.from_preset(
            preset, load_weights=load_weights
        )
        # keras-hub's masked-LM preprocessor masks at random (training
        # data for the LM itself): raw text goes through a `template`.
        preprocessor = cls._preset_preprocessor(preset, template, length)
        backbone = PTuningBackbone.wrap(
            masked_lm.backbone,
            prompt_config,
            kwargs.pop("placeholder_id", None),
            preprocessor,
        )
        preprocessor = cls._fitting_preprocessor(
            preset, template, length, backbone, preprocessor
        )
        return cls(
            masked_lm, preprocessor=preprocessor, backbone=backbone, **kwargs
        )

    def __init__(
        self,
        masked_lm,
        prompt_config=None,
        verbalizer=None,
        preprocessor=None,
        score_reduction="mean",
        activation=None,
        placeholder_id=None,
        backbone=None,
        **kwargs,
    ):
        check_model_kwargs(kwargs, type(self).__name__)
        head = getattr(masked_lm, "masked_lm_head", None)
        if not isinstance(masked_lm, keras_hub.models.MaskedLM) or head is None:
            raise TypeError(
                "`masked_lm` must be a keras-hub `MaskedLM` task with a "
                "`masked_lm_head` (BertMaskedLM, RobertaMaskedLM, ...). "
                f"Received: masked_lm of type {type(masked_lm).__name__}"
            )
        num_masks = getattr(preprocessor, "num_masks", None)
        if verbalizer is not None and num_masks not in (None, 1):
            raise ValueError(
                "A `verbalizer` scores the words at one `[MASK]`; the "
                f"template has {num_masks}. Received: template="
                f"{preprocessor.template!r}"
            )
        tokenizer = getattr(preprocessor, "tokenizer", None) or getattr(
            masked_lm.preprocessor, "tokenizer", None
        )
        if backbone is None:
            backbone = masked_lm.backbone
        elif getattr(backbone, "backbone", None) is not masked_lm.backbone:
            raise ValueError(
                "`backbone` must be a PTuningBackbone over masked_lm.backbone."
                f" Received: backbone of type {type(backbone).__name__}"
            )
        backbone = PTuningBackbone.wrap(
            backbone, prompt_config, placeholder_id, preprocessor
        )
        input_names = list(backbone.input_names) + ["mask_positions"]
        backbone.check_preprocessor(preprocessor, input_names)
        masked_lm.trainable = False
        head.trainable = False
        class_names = None
        verbalizer_layer = None
        if verbalizer is not None:
            class_names, word_ids = label_word_ids(verbalizer, tokenizer)
            verbalizer_layer = Verbalizer(
                word_ids,
                score_reduction=score_reduction,
                dtype="float32",
                name="verbalizer",
            )
            verbalizer_layer.check_vocabulary_size(
                backbone.token_embedding.input_dim
            )
        elif score_reduction not in REDUCTIONS:
            raise ValueError(
                f"`score_reduction` must be one of {REDUCTIONS}. "
                f"Received: score_reduction={score_reduction!r}"
            )

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.masked_lm_head = head
        self.verbalizer = verbalizer_layer
        self.class_activation = None
        if verbalizer_layer is not None and activation is not None:
            self.class_activation = keras.layers.Activation(
                activation, dtype="float32", name="class_activation"
            )

        # === Functional model ===
        inputs = model_inputs(input_names)
        outputs = backbone(
            {name: inputs[name] for name in backbone.input_names}
        )
        if isinstance(outputs, dict):
            outputs = outputs["sequence_output"]
        outputs = head(outputs, mask_positions=inputs["mask_positions"])
        if verbalizer_layer is not None:
            outputs = verbalizer_layer(outputs[:, 0, :])
            if self.class_activation is not None:
                outputs = self.class_activation(outputs)
        # Config before `Task.__init__`, which compiles.
        self.class_names = class_names
        self.score_reduction = score_reduction
        self.activation = (
            None if activation is None else keras.activations.get(activation)
        )
        self._masked_lm_config = _serialize_head_task(masked_lm)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

    @property
    def model_input_names(self):
        return list(self.backbone.input_names) + ["mask_positions"]

    def _check_one_mask(self, inputs):
        """With a verbalizer, eager `mask_positions` must be `(batch, 1)`."""
        if self.verbalizer is None or not isinstance(inputs, dict):
            return
        if inputs.get("mask_positions") is None:
            return  # Raw text: the template holds one mask (checked).
        positions = concrete_numpy(inputs["mask_positions"])
        if positions is not None and positions.shape[1:] != (1,):
            raise ValueError(
                "A `verbalizer` scores the words at one `[MASK]`: "
                "`mask_positions` must be (batch, 1). Received: "
                f"mask_positions of shape {positions.shape}"
            )

    def __call__(self, inputs, *args, **kwargs):
        self._check_one_mask(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def _check_array_inputs(self, x):
        self._check_one_mask(x)
        super()._check_array_inputs(x)

    @property
    def num_classes(self):
        """The number of classes, or `None` in fill-in mode."""
        return None if self.verbalizer is None else self.verbalizer.num_classes

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        metrics="auto",
        weighted_metrics="auto",
        **kwargs,
    ):
        """Configures training, with P-tuning defaults.

        Defaults: `Adam(1e-3)`; with a verbalizer, sparse categorical
        cross-entropy on the class output (from logits unless the activation
        is softmax) and sparse categorical accuracy; without, keras-hub
        `MaskedLM`'s loss on token ids with weighted accuracy. Any argument
        overrides.
        """
        classes = self.verbalizer is not None
        if loss == "auto":
            from_logits = not (
                classes and self.activation is keras.activations.softmax
            )
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=from_logits
            )
        if metrics == "auto":
            metrics = (
                [keras.metrics.SparseCategoricalAccuracy()] if classes else None
            )
        if weighted_metrics == "auto":
            weighted_metrics = (
                None if classes else [keras.metrics.SparseCategoricalAccuracy()]
            )
        super().compile(
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )

    def fill_mask(self, inputs, top_k=5, batch_size=32):
        """The `top_k` most likely vocabulary tokens at each `[MASK]`.

        The knowledge-probing use (LAMA): works with or without a
        verbalizer, eagerly.

        Args:
            inputs: raw text for the preprocessor (a dict of fields, or the
                texts of a one-field template), or a dict of model inputs.
            top_k: int >= 1.
            batch_size: int >= 1. Rows per forward pass (as
                `PTuningNextTokenLM.predict_top_k`'s).

        Returns:
            A dict of numpy arrays of shape `(batch, num_masks, top_k)`:
            `token_ids`, `probabilities` and, with a tokenizer, `tokens`
            (`None` for ids past the tokenizer's vocabulary).
        """
        check_top_k(top_k, self.backbone.token_embedding.input_dim)
        check_positive_int("batch_size", batch_size)
        x = self._model_inputs(inputs)
        self.backbone.check_inputs(
            x, self.model_input_names, type(self).__name__
        )
        rows = int(ops.shape(x["mask_positions"])[0])
        pieces = [
            self._top_k_at_masks(
                {
                    name: value[start : start + batch_size]
                    for name, value in x.items()
                },
                top_k,
            )
            for start in range(0, max(rows, 1), batch_size)
        ]
        return {
            name: np.concatenate([piece[name] for piece in pieces])
            for name in pieces[0]
        }

    def _top_k_at_masks(self, x, top_k):
        features = {name: x[name] for name in self.backbone.input_names}
        outputs = self.backbone(features, training=False)
        if isinstance(outputs, dict):
            outputs = outputs["sequence_output"]
        logits = self.masked_lm_head(
            outputs, mask_positions=ops.convert_to_tensor(x["mask_positions"])
        )
        probabilities = ops.softmax(ops.cast(logits, "float32"), axis=-1)
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        return top_k_tokens(probabilities, top_k, tokenizer)

    def get_config(self):
        config = super().get_config()
        word_ids = None if self.verbalizer is None else self.verbalizer.word_ids
        verbalizer = word_ids
        if word_ids is not None and self.class_names is not None:
            verbalizer = dict(zip(self.class_names, word_ids))
        config.update(
            {
                "masked_lm": self._masked_lm_config,
                "verbalizer": verbalizer,
                "score_reduction": self.score_reduction,
                "activation": None
                if self.activation is None
                else keras.activations.serialize(self.activation),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Written when probabilities were the default output.
        config.setdefault("activation", "softmax")
        backbone = config.get("backbone")
        if isinstance(backbone, dict):
            backbone = keras.layers.deserialize(backbone)
        masked_lm = config["masked_lm"]
        if isinstance(masked_lm, dict):
            task_config = dict(masked_lm["config"])
            if backbone is not None:  # keras_ptuning 0.1 files have none.
                task_config["backbone"] = backbone.backbone
            masked_lm = keras.layers.deserialize(
                dict(masked_lm, config=task_config)
            )
        config.update(backbone=backbone, masked_lm=masked_lm)
        return super().from_config(config)

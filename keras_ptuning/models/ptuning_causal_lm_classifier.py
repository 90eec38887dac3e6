"""`PTuningCausalLMClassifier`: classification and multiple choice by a
frozen causal LM's likelihood of each choice (verbalizers, COPA)."""

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_ptuning.backbones import frozen_prefix
from keras_ptuning.backbones.backbone_split import causal_lm_class
from keras_ptuning.backbones.ptuning_backbone import PTuningBackbone
from keras_ptuning.compat.keras_internals import lora_config
from keras_ptuning.compat.keras_internals import subclassed_model
from keras_ptuning.input_validation import concrete_numpy
from keras_ptuning.models.ptuning_task import PTuningTask
from keras_ptuning.preprocessing.choice_template import CHOICE_INPUTS
from keras_ptuning.preprocessing.choice_template import ChoiceTemplate
from keras_ptuning.saving.adapter import AdapterMixin

SCORE_REDUCTIONS = ("mean", "sum")


def backbone_input_names(backbone):
    """A decoder's inputs, `token_ids` first (plain or P-tuning backbone)."""
    if isinstance(backbone, PTuningBackbone):
        return list(backbone.input_names)
    names = sorted(set(backbone.input) - {"token_ids"})
    return ["token_ids"] + names


def choice_scores(
    hidden_states, token_embedding, positions, ids, mask, reduction
):
    """Each choice's log-likelihood, `(batch, num_choices)`, float32.

    Args:
        hidden_states: `(batch, rows * length, hidden)`, an example's rows
            laid end to end.
        token_embedding: the backbone's reversible token embedding.
        positions, ids, mask: `(batch, num_choices, width)`: where each
            choice token is predicted, the token, and whether it is real.
        reduction: `"mean"` (per-token average) or `"sum"`.
    """
    batch, num_choices, width = ops.shape(ids)
    flat_positions = ops.reshape(positions, (batch, num_choices * width))
    states = ops.take_along_axis(
        hidden_states, flat_positions[:, :, None], axis=1
    )
    logits = ops.cast(token_embedding(states, reverse=True), "float32")
    log_probs = ops.log_softmax(logits, axis=-1)
    flat_ids = ops.reshape(ids, (batch, num_choices * width, 1))
    token_scores = ops.take_along_axis(log_probs, flat_ids, axis=-1)
    token_scores = ops.reshape(token_scores, (batch, num_choices, width))
    mask = ops.cast(mask, "float32")
    total = ops.sum(token_scores * mask, axis=-1)
    if reduction == "sum":
        return total
    return total / ops.maximum(ops.sum(mask, axis=-1), 1.0)


@keras.saving.register_keras_serializable(package="keras_ptuning")
@subclassed_model
class PTuningCausalLMClassifier(
    PTuningTask, AdapterMixin, keras_hub.models.Task
):
    """Classification and multiple choice with a (p-tuned) frozen causal LM.

    The causal-LM form of the paper's NLU setting: a template reads the
    example (virtual tokens anywhere, real anchor words kept; a
    `keras_ptuning.PromptTemplate`), and each class is a *choice*, a
    continuation of the prompt (a label word such as `" yes"`, or the
    example's own candidate such as COPA's `" {choice1}"`; a
    `keras_ptuning.ChoiceTemplate`). The model scores every choice by its
    log-likelihood under the frozen decoder after the prompt, `(batch,
    num_choices)`; the predicted class is the best score, and training
    minimises cross-entropy over the choices' scores (a softmax over
    them), so only the prompt encoder trains. Scores are the mean
    log-probability of the choice's tokens by default: choices of different
    lengths (COPA's sentences) then compare per token, where sums would
    favour the shorter; `score_reduction="sum"` gives the full sequence
    log-likelihood. For one-token label words the two are equal.

    Three ways to run, on the same template and choices:

    - P-tuning: a template with slots. `[P:"text"]` slots start the prompt
      at that text's embeddings (`prompt_init="text"`), so the untrained
      model predicts exactly what the frozen model predicts from the text.
    - The frozen model alone (zero-shot, in-context demonstrations): a
      plain keras-hub backbone and a template without virtual tokens, such
      as `template.as_text_prompt()`.
    - LoRA: `backbone.enable_lora(rank)` (keras-hub's, on a plain
      backbone) or, with a prompt, `model.backbone.enable_lora(rank)`
      (P-tuning and LoRA together; the base weights stay bit-identical).

    Works on every keras-hub decoder with a `CausalLM` (GPT-2, Gemma,
    Gemma 3, Llama, Llama 3, Mistral, Qwen, ...). Raw text goes through
    the preprocessor eagerly, once per `fit`, `evaluate` or `predict`
    call; preprocessed dicts (the `ChoiceTemplate`'s output) go straight
    to Keras.

    Args:
        backbone: a keras-hub decoder backbone or a `PTuningBackbone`.
        preprocessor: `None` or a `keras_ptuning.ChoiceTemplate`.
        prompt_config: a `keras_ptuning.PromptEncoderConfig` (or its dict),
            or `None`: the template's slots give it.
        placeholder_id: `None` or the slot marker; the template sets it.
        score_reduction: `"mean"` (default) or `"sum"` over a choice's
            tokens.
        **kwargs: standard `keras.Model` arguments.

    Example:
    ```python
    from keras_ptuning.presets import smollm2_preset_dir

    causal_lm = keras_hub.models.CausalLM.from_preset(smollm2_preset_dir())
    template = keras_ptuning.PromptTemplate(
        '{premise} [P:"Question:"] {hypothesis}? [P:"Answer:"]',
        causal_lm.preprocessor.tokenizer,
        sequence_length=128,
        add_end_token=False,
    )
    choices = keras_ptuning.ChoiceTemplate(template, [" yes", " no"])
    model = keras_ptuning.PTuningCausalLMClassifier(
        causal_lm.backbone, preprocessor=choices
    )
    x = {
        "premise": ["A man sleeps on a bench.", "A dog runs in the park."],
        "hypothesis": ["A man sleeps", "A cat runs"],
    }
    model.fit(x, [0, 1], epochs=10)  # class 0: " yes", class 1: " no"
    model.predict(x).argmax(-1)
    ```
    """

    # keras-hub finds the task class for a preset by its backbone class:
    # a p-tuned preset's backbone is the `PTuningBackbone`.
    backbone_cls = PTuningBackbone
    preset_template_kwargs = {"add_end_token": False}

    @classmethod
    def _from_parts(cls, preset, ptuning, preprocessor, kwargs):
        choice_kwargs = {
            name: kwargs.pop(name)
            for name in ("choices", "max_choice_length")
            if name in kwargs
        }
        if preprocessor is not None or choice_kwargs:
            if "choices" not in choice_kwargs or preprocessor is None:
                raise ValueError(
                    "From a base preset, `choices` needs a `template` and a "
                    "`template` needs `choices`. Received: "
                    f"choices={choice_kwargs.get('choices')!r}"
                )
            preprocessor = ChoiceTemplate(preprocessor, **choice_kwargs)
        return cls(ptuning, preprocessor=preprocessor, **kwargs)

    def __init__(
        self,
        backbone,
        preprocessor=None,
        prompt_config=None,
        placeholder_id=None,
        score_reduction="mean",
        **kwargs,
    ):
        if preprocessor is not None and not isinstance(
            preprocessor, ChoiceTemplate
        ):
            raise TypeError(
                "`preprocessor` must be a keras_ptuning.ChoiceTemplate or "
                f"None. Received: preprocessor of type "
                f"{type(preprocessor).__name__}"
            )
        if score_reduction not in SCORE_REDUCTIONS:
            raise ValueError(
                f"`score_reduction` must be one of {SCORE_REDUCTIONS}. "
                "Received: "
                f"score_reduction={score_reduction!r}"
            )
        template = getattr(preprocessor, "template", None)
        plain = (
            not isinstance(backbone, PTuningBackbone)
            and prompt_config is None
            and placeholder_id is None
            and (template is None or template.num_virtual_tokens == 0)
        )
        if plain:
            if not isinstance(backbone, keras_hub.models.Backbone):
                raise TypeError(
                    "`backbone` must be a keras-hub backbone or a "
                    f"PTuningBackbone. Received: {type(backbone).__name__}"
                )
            if causal_lm_class(backbone) is None:
                raise ValueError(
                    f"`{type(self).__name__}` needs a decoder-only backbone "
                    "with a keras-hub `CausalLM`. Received: "
                    f"{type(backbone).__name__}"
                )
            if template is not None:
                template.match_inputs(backbone_input_names(backbone))
        else:
            backbone = self._wrap_backbone(
                backbone, prompt_config, placeholder_id, template, decoder=True
            )

        # A subclassed model: its layers are tracked once it is initialised.
        super().__init__(**kwargs)

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Config ===
        self.score_reduction = score_reduction
        self.built = True

    @property
    def has_prompt(self):
        """Whether virtual tokens are read (else the frozen model alone)."""
        return isinstance(self.backbone, PTuningBackbone)

    @property
    def model_input_names(self):
        return backbone_input_names(self.backbone) + list(CHOICE_INPUTS)

    @property
    def trainable_weights(self):
        # In path order: backends walk a LoRA-enabled model's layers in
        # different orders, and the optimizer state in a `.keras` file is
        # matched by position, so a file saved on one backend would resume
        # with another variable's moments on the next.
        return sorted(super().trainable_weights, key=lambda v: v.path)

    @property
    def trainable_variables(self):
        return sorted(super().trainable_variables, key=lambda v: v.path)

    def _ptuning_backbone(self):
        if not self.has_prompt:
            raise ValueError(
                "This model has no prompt (a plain backbone): there is no "
                "adapter to save or load."
            )
        return self.backbone

    def __call__(self, inputs, *args, **kwargs):
        if not isinstance(inputs, dict) or not set(
            self.model_input_names
        ) <= set(inputs):
            raise ValueError(
                f"`{type(self).__name__}` takes a dict of "
                f"{self.model_input_names} (a ChoiceTemplate's output). "
                f"Received: {type(inputs).__name__}"
                + (
                    f" with keys {sorted(inputs)}"
                    if isinstance(inputs, dict)
                    else ""
                )
            )
        return keras.Model.__call__(self, inputs, *args, **kwargs)

    def call(self, inputs, training=None):
        token_ids = inputs["token_ids"]
        batch, rows, length = ops.shape(token_ids)
        hidden = self._shared_context_states(inputs, training)
        if hidden is None:
            sequence = {
                name: ops.reshape(inputs[name], (batch * rows, length))
                for name in backbone_input_names(self.backbone)
            }
            hidden = self.backbone(sequence, training=training)
        hidden = ops.reshape(hidden, (batch, rows * length, -1))
        return choice_scores(
            hidden,
            self.backbone.token_embedding,
            inputs["choice_positions"],
            inputs["choice_ids"],
            inputs["choice_mask"],
            self.score_reduction,
        )

    def _shared_context_states(self, inputs, training):
        """The backbone's states for every row, the positions that rows
        share run once (`frozen_prefix.run_shared_context`), or `None`
        where that cannot run: nothing shared, traced inputs (XLA's shapes
        are static), TensorFlow training (no gradient for the cache
        update), a family without cached decoding, or a multi-task prompt.

        Two kinds of sharing, whichever saves more positions: each
        example's rows share its context (multiple-choice scoring: as many
        positions as the example that shares the fewest), or every row of
        the batch shares a prefix (in-context demonstrations, the same for
        every example)."""
        token_ids = concrete_numpy(inputs["token_ids"])
        mask = concrete_numpy(inputs["padding_mask"])
        if token_ids is None or mask is None:
            return None
        batch, rows, length = token_ids.shape
        if batch * rows < 2:
            return None
        if training and keras.config.backend() == "tensorflow":
            return None
        ptuning = self.backbone if self.has_prompt else None
        decoder = ptuning.backbone if ptuning is not None else self.backbone
        if not frozen_prefix.supports(decoder, causal_lm_class(decoder)):
            return None
        if ptuning is not None and ptuning.is_multi_task:
            return None
        flat = {
            "token_ids": token_ids.reshape(-1, length),
            "padding_mask": mask.reshape(-1, length),
        }
        # Each example's rows: one call for the whole batch, the positions
        # every example shares across its rows (the shortest example's
        # shared part) run once, everything after them per row. Grouping
        # examples by their own shared length would cost a call per
        # length, more than it saves.
        per_example = _shared_length(token_ids, mask, axis=1).min()
        # Every row of the batch.
        per_batch = _shared_length(flat["token_ids"], flat["padding_mask"])
        shared = {"example": int(per_example), "batch": int(per_batch)}
        saved = {
            "example": batch * (rows - 1) * shared["example"],
            "batch": (batch * rows - 1) * shared["batch"],
        }
        # Positions saved by each, where it can run: something shared, and
        # something after it. A batch's shared start token or a template's
        # opening words are not worth the extra call.
        minimum = {"example": 1, "batch": MIN_BATCH_SHARED_LENGTH}
        saved = {
            k: v for k, v in saved.items() if minimum[k] <= shared[k] < length
        }
        if not saved:
            return None
        sharing = max(saved, key=saved.get)
        n = shared[sharing]
        # Each context's first row, and how many rows continue it.
        if sharing == "example":
            first_rows, copies = np.arange(batch) * rows, rows
        else:
            first_rows, copies = np.array([0]), batch * rows
        backbone_training = bool(training) and (
            ptuning is None or ptuning.backbone_dropout
        )
        # Every row embedded (the prompt spliced in at its slots, which may
        # lie on either side of `n`, or prepended), then split: each
        # context's first row gives the shared context.
        split = None
        if ptuning is not None:
            # The checks the backbone's own call makes (each row's
            # placeholders), which `embed_inputs` skips.
            ptuning.check_inputs(flat)
            embeddings, sequence = ptuning.embed_inputs(flat, training=training)
            flat_mask = sequence["padding_mask"]
            if training and ptuning.splits_frozen_prefix:
                split = frozen_prefix.split_point(
                    ops.convert_to_tensor(flat["token_ids"][first_rows, :n]),
                    ptuning.placeholder_id,
                )
        else:
            embeddings = decoder.token_embedding(flat["token_ids"])
            flat_mask = ops.convert_to_tensor(flat["padding_mask"])
        # Prepended virtual tokens come before the rows' own positions.
        offset = int(ops.shape(embeddings)[1]) - length
        first_rows = ops.convert_to_tensor(first_rows)
        context_states, rest_states = frozen_prefix.run_shared_context(
            causal_lm_class(decoder),
            decoder,
            ops.take(embeddings, first_rows, axis=0)[:, : offset + n],
            ops.take(flat_mask, first_rows, axis=0)[:, : offset + n],
            embeddings[:, offset + n :],
            flat_mask[:, offset + n :],
            backbone_training,
            split=split,
            # A batch's rows side by side would attend to each other
            # masked, a cost that grows with their number squared.
            pack=sharing == "example",
        )
        return ops.concatenate(
            [
                ops.repeat(context_states[:, offset:], copies, axis=0),
                rest_states,
            ],
            1,
        )

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        metrics="auto",
        **kwargs,
    ):
        """Configures training, with P-tuning defaults.

        `"auto"`: `Adam(1e-3)`, sparse categorical cross-entropy from the
        choice scores (a softmax over the choices), and accuracy. With a
        single choice that loss is always 0: pass a loss of the scores,
        e.g. the choice's negative log-likelihood,
        `lambda y, scores: -scores[:, 0]`.
        """
        self._default_loss = loss == "auto"
        self._check_loss()
        if metrics == "auto" and self._one_choice():
            metrics = []  # Accuracy over one choice is meaningless.
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy("accuracy")]
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, **kwargs
        )

    def _one_choice(self):
        preprocessor = getattr(self, "preprocessor", None)
        return preprocessor is not None and preprocessor.num_choices == 1

    def _check_loss(self):
        """Refuses the default loss with one choice (always 0), at
        `compile` or, for the default compile of `__init__`, at `fit`."""
        if getattr(self, "_default_loss", False) and self._one_choice():
            raise ValueError(
                "The preprocessor has 1 choice: the default loss (a "
                "softmax cross-entropy over the choices) is always 0. "
                "Pass a loss to `compile`, e.g. the choice's negative "
                "log-likelihood `lambda y, scores: -scores[:, 0]`. "
                "Received: loss='auto', choices="
                f"{self.preprocessor.choice_texts!r}"
            )

    # === Inputs: raw text is preprocessed once, eagerly ===

    def _ready(self, x, y=None, sample_weight=None):
        if isinstance(x, keras.utils.PyDataset) or (
            isinstance(x, dict) and set(self.model_input_names) <= set(x)
        ):
            if self.has_prompt and isinstance(x, dict):
                self.backbone.check_values(
                    {
                        "token_ids": np.asarray(x["token_ids"]).reshape(
                            -1, np.shape(x["token_ids"])[-1]
                        )
                    }
                )
            return x, y, sample_weight
        if self.preprocessor is None:
            raise ValueError(
                "This model has no preprocessor: pass a dict of "
                f"{self.model_input_names}. Received: {type(x).__name__}"
            )
        return keras.utils.unpack_x_y_sample_weight(
            self.preprocessor(x, y, sample_weight)
        )

    def _ready_validation(self, validation_data):
        if not isinstance(validation_data, tuple):
            return validation_data
        return self._ready(*validation_data)

    def _fit(self, x=None, y=None, *args, **kwargs):
        self._check_loss()
        if "validation_data" in kwargs:
            kwargs["validation_data"] = self._ready_validation(
                kwargs["validation_data"]
            )
        sample_weight = kwargs.pop("sample_weight", None)
        x, y, sample_weight = self._ready(x, y, sample_weight)
        return keras.Model.fit(
            self, x, y, *args, sample_weight=sample_weight, **kwargs
        )

    def evaluate(self, x=None, y=None, *args, **kwargs):
        sample_weight = kwargs.pop("sample_weight", None)
        x, y, sample_weight = self._ready(x, y, sample_weight)
        return keras.Model.evaluate(
            self, x, y, *args, sample_weight=sample_weight, **kwargs
        )

    def predict(self, x, *args, **kwargs):
        x, _, _ = self._ready(x)
        return keras.Model.predict(self, x, *args, **kwargs)

    def get_config(self):
        config = {
            "backbone": keras.layers.serialize(self.backbone),
            "preprocessor": keras.layers.serialize(self.preprocessor)
            if self.preprocessor is not None
            else None,
            "score_reduction": self.score_reduction,
            "name": self.name,
        }
        # keras-hub LoRA on a plain backbone is not in its config (on a
        # `PTuningBackbone` it is): kept here, so `.keras` files and
        # presets do not drop the trained factors.
        lora = None if self.has_prompt else lora_config(self.backbone)
        if lora is not None:
            config["plain_backbone_lora"] = lora
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        lora = config.pop("plain_backbone_lora", None)
        model = super().from_config(config)
        if lora is not None:
            model.backbone.enable_lora(lora["rank"], lora["target_layer_names"])
        return model


# The fewest positions every row of a batch must share to run them once
# for the batch (`_shared_context_states`): it costs a call of its own,
# about as much as 100 positions of SmolLM2 on a 2-core CPU (Keras' and
# keras-hub's per-op dispatch over 30 layers), and would otherwise take
# every label-word batch off the plain path for its start token.
MIN_BATCH_SHARED_LENGTH = 16


def _shared_length(token_ids, mask, axis=0):
    """How many leading positions the rows along `axis` share (ids and
    padding mask), per entry of the other leading axes: `length` where
    they are all equal."""
    first = np.take(token_ids, [0], axis=axis)
    first_mask = np.take(mask, [0], axis=axis)
    same = np.all(token_ids == first, axis=axis) & np.all(
        mask == first_mask, axis=axis
    )
    return np.where(same.all(axis=-1), same.shape[-1], np.argmin(same, -1))

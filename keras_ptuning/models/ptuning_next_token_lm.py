"""`PTuningNextTokenLM`: a frozen causal LM predicts the token after a
prompt (knowledge probing, as LAMA on GPT in the P-tuning paper)."""

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_ptuning.backbones.ptuning_backbone import PTuningBackbone
from keras_ptuning.backbones.ptuning_backbone import model_inputs
from keras_ptuning.input_validation import check_model_kwargs
from keras_ptuning.layers.pooling import last_token_states
from keras_ptuning.models.ptuning_task import PTuningTask
from keras_ptuning.models.ptuning_task import keras_hub_argument_order
from keras_ptuning.preprocessing.prompt_template import PromptTemplate
from keras_ptuning.preprocessing.vocabulary import check_top_k
from keras_ptuning.preprocessing.vocabulary import single_token_id
from keras_ptuning.preprocessing.vocabulary import top_k_tokens
from keras_ptuning.saving.adapter import AdapterMixin


@keras.saving.register_keras_serializable(package="keras_ptuning")
class PTuningNextTokenLM(PTuningTask, AdapterMixin, keras_hub.models.Task):
    """P-tuned next-token prediction on a frozen causal LM.

    The paper's knowledge-probing setting for GPT-style models (LAMA): a
    template such as `"[P:3] {subject} [P:3] was born in [P:3]"` (virtual
    tokens anywhere, real *anchor* words kept; see
    `keras_ptuning.PromptTemplate`) is read by a frozen keras-hub decoder,
    and the model outputs the vocabulary logits of the token that follows
    the template's last token, `(batch, vocabulary_size)`. Trained on
    target token ids (the object word's first and only token), the loss is
    on that one token; `predict_top_k` returns the most likely tokens over
    the whole vocabulary. Only the prompt encoder trains.

    The output projection is applied at the last real position only, so a
    large vocabulary (Gemma's 262k) costs one row of logits per example.
    Works on every keras-hub decoder with a `CausalLM` (GPT-2, Gemma,
    Gemma 3, Llama, Llama 3, Mistral, Qwen, ...) and, like the other
    P-tuning tasks, with prepended prompts, slots and multi-task prompts
    (`task_names`; a template passes `task_id` through).

    Args:
        backbone: a keras-hub decoder-only backbone (or a `PTuningBackbone`).
        preprocessor: `None` or a `keras_ptuning.PromptTemplate` without
            `[MASK]` and with `add_end_token=False` (the prediction follows
            the template's last token). With one, the model takes raw text.
        prompt_config: a `keras_ptuning.PromptEncoderConfig` (or its dict).
            May be `None` with a `PromptTemplate` preprocessor (its slot
            count) or a `PTuningBackbone`.
        placeholder_id: `None` or the int that marks virtual-token slots in
            `token_ids`; a `PromptTemplate` preprocessor sets it. `None`
            with no template prepends the virtual tokens.
        task_names: `None` or a list of task names: one prompt encoder per
            task and a `task_id` input `(batch,)`; see `PTuningBackbone`.
        **kwargs: standard `keras.Model` arguments.

    Example:
    ```python
    from keras_ptuning.presets import smollm2_preset_dir

    causal_lm = keras_hub.models.CausalLM.from_preset(smollm2_preset_dir())
    template = keras_ptuning.PromptTemplate(
        "[P:3] {subject} [P:3] is the capital of [P:3]",
        causal_lm.preprocessor.tokenizer,
        sequence_length=32,
        add_end_token=False,
    )
    model = keras_ptuning.PTuningNextTokenLM(
        causal_lm.backbone, preprocessor=template
    )
    model.compile()
    model.fit(["Paris", "Rome"], model.target_ids(["France", "Italy"]))
    model.predict_top_k(["Madrid"], top_k=3)["tokens"]
    ```
    """

    # keras-hub finds the task class for a preset by its backbone class:
    # a p-tuned preset's backbone is the `PTuningBackbone`.
    backbone_cls = PTuningBackbone
    preset_template_kwargs = {"add_end_token": False}

    def __init__(
        self,
        backbone,
        preprocessor=None,
        prompt_config=None,
        placeholder_id=None,
        task_names=None,
        **kwargs,
    ):
        check_model_kwargs(kwargs, type(self).__name__)
        preprocessor, prompt_config = keras_hub_argument_order(
            type(self).__name__, preprocessor, prompt_config
        )
        if preprocessor is not None:
            _check_template(preprocessor)
        backbone = self._wrap_backbone(
            backbone,
            prompt_config,
            placeholder_id,
            preprocessor,
            task_names,
            decoder=True,
        )

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Functional model ===
        inputs = model_inputs(backbone.input_names)
        hidden_states = backbone(inputs)
        last = last_token_states(hidden_states, inputs["padding_mask"])
        logits = backbone.token_embedding(last, reverse=True)
        outputs = ops.cast(logits, "float32")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        **kwargs,
    ):
        """Configures training, with P-tuning defaults.

        `"auto"`: `Adam(1e-3)` (only the prompt encoder trains, from
        scratch), sparse categorical cross-entropy from logits on the target
        token ids, and top-1 accuracy (P@1) as `"accuracy"`, weighted as
        the loss is (as keras-hub's `CausalLM`: rows of sample weight 0,
        such as padding rows, do not count).
        """
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if weighted_metrics == "auto":
            weighted_metrics = [
                keras.metrics.SparseCategoricalAccuracy("accuracy")
            ]
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )

    def _tokenizer(self):
        return getattr(self.preprocessor, "tokenizer", None)

    def target_ids(self, words):
        """The target token ids of `words` (objects following the prompt).

        Each word is tokenized as it reads after a space in running text
        (`" Paris"` for tokenizers whose words carry their space) and must
        be exactly one token.

        Args:
            words: a list of strings.

        Returns:
            An int32 numpy array `(len(words),)`.
        """
        tokenizer = self._tokenizer()
        if tokenizer is None:
            raise ValueError(
                "`target_ids` needs the preprocessor's tokenizer, but this "
                "model has no preprocessor."
            )
        if isinstance(words, str) or not isinstance(words, (list, tuple)):
            raise TypeError(
                "`words` must be a list of strings. Received: words of type "
                f"{type(words).__name__}"
            )
        ids = []
        for word in words:
            if not isinstance(word, str) or not word.strip():
                raise ValueError(
                    "Every target word must be a non-empty string. Received: "
                    f"{word!r}"
                )
            ids.append(single_token_id(word, tokenizer, "target word"))
        return np.asarray(ids, "int32")

    def predict_top_k(self, inputs, top_k=5, batch_size=32):
        """The `top_k` most likely next tokens over the whole vocabulary.

        Args:
            inputs: raw text for the preprocessor (a dict of fields, with
                `task_id` for a multi-task model, or the texts of a one-field
                template), or a dict of model inputs.
            top_k: int >= 1.
            batch_size: int. Rows per forward pass.

        Returns:
            A dict of numpy arrays of shape `(batch, top_k)`: `token_ids`,
            `probabilities` and, with a tokenizer, `tokens` (`None` for ids
            past the tokenizer's vocabulary).
        """
        check_top_k(top_k, self.backbone.token_embedding.input_dim)
        x = self._model_inputs(inputs)
        x = {name: x[name] for name in self.model_input_names}
        self.backbone.check_values(x)
        logits = keras.Model.predict(self, x, batch_size=batch_size, verbose=0)
        probabilities = ops.softmax(ops.convert_to_tensor(logits), axis=-1)
        return top_k_tokens(probabilities, top_k, self._tokenizer())


def _check_template(preprocessor):
    if not isinstance(preprocessor, PromptTemplate):
        raise TypeError(
            "`preprocessor` must be a keras_ptuning.PromptTemplate or None. "
            f"Received: preprocessor of type {type(preprocessor).__name__}"
        )
    if preprocessor.num_masks:
        raise ValueError(
            "`PTuningNextTokenLM` predicts the token after the template, so "
            "the template must not hold [MASK]: end it where the answer "
            f"goes. Received: template={preprocessor.template!r}"
        )
    if preprocessor.add_end_token:
        raise ValueError(
            "`PTuningNextTokenLM` predicts the token after the template's "
            "last token: build the PromptTemplate with add_end_token=False. "
            "Received: add_end_token=True"
        )

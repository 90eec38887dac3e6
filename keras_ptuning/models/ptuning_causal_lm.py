"""`PTuningCausalLM`: P-tuned generative language models."""

import keras
import keras_hub

from keras_ptuning.backbones import cached_decoding
from keras_ptuning.backbones.cached_decoding import CausalLMView
from keras_ptuning.backbones.ptuning_backbone import TASK_ID
from keras_ptuning.backbones.ptuning_backbone import PTuningBackbone
from keras_ptuning.backbones.ptuning_backbone import model_inputs
from keras_ptuning.input_validation import check_model_kwargs
from keras_ptuning.input_validation import check_placeholder_counts
from keras_ptuning.models import scored_positions
from keras_ptuning.models.ptuning_task import PTuningTask
from keras_ptuning.models.ptuning_task import keras_hub_argument_order
from keras_ptuning.saving.adapter import AdapterMixin


@keras.saving.register_keras_serializable(package="keras_ptuning")
class PTuningCausalLM(PTuningTask, AdapterMixin, keras_hub.models.CausalLM):
    """A P-tuned causal language model over a frozen keras-hub backbone.

    Like keras-hub's `CausalLM`: it takes `token_ids` and `padding_mask` and
    returns next-token logits from the backbone's own (tied or untied) output
    projection, for the real positions only and aligned with the inputs, so
    `fit(x, y, sample_weight)` from a keras-hub `CausalLMPreprocessor` works
    unchanged and virtual tokens never count in the loss. Only the prompt
    encoder trains.

    `generate()` is keras-hub's, with its samplers (`compile(sampler=...)`)
    and compilation (`jax.jit`, `tf.function`, torch no-grad). It decodes
    with a KV cache: the virtual tokens are prefilled once with the prompt,
    then decoding runs token by token through the family's own keras-hub
    cached-decoding code.

    Supported backbones: those with a keras-hub `CausalLM` (GPT-2, Gemma,
    Gemma 3 text, Llama, Llama 3, Mistral, Qwen, ...).

    Args:
        backbone: a keras-hub decoder-only backbone (or a `PTuningBackbone`).
        preprocessor: `None` or a keras-hub `CausalLMPreprocessor`. With one,
            `fit` and `generate` take raw strings.
        prompt_config: a `keras_ptuning.PromptEncoderConfig` (or its dict).
            Only for a plain backbone: a `PTuningBackbone` brings its own
            (one that differs is refused).
        placeholder_id: `None` (default: prepend the virtual tokens) or the
            int that marks their slots in `token_ids` (see
            `PTuningBackbone`). With slots, `generate` takes token ids whose
            prompts hold the placeholders, and returns them in place.
        task_names: `None` or a list of task names: one prompt encoder per
            task and a `task_id` input `(batch,)` (`generate` too); see
            `PTuningBackbone`.
        **kw: standard `keras.Model` arguments.

    Example:
    ```python
    backbone = keras_hub.models.GPT2Backbone.from_preset("gpt2_base_en")
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor.from_preset(
        "gpt2_base_en", sequence_length=128
    )
    lm = keras_ptuning.PTuningCausalLM(
        backbone,
        preprocessor=preprocessor,
        prompt_config=keras_ptuning.PromptEncoderConfig(num_virtual_tokens=20),
    )
    lm.fit(["The quick brown fox jumped."], epochs=3)
    lm.compile(sampler="greedy")
    lm.generate("The quick", max_length=30)
    ```
    """

    # keras-hub finds the task class for a preset by its backbone class:
    # a p-tuned preset's backbone is the `PTuningBackbone`.
    backbone_cls = PTuningBackbone
    preset_preprocessor_cls = keras_hub.models.CausalLMPreprocessor

    def __init__(
        self,
        backbone,
        preprocessor=None,
        prompt_config=None,
        placeholder_id=None,
        task_names=None,
        **kw,
    ):
        check_model_kwargs(kw, type(self).__name__)
        preprocessor, prompt_config = keras_hub_argument_order(
            type(self).__name__, preprocessor, prompt_config
        )
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
        outputs = backbone.token_embedding(hidden_states, reverse=True)
        super().__init__(inputs=inputs, outputs=outputs, **kw)

        # Training steps project only the positions the loss weighs, where
        # they can (`keras_ptuning.models.scored_positions`); False projects
        # every position (benchmarks compare the two).
        self.project_weighted_positions_only = True
        # The weighted positions of the running training step.
        self._scored_positions = None

    def train_step(self, *args, **kwargs):
        # JAX's is `train_step(state, data)`, the others' `train_step(data)`.
        data = kwargs["data"] if "data" in kwargs else args[-1]
        _, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self.project_weighted_positions_only:
            self._scored_positions = scored_positions.find(self, sample_weight)
        try:
            return super().train_step(*args, **kwargs)
        finally:
            self._scored_positions = None

    def call(self, inputs, training=None, mask=None, **kwargs):
        positions = self._scored_positions
        if positions is None or not training:
            return super().call(inputs, training=training, mask=mask, **kwargs)
        # Logits `(1, weighted positions, vocabulary)`: the loss and the
        # metrics take the same positions of `y` and `sample_weight`.
        hidden_states = self.backbone(inputs, training=training)
        return self.backbone.token_embedding(
            positions.gather(hidden_states), reverse=True
        )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        positions = self._scored_positions
        if positions is not None:
            y = positions.gather(y)
            sample_weight = positions.loss_weights(sample_weight)
        return super().compute_loss(
            x, y, y_pred, sample_weight, training=training
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        positions = self._scored_positions
        if positions is not None:
            y = positions.gather(y)
            sample_weight = positions.gather(sample_weight)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def compile(self, optimizer="auto", loss="auto", **kwargs):
        """Configures training and generation, with P-tuning defaults.

        As keras-hub's `CausalLM.compile` (masked sparse categorical
        cross-entropy from logits, weighted accuracy, `sampler="top_k"`),
        but `optimizer="auto"` is `Adam(1e-3)`: only the prompt encoder
        trains, from scratch.
        """
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def generate(self, inputs, *args, **kwargs):
        """Generates text or token ids; see keras-hub's `CausalLM.generate`.

        In slot placement `inputs` are token ids (a dict with `token_ids`
        and `padding_mask`) whose prompts hold the placeholders: a keras-hub
        `CausalLMPreprocessor` cannot write them, so strings are refused.
        """
        ptuning = self.backbone
        if ptuning.uses_slots:
            if not isinstance(inputs, dict) or "token_ids" not in inputs:
                raise ValueError(
                    "With slot placement (placeholder_id="
                    f"{ptuning.placeholder_id}) `generate` takes a dict of "
                    "`token_ids` (holding the placeholders) and "
                    "`padding_mask`. Received: inputs of type "
                    f"{type(inputs).__name__}"
                )
            check_placeholder_counts(
                inputs["token_ids"],
                ptuning.placeholder_id,
                ptuning.num_virtual_tokens,
            )
            if self.preprocessor is not None:
                # The preprocessor would expect strings: run on ids.
                preprocessor, self.preprocessor = self.preprocessor, None
                try:
                    return super().generate(inputs, *args, **kwargs)
                finally:
                    self.preprocessor = preprocessor
        return super().generate(inputs, *args, **kwargs)

    def generate_step(self, inputs, stop_token_ids=None, shared_prefix=None):
        """One compilable generation pass over a batch; see `CausalLM`.

        Prepends the virtual-token ids to `token_ids` (and ones to
        `padding_mask`), runs the family's keras-hub `generate_step` on the
        extended batch, and drops the virtual positions from the result. In
        slot placement the k-th placeholder of each row becomes the k-th
        virtual-token id instead, and turns back into the placeholder in
        the result. A multi-task model gives each row its task's ids.
        `shared_prefix` is `None` or what `shared_prefix(max_length)`
        returned for this batch's `max_length` (the virtual tokens' cache,
        then not recomputed).
        """
        ptuning = self.backbone
        injection = ptuning.prompt_injection
        injection.check_sequence_length(_static_length(inputs["token_ids"]))
        num_tokens = ptuning.num_virtual_tokens
        # Row b's virtual token k is `table[first[b] + k]`; it decodes as
        # the id `vocabulary_size + first[b] + k`.
        table, first = injection.source.prompts(
            inputs.get(TASK_ID), training=False
        )
        view = self._causal_lm_view(table, shared_prefix)
        placement = ptuning.placement
        extended = placement.virtual_token_inputs(
            inputs, view.vocabulary_size + first, num_tokens
        )
        outputs = view.generate_step(extended, stop_token_ids=stop_token_ids)
        return placement.generated_outputs(
            outputs, view.vocabulary_size, num_tokens
        )

    def shared_prefix(self, max_length):
        """The virtual tokens' hidden states and KV cache for one row.

        Every sequence starts with the same virtual tokens, which see only
        each other: their keys and values can be computed once, for
        batches of `max_length` real tokens, and given back to
        `generate_step`. `None` where sequences do not share them (prompt
        slots, several tasks).
        """
        ptuning = self.backbone
        if ptuning.uses_slots or ptuning.is_multi_task:
            return None
        table, _ = ptuning.prompt_injection.source.prompts(None, training=False)
        view = self._causal_lm_view(table)
        return view.shared_prefix_for(max_length + ptuning.num_virtual_tokens)

    def _causal_lm_view(self, table, shared_prefix=None):
        ptuning = self.backbone
        return CausalLMView(
            ptuning.causal_lm_class,
            ptuning.backbone,
            table,
            self.sampler,
            self,
            # One shared prefix is computed once and tiled over the batch.
            split_prefill=not (ptuning.uses_slots or ptuning.is_multi_task),
            first_segment_length=cached_decoding.FIRST_SEGMENT_LENGTH,
            shared_prefix=shared_prefix,
        )


def _static_length(token_ids):
    length = token_ids.shape[1]
    return length if isinstance(length, int) else None

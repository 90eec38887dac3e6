"""Cached decoding for P-tuned models, reusing keras-hub's per-family code.

keras-hub keeps each family's KV-cache decoding (`call_with_cache`,
`_build_cache`, `generate_step`) on its `CausalLM` class. Those methods embed
token ids with `self.backbone.token_embedding`. Here they run on a view whose
`backbone.token_embedding` also knows the virtual tokens: ids
`vocabulary_size .. vocabulary_size + N - 1` look up the prompt table. The
prompt is then just the first N ids of every sequence, prefilled with the
real prompt in one pass, and every family's positions (learned tables and
RoPE alike) count the virtual tokens. Nothing of the backbone is changed.
"""

import inspect
import types

from keras import ops


class VirtualTokenEmbedding:
    """A token embedding extended with virtual tokens after the vocabulary.

    Args:
        token_embedding: the backbone's `ReversibleEmbedding`.
        prompt_table: `(num_virtual_tokens, hidden_dim)` virtual embeddings.
    """

    def __init__(self, token_embedding, prompt_table):
        self.token_embedding = token_embedding
        self.vocabulary_size = token_embedding.input_dim
        self.prompt_table = ops.cast(
            prompt_table, token_embedding.compute_dtype
        )

    def __call__(self, inputs, reverse=False, **kwargs):
        if reverse:
            # Logits cover the real vocabulary only.
            return self.token_embedding(inputs, reverse=True, **kwargs)
        inputs = ops.convert_to_tensor(inputs, "int32")
        is_virtual = ops.greater_equal(inputs, self.vocabulary_size)
        real = self.token_embedding(ops.where(is_virtual, 0, inputs))
        virtual = ops.take(
            self.prompt_table,
            ops.where(is_virtual, inputs - self.vocabulary_size, 0),
            axis=0,
        )
        return ops.where(ops.expand_dims(is_virtual, -1), virtual, real)


class _BackboneView:
    """The backbone, with `token_embedding` swapped for the extended one."""

    def __init__(self, backbone, token_embedding):
        self._backbone = backbone
        self.token_embedding = token_embedding

    def __getattr__(self, name):
        return getattr(self._backbone, name)


class CausalLMView:
    """Runs a keras-hub `CausalLM` class's methods on a P-tuned backbone.

    Args:
        causal_lm_class: the keras-hub `CausalLM` subclass of the family.
        backbone: the frozen keras-hub backbone.
        prompt_table: the `(N, hidden_dim)` prompt, in inference mode.
        sampler: the `keras_hub.samplers.Sampler` to decode with.
        model: the calling task model (what samplers receive as `model`).
    """

    def __init__(self, causal_lm_class, backbone, prompt_table, sampler, model):
        self._class = causal_lm_class
        self._model = model
        embedding = VirtualTokenEmbedding(
            backbone.token_embedding, prompt_table
        )
        self.backbone = _BackboneView(backbone, embedding)
        self.sampler = sampler
        self.compute_dtype = backbone.compute_dtype
        self.virtual_token_ids = ops.arange(
            embedding.vocabulary_size,
            embedding.vocabulary_size + prompt_table.shape[0],
            dtype="int32",
        )

    def __getattr__(self, name):
        # The family's methods run with this view as `self`; any other
        # attribute (variables, `generate_function`, ...) is the model's.
        attribute = getattr(self._class, name, None)
        if inspect.isfunction(attribute):
            return types.MethodType(attribute, self)
        return getattr(self._model, name)

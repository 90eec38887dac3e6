"""Cached decoding for P-tuned models, reusing keras-hub's per-family code.

keras-hub keeps each family's KV-cache decoding (`call_with_cache`,
`_build_cache`, `generate_step`) on its `CausalLM` class. Those methods embed
token ids with `self.backbone.token_embedding`. Here they run on a view whose
`backbone.token_embedding` also knows the virtual tokens: ids
`vocabulary_size .. vocabulary_size + N - 1` look up the prompt table. The
prompt is then just the first N ids of every sequence, and every family's
positions (learned tables and RoPE alike) count the virtual tokens. Nothing
of the backbone is changed.

The prefill is split in two. In a causal model the virtual tokens see only
each other, so their keys and values are the same for every row: they are
computed once for a batch of one and tiled, and the real prompt is then
prefilled at cache index N. The prefill thus costs the plain model's plus N
tokens, not N per row.
"""

import inspect
import types

from keras import ops
from keras import tree


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
        split_prefill: bool. Whether every sequence starts with the N
            virtual ids, so their cache is computed once and tiled (see
            `_build_cache`). `False` for virtual ids anywhere (slot
            placement): the family's own `_build_cache` prefills it all.
    """

    def __init__(
        self,
        causal_lm_class,
        backbone,
        prompt_table,
        sampler,
        model,
        split_prefill=True,
    ):
        self._class = causal_lm_class
        self._model = model
        self._split_prefill = split_prefill
        embedding = VirtualTokenEmbedding(
            backbone.token_embedding, prompt_table
        )
        self.backbone = _BackboneView(backbone, embedding)
        self.sampler = sampler
        self.compute_dtype = backbone.compute_dtype
        self.vocabulary_size = embedding.vocabulary_size
        self.virtual_token_ids = ops.arange(
            embedding.vocabulary_size,
            embedding.vocabulary_size + prompt_table.shape[0],
            dtype="int32",
        )

    def _build_cache(self, token_ids, *args, **kwargs):
        """Seeds the cache like the family's `_build_cache`, in two parts.

        `token_ids` starts with the N virtual ids. Their keys and values
        are input-independent, so they are computed for one row and tiled
        over the batch; the real tokens are then prefilled at index N.
        Returns `(hidden_states, cache)` for the whole sequence.
        """
        if not self._split_prefill:
            return self._class._build_cache(self, token_ids, *args, **kwargs)
        num_tokens = self.virtual_token_ids.shape[0]
        batch_size = ops.shape(token_ids)[0]
        # The family's own empty cache (layout, dtype, full length), for
        # one row, without running the model.
        _, cache = self._class._build_cache(
            _EmptyCacheView(self), token_ids[:1], *args, **kwargs
        )
        _, prefix_hidden, cache = self.call_with_cache(
            token_ids=token_ids[:1, :num_tokens],
            cache=cache,
            cache_update_index=0,
        )
        cache = tree.map_structure(
            lambda x: ops.repeat(x, batch_size, axis=0), cache
        )
        _, hidden_states, cache = self.call_with_cache(
            token_ids=token_ids[:, num_tokens:],
            cache=cache,
            cache_update_index=num_tokens,
        )
        prefix_hidden = ops.repeat(prefix_hidden, batch_size, axis=0)
        hidden_states = ops.concatenate([prefix_hidden, hidden_states], 1)
        return hidden_states, cache

    def __getattr__(self, name):
        # The family's methods run with this view as `self`; any other
        # attribute (variables, `generate_function`, ...) is the model's.
        attribute = getattr(self._class, name, None)
        if inspect.isfunction(attribute):
            return types.MethodType(attribute, self)
        return getattr(self._model, name)


class _EmptyCacheView:
    """A view whose `call_with_cache` returns the cache it is given.

    Running a family's `_build_cache` on it yields the family's empty cache
    (its structure, dtype and length) without running the model.
    """

    def __init__(self, view):
        self._view = view

    def call_with_cache(self, token_ids=None, cache=None, *args, **kwargs):
        return None, None, cache

    def __getattr__(self, name):
        return getattr(self._view, name)

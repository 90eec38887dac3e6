"""Cached decoding for P-tuned models, reusing keras-hub's per-family code.

keras-hub keeps each family's KV-cache decoding (`call_with_cache`,
`_build_cache`, `generate_step`) on its `CausalLM` class. Those methods embed
token ids with `self.backbone.token_embedding`. Here they run on a view whose
`backbone.token_embedding` also knows the virtual tokens: ids
`vocabulary_size .. vocabulary_size + N - 1` look up the prompt table. The
prompt is then just the first N ids of every sequence, and every family's
positions (learned tables and RoPE alike) count the virtual tokens. Nothing
of the backbone is changed.

Two things make this faster than running keras-hub's decoding on the
longer sequence as it is:

- The prefill is split. In a causal model the virtual tokens see only each
  other, so their keys and values are the same for every row: they are
  computed once for a batch of one and tiled, and the real prompt is then
  prefilled at cache index N. (A batch of one row prefills all in one call:
  there is nothing to share, and a call costs about one weight pass.)
- The cache grows in segments. keras-hub allocates the cache for the whole
  `max_length` and every decoding step attends over (and, on some backends,
  copies) all of it, so N more slots would slow every step. Here the cache
  starts with the N virtual slots and `FIRST_SEGMENT_LENGTH` real ones (a
  prompt that fits is prefilled in one call) and grows to `max_length` in
  up to `MAX_SEGMENTS` steps: each segment runs the sampler's own loop over
  a cache only as long as the segment, then the cache is padded to the
  next length. The prompt is prefilled only as far as it reaches; keras-hub
  prefills the padding too. Past the first segment a shared prefix is
  behind the decoding position, so the steps embed real tokens only and
  skip the virtual-token lookup. More segments cost tracing and compile
  time: the first `generate` call traces every segment (measured in
  `docs/results.md`).

Segments need the sampler's plain loop (greedy, top-k, top-p, random).
Samplers with their own loop (beam, contrastive) decode in one segment, as
keras-hub does.
"""

import inspect
import types

from keras import ops
from keras import tree

from keras_ptuning.compat.keras_internals import build_cache
from keras_ptuning.compat.keras_internals import run_sampler
from keras_ptuning.compat.keras_internals import runs_plain_loop

# The cache's first length, the most segments it grows in, and the fewest
# slots a segment adds (see `cache_segment_ends`).
FIRST_SEGMENT_LENGTH = 32
MAX_SEGMENTS = 4
MIN_SEGMENT_GROWTH = 16


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
        self.real_backbone = backbone
        self.token_embedding = token_embedding

    def __getattr__(self, name):
        return getattr(self.real_backbone, name)


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
        first_segment_length: int or `None`. How many real slots the
            cache's first segment has after the N virtual ones (see
            `cache_segment_ends`). `None` decodes in one segment over
            the whole length, as keras-hub does.
        shared_prefix: `None` (computed on every call) or the virtual
            tokens' `(hidden_states, cache)` for one row from
            `shared_prefix_for`, e.g. kept as constants in an export.
    """

    def __init__(
        self,
        causal_lm_class,
        backbone,
        prompt_table,
        sampler,
        model,
        split_prefill=True,
        first_segment_length=None,
        shared_prefix=None,
    ):
        self._class = causal_lm_class
        self.shared_prefix = shared_prefix
        self._model = model
        self.split_prefill = split_prefill
        embedding = VirtualTokenEmbedding(
            backbone.token_embedding, prompt_table
        )
        self.backbone = _BackboneView(backbone, embedding)
        self.sampler = sampler
        if first_segment_length is not None and runs_plain_loop(sampler):
            self.sampler = SegmentedSampler(sampler, self, first_segment_length)
        self.compute_dtype = backbone.compute_dtype
        self.vocabulary_size = embedding.vocabulary_size
        self.virtual_token_ids = ops.arange(
            embedding.vocabulary_size,
            embedding.vocabulary_size + prompt_table.shape[0],
            dtype="int32",
        )
        self._build_cache_args = ((), {})

    def _build_cache(self, token_ids, *args, **kwargs):
        """Seeds the cache like the family's `_build_cache`.

        With segments only the first segment's positions are prefilled
        (the sampler prefills the rest as it grows the cache). With a
        shared prefix, the N virtual ids' keys and values are computed for
        one row and tiled over the batch; the real tokens are then
        prefilled at index N. A batch of one row (known when tracing) is
        prefilled in one call, as the family does: nothing is shared, and
        at one row each call costs about a pass over the weights. Returns
        `(hidden_states, cache)`.
        """
        self._build_cache_args = (args, kwargs)
        token_ids = self._first_segment(token_ids)
        one_row = token_ids.shape[0] == 1 and self.shared_prefix is None
        if one_row or not self.split_prefill:
            return build_cache(self._class, self, token_ids, *args, **kwargs)
        num_tokens = self.virtual_token_ids.shape[0]
        batch_size = ops.shape(token_ids)[0]
        if self.shared_prefix is None:
            prefix_hidden, cache = self.compute_shared_prefix(token_ids[:1])
        else:
            prefix_hidden, cache = self.shared_prefix
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

    def _first_segment(self, token_ids):
        """`token_ids` cut to the cache's first length (all of it without
        segments): what `_build_cache` prefills."""
        if isinstance(self.sampler, SegmentedSampler):
            return token_ids[:, : self.sampler.segment_ends(token_ids)[0]]
        return token_ids

    def compute_shared_prefix(self, token_ids):
        """The virtual tokens' hidden states and cache for one row.

        Args:
            token_ids: `(1, length)` ids starting with the N virtual ids;
                `length` is the cache's (first segment's) length.

        Returns `(hidden_states, cache)`: `(1, N, hidden_dim)` and the
        family's cache for one row, filled at the first N positions.
        """
        num_tokens = self.virtual_token_ids.shape[0]
        _, cache = self.empty_cache(token_ids)
        _, hidden_states, cache = self.call_with_cache(
            token_ids=token_ids[:, :num_tokens],
            cache=cache,
            cache_update_index=0,
        )
        return hidden_states, cache

    def shared_prefix_for(self, total_length):
        """`compute_shared_prefix` for sequences of `total_length` ids (the
        virtual ones included), at the cache length `_build_cache` starts
        with; `None` without a shared prefix. Runs the model."""
        if not self.split_prefill:
            return None
        token_ids = self._first_segment(ops.zeros((1, total_length), "int32"))
        num_tokens = self.virtual_token_ids.shape[0]
        token_ids = ops.concatenate(
            [self.virtual_token_ids[None], token_ids[:, num_tokens:]], 1
        )
        return self.compute_shared_prefix(token_ids)

    def empty_cache(self, token_ids):
        """The family's zero cache (layout, dtype) for `token_ids`' shape.

        Runs the family's `_build_cache` without running the model.
        """
        args, kwargs = self._build_cache_args
        return build_cache(
            self._class, _EmptyCacheView(self), token_ids, *args, **kwargs
        )

    def __getattr__(self, name):
        # The family's methods run with this view as `self`; any other
        # attribute (variables, `generate_function`, ...) is the model's.
        attribute = getattr(self._class, name, None)
        if inspect.isfunction(attribute):
            return types.MethodType(attribute, self)
        return getattr(self._model, name)


def cache_segment_ends(total_length, first_segment_length):
    """Where each cache segment ends: evenly spaced after the first.

    `MAX_SEGMENTS` segments at most, each adding `MIN_SEGMENT_GROWTH`
    slots or more; a sequence shorter than `first_segment_length +
    MIN_SEGMENT_GROWTH` decodes in one. Evenly spaced ends keep the last,
    full-length segment short: decoding from a short prompt to a long `T`
    scans about two thirds of `T` slots a step with 4 segments, keras-hub
    all `T`.

    Args:
        total_length: int, the sequence length with the virtual tokens.
        first_segment_length: int, the first segment's length.

    Example:

    >>> cache_segment_ends(100, 32)
    [32, 55, 77, 100]
    """
    growth = total_length - first_segment_length
    count = min(MAX_SEGMENTS, 1 + growth // MIN_SEGMENT_GROWTH)
    if count < 2:
        return [total_length]
    step = growth / (count - 1)
    ends = [first_segment_length + round(k * step) for k in range(count)]
    return ends


class SegmentedSampler:
    """Runs a plain-loop sampler segment by segment over a growing cache.

    Args:
        sampler: a `keras_hub.samplers.Sampler` using the plain loop.
        view: the `CausalLMView` whose cache it grows.
        first_segment_length: int, the real slots of the first segment
            (after the view's N virtual ones).
    """

    def __init__(self, sampler, view, first_segment_length):
        self.sampler = sampler
        self.view = view
        self.first_segment_length = first_segment_length

    def segment_ends(self, token_ids):
        total_length = token_ids.shape[1]
        if not isinstance(total_length, int):
            return [total_length]
        # The first segment holds the virtual tokens and
        # `first_segment_length` real slots, so a prompt that fits is
        # prefilled in one call.
        num_tokens = self.view.virtual_token_ids.shape[0]
        first = num_tokens + self.first_segment_length
        return cache_segment_ends(total_length, first)

    def __call__(self, next, prompt, cache, index=0, mask=None, **kwargs):
        ends = self.segment_ends(prompt)
        index = ops.cast(index, "int32")
        if mask is None:
            mask = ops.zeros_like(prompt, dtype="bool")
        view = self.view
        extended_backbone = view.backbone
        start = 0
        try:
            for end in ends:
                if start:
                    cache = self.grow(cache, prompt[:, :end], mask, start)
                    if view.split_prefill:
                        # Past the first segment a shared prefix is behind:
                        # only real ids, so skip the virtual-token lookup.
                        view.backbone = extended_backbone.real_backbone
                head, cache = run_sampler(
                    self.sampler,
                    next,
                    prompt[:, :end],
                    cache=cache,
                    index=ops.maximum(index, start),
                    mask=mask[:, :end],
                    **kwargs,
                )
                if end < ends[-1]:
                    head = ops.concatenate([head, prompt[:, end:]], axis=1)
                prompt = head
                start = end
        finally:
            view.backbone = extended_backbone
        return prompt

    def grow(self, cache, token_ids, mask, start):
        """Pads the cache to `token_ids`' length, prefilling new prompt.

        The new positions are prefilled only where a row's prompt reaches
        them; otherwise the loop writes them as it decodes.
        """
        view = self.view
        _, empty = view.empty_cache(token_ids)
        cache = tree.map_structure(
            lambda old, new: ops.slice_update(new, [0] * len(new.shape), old),
            cache,
            empty,
        )

        def prefill():
            return view.call_with_cache(
                token_ids=token_ids[:, start:],
                cache=cache,
                cache_update_index=start,
            )[2]

        reaches = ops.any(mask[:, start : token_ids.shape[1]])
        return ops.cond(reaches, prefill, lambda: cache)


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

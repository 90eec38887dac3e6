"""Training a causal decoder's virtual tokens without a backward pass over
the text before them.

In a decoder-only model a position attends only to the positions before
it. With the backbone frozen, the real tokens before a row's first
virtual token (an RTE premise, a BoolQ passage, a LAMA subject) have
hidden states, keys and values that no prompt can change, yet a plain
training step runs them backward through every layer. Here a training
step splits the batch's sequence at `P`, the earliest first virtual token
of its rows: positions `0..P-1` run forward through the family's own
cached decoding (`call_with_cache`, see
`keras_ptuning.backbones.cached_decoding`) and enter the rest as
constants (their keys and values in the cache); positions `P..L-1` run
on that cache, with gradients. The result is
today's forward pass, position for position: the padding mask masks the
cache's keys (padding on either side), and positions count from 0 as in
the backbone's own call.

Only where the split point is known when the step runs, as an int:
PyTorch's steps (eager) and JAX's outside `jit`. Under `jit` (JAX's
`fit`) it is a traced value and XLA's shapes are static; TensorFlow has
no gradient for the cache update (`XlaDynamicUpdateSlice`): those steps
run the whole sequence as before, with the same results. A backbone
with trainable weights (LoRA) depends on them before the prompt too, so
it runs whole.
"""

import contextlib
import inspect
import warnings

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_ptuning.compat.keras_internals import build_cache
from keras_ptuning.compat.keras_internals import sublayers
from keras_ptuning.input_validation import check_positive_int
from keras_ptuning.input_validation import concrete_numpy

# The padding-mask argument of each family's decoder layer.
_MASK_ARGUMENTS = ("decoder_padding_mask", "padding_mask")
# The decoder layer's argument for a full `(batch, queries, keys)` mask,
# where a family takes one.
_ATTENTION_MASK_ARGUMENT = "decoder_attention_mask"


def _mask_argument(layer):
    parameters = inspect.signature(layer.call).parameters
    for name in _MASK_ARGUMENTS:
        if name in parameters:
            return name
    return None


class _SegmentEmbedding:
    """A token embedding that returns the segment's spliced embeddings.

    The family's `call_with_cache` embeds `token_ids` first; here they are
    placeholders of the segment's shape, and the embeddings (real tokens
    and virtual ones, as `PTuningBackbone` assembled them) are set before
    each call. Logits (`reverse=True`) are not needed: the hidden states
    are returned unprojected, saving the vocabulary projection.
    """

    def __init__(self):
        self.embeddings = None

    def __call__(self, token_ids, reverse=False, **kwargs):
        if reverse:
            return token_ids
        return self.embeddings


class _Masked:
    """A decoder layer called with the padding mask over the cache's keys
    and the backbone's training mode."""

    def __init__(self, layer, mask_argument, view):
        self.layer = layer
        self.mask_argument = mask_argument
        self.view = view

    def __call__(self, *args, **kwargs):
        if kwargs.get(self.mask_argument) is None:
            kwargs[self.mask_argument] = self.view.key_mask
        if self.view.attention_mask is not None:
            kwargs[_ATTENTION_MASK_ARGUMENT] = self.view.attention_mask
        return self.layer(*args, training=self.view.training, **kwargs)


class _Layer:
    """Any other backbone layer, called in the backbone's training mode."""

    def __init__(self, layer, view):
        self.layer = layer
        self.view = view

    def __call__(self, *args, **kwargs):
        if "training" in inspect.signature(self.layer.call).parameters:
            kwargs["training"] = self.view.training
        return self.layer(*args, **kwargs)


class _DecoderView:
    """The backbone as a family's `CausalLM` methods see it (`self.backbone`
    and `self.compute_dtype`), running on spliced embeddings."""

    def __init__(self, backbone, training):
        self._backbone = backbone
        self.token_embedding = _SegmentEmbedding()
        self.training = training
        self.key_mask = None
        self.attention_mask = None
        self.transformer_layers = [
            _Masked(layer, _mask_argument(layer), self)
            for layer in backbone.transformer_layers
        ]

    @property
    def backbone(self):
        return self

    @property
    def compute_dtype(self):
        return self._backbone.compute_dtype

    def __getattr__(self, name):
        value = getattr(self._backbone, name)
        if hasattr(value, "call") and callable(value):
            return _Layer(value, self)
        return value


def supports(backbone, causal_lm_class):
    """Whether a decoder backbone can run split (every layer takes a
    padding mask and a cache, as keras-hub's decoders do)."""
    if causal_lm_class is None:
        return False
    layers = getattr(backbone, "transformer_layers", None)
    return bool(layers) and all(_mask_argument(layer) for layer in layers)


def split_point(token_ids, placeholder_id):
    """`P`, the earliest position of a virtual-token slot in the batch, as
    an int; `None` where the step cannot split: `P` is 0, or traced (XLA's
    shapes are static: JAX's `jit`), or the backend is TensorFlow (the
    cache update, `XlaDynamicUpdateSlice`, has no gradient there).

    Args:
        token_ids: `(batch, length)` ids with `placeholder_id` at slots.
        placeholder_id: the slot marker.
    """
    if keras.config.backend() == "tensorflow":
        return None
    is_slot = ops.equal(token_ids, placeholder_id)
    first = ops.argmax(ops.cast(is_slot, "int32"), axis=1)
    value = concrete_numpy(ops.min(first))
    return None if value is None else int(value) or None


def _empty_cache(causal_lm_class, view, placeholder_ids):
    """The family's zero cache for `placeholder_ids`' shape (the model
    does not run)."""

    class _NoRun:
        def __init__(self, view):
            self._view = view

        def call_with_cache(self, token_ids=None, cache=None, *a, **k):
            return None, None, cache

        def __getattr__(self, name):
            return getattr(self._view, name)

    parameters = list(
        inspect.signature(causal_lm_class._build_cache).parameters.values()
    )[2:]
    extra = [None for p in parameters if p.default is inspect.Parameter.empty]
    _, cache = build_cache(
        causal_lm_class, _NoRun(view), placeholder_ids, *extra
    )
    return cache


def _sequence_axes(causal_lm_class, view, batch):
    """Each cache tensor's position axis: where a cache one slot longer is
    longer (the families lay their caches out differently)."""
    shapes = [
        tree.map_structure(
            lambda x: np.array(x.shape),
            _empty_cache(causal_lm_class, view, ops.zeros((batch, n), "int32")),
        )
        for n in (2, 3)
    ]

    def axis(short, long):
        return int(np.flatnonzero(short != long)[0])

    return tree.map_structure_up_to(shapes[0], axis, shapes[0], shapes[1])


def _positions(x, axis, start, stop):
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def run_split(
    causal_lm_class,
    backbone,
    embeddings,
    padding_mask,
    split,
    training,
    prefix_cache=None,
    row_keys=None,
):
    """The decoder's sequence output, with positions `0..split-1` run as
    constants.

    Args:
        causal_lm_class: the family's keras-hub `CausalLM` class.
        backbone: the frozen keras-hub decoder backbone.
        embeddings: `(batch, length, hidden_dim)`, the spliced token
            embeddings (the backbone's token-embedding output).
        padding_mask: `(batch, length)`, 1 at real and virtual tokens.
        split: int in `[1, length)`: where the prompt can first change
            anything.
        training: the backbone's training mode.
        prefix_cache: `None` or a `FrozenPrefixCache`: rows it holds
            reuse their stored prefix instead of running it.
        row_keys: with `prefix_cache`, each row's key (`row_key`).

    Returns the `(batch, length, hidden_dim)` hidden states, equal to the
    backbone's output on `embeddings`.
    """
    view = _DecoderView(backbone, training)
    view.key_mask = padding_mask
    methods = causal_lm_class
    batch, length = ops.shape(padding_mask)[0], ops.shape(padding_mask)[1]
    cache = _empty_cache(methods, view, ops.zeros((batch, length), "int32"))

    def run(start, stop, cache, constant=False):
        segment = embeddings[:, start:stop]
        if constant:
            segment = ops.stop_gradient(segment)
        view.token_embedding.embeddings = segment
        ids = ops.zeros((batch, stop - start), "int32")
        _, hidden, cache = methods.call_with_cache(
            view, token_ids=ids, cache=cache, cache_update_index=start
        )
        return hidden, cache

    stored = 0
    if prefix_cache is not None:
        axes = prefix_cache.axes(lambda: _sequence_axes(methods, view, 1))
        stored, prefix, cache = prefix_cache.lookup(row_keys, split, cache)
    if stored < split:
        # `stored..split-1` run forward on what is stored (if anything),
        # from constants: no backward pass is recorded there either.
        known = prefix if stored else None
        hidden, cache = run(stored, split, cache, constant=True)
        if known is not None:
            hidden = ops.concatenate([known, hidden], 1)
        prefix = hidden
        prefix, cache = tree.map_structure(ops.stop_gradient, (prefix, cache))
        if prefix_cache is not None:
            prefix_cache.store(row_keys, split, prefix, cache, axes)
    rest, _ = run(split, length, cache)
    return ops.concatenate([prefix, rest], axis=1)


def _bytes(x):
    dtype = keras.backend.standardize_dtype(x.dtype)
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    return int(np.prod(x.shape)) * itemsize


def row_keys(token_ids, padding_mask, placeholder_id):
    """`row_key` of every row of a batch (NumPy values)."""
    token_ids = np.asarray(token_ids)
    padding_mask = np.asarray(padding_mask)
    firsts = np.argmax(token_ids == placeholder_id, axis=1)
    return [
        row_key(ids, mask, first)
        for ids, mask, first in zip(token_ids, padding_mask, firsts)
    ]


def row_key(token_ids, padding_mask, first):
    """What a row's prefix states depend on: its ids and mask before its
    first virtual token (`first`), as bytes."""
    return (
        np.asarray(token_ids[:first], "int32").tobytes()
        + np.asarray(padding_mask[:first], "int8").tobytes()
    )


class FrozenPrefixCache:
    """Each training row's frozen-prefix states, kept across epochs.

    A row's hidden states and keys/values before its first virtual token
    depend only on the tokens there (the backbone is frozen and computes
    as at inference), so a row seen again reuses them: a step then runs
    only the positions from its batch's split point on. Rows are found by
    content (`row_key`), so any input pipeline (arrays, `tf.data`,
    `LengthBucketedDataset`, shuffling) finds them.

    Each row stores as many positions as its first batch ran before the
    split; a later batch that splits further runs the missing positions
    forward (no backward) and stores them too.

    Args:
        max_bytes: int >= 1. The most memory the stored states may take.
            Rows beyond it are not stored (they run their prefix forward
            every step, still without a backward pass); a warning says so
            once.
    """

    def __init__(self, max_bytes):
        check_positive_int("frozen_prefix_cache_bytes", max_bytes, "bytes")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.rows = {}
        self.hits = 0
        self.misses = 0
        self._axes = None
        self._warned = False

    def axes(self, find):
        if self._axes is None:
            self._axes = find()
        return self._axes

    def lookup(self, keys, split, empty_cache):
        """`(stored, prefix, cache)`: how many leading positions every row
        has stored (at most `split`; 0 if any row has none), their hidden
        states `(batch, stored, dim)` and the cache with them filled in."""
        entries = [self.rows.get(key) for key in keys]
        if any(entry is None for entry in entries):
            self.misses += sum(entry is None for entry in entries)
            self.hits += sum(entry is not None for entry in entries)
            return 0, None, empty_cache
        self.hits += len(entries)
        stored = min(split, min(entry[0] for entry in entries))
        prefix = ops.concatenate([e[1][None, :stored] for e in entries], 0)

        def fill(empty, axis, *rows):
            values = ops.concatenate(
                [_positions(row, axis - 1, 0, stored)[None] for row in rows], 0
            )
            start = [0] * len(empty.shape)
            return ops.slice_update(empty, start, ops.cast(values, empty.dtype))

        cache = tree.map_structure_up_to(
            empty_cache,
            fill,
            empty_cache,
            self._axes,
            *[entry[2] for entry in entries],
        )
        return stored, prefix, cache

    def store(self, keys, split, prefix, cache, axes):
        """Keeps each row's first `split` positions (if longer than what
        it has, and within the budget)."""
        for row, key in enumerate(keys):
            old = self.rows.get(key)
            if old is not None and old[0] >= split:
                continue

            def keep(axis, x, row=row):
                # A copy: a view would keep the whole batch's tensor alive.
                return ops.copy(_positions(x[row], axis - 1, 0, split))

            states = tree.map_structure_up_to(axes, keep, axes, cache)
            entry = (split, ops.copy(prefix[row, :split]), states)
            size = sum(_bytes(x) for x in tree.flatten((entry[1], states)))
            freed = 0 if old is None else old[3]
            if self.bytes - freed + size > self.max_bytes:
                self._warn_full()
                continue
            self.rows[key] = entry + (size,)
            self.bytes += size - freed

    def _warn_full(self):
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"The frozen-prefix cache is full ({len(self.rows)} rows, "
            f"{self.bytes / 2**20:.1f} MiB of frozen_prefix_cache_bytes="
            f"{self.max_bytes}): rows beyond it run their prefix forward "
            "at every step (still without a backward pass).",
            stacklevel=2,
        )


def packs_choices(backbone, length):
    """Whether a context's continuations can run side by side in one call
    of `length` positions (`run_shared_context`): each continuation then
    needs its own positions (RoPE's, counted on from the context) and a
    mask that hides the other continuations from it.

    That holds where every decoder layer takes a full attention mask
    (`decoder_attention_mask`), positions enter only through keras-hub's
    `RotaryEmbedding` (the decoder has one; a learned position table or
    ALiBi, with no rotary layer, does not pack) and no sliding window is
    shorter than `length` (a window counts positions as they lie in the
    call)."""
    layers = getattr(backbone, "transformer_layers", None)
    if not layers or not all(
        _ATTENTION_MASK_ARGUMENT in inspect.signature(layer.call).parameters
        for layer in layers
    ):
        return False
    rotary = _rotary_layers(backbone)
    if not rotary or not all(
        "positions" in inspect.signature(layer.call).parameters
        for layer in rotary
    ):
        return False
    for layer in sublayers(backbone):
        for name, value in vars(layer).items():
            if (
                "sliding_window" in name
                and isinstance(value, int)
                and not isinstance(value, bool)
                and value < length
            ):
                return False
    return True


def _rotary_layers(backbone):
    from keras_hub.layers import RotaryEmbedding

    return [
        layer
        for layer in sublayers(backbone)
        if isinstance(layer, RotaryEmbedding)
    ]


@contextlib.contextmanager
def _rotary_positions(backbone, positions):
    """Every `RotaryEmbedding` of the backbone rotates at `positions`
    (one per position of the call) instead of counting from the cache
    index, while the context lasts. The layers are unchanged after it;
    during it, another thread calling the same backbone would rotate at
    these positions too."""
    layers = _rotary_layers(backbone)
    fixed = positions
    for layer in layers:

        def at_positions(
            inputs, start_index=0, positions=None, call=layer.call
        ):
            return call(inputs, positions=fixed)

        object.__setattr__(layer, "call", at_positions)
    try:
        yield
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")


def run_shared_context(
    causal_lm_class,
    backbone,
    context,
    context_mask,
    rest,
    rest_mask,
    training,
    split=None,
    pack=True,
):
    """Hidden states of contexts run once and of several continuations of
    each (multiple-choice scoring), equal to running every continuation
    after its context in full.

    Where the backbone can (`packs_choices`) and `pack` is set, each
    context's continuations run side by side in the context's own call,
    each at the positions that follow the context and masked from the
    others. Else the first continuation runs in the context's call and the
    others in one more call on the context's cache, their keys and values
    written over the first one's at the same positions.

    Args:
        causal_lm_class: the family's keras-hub `CausalLM` class.
        backbone: the keras-hub decoder backbone.
        context: `(groups, n, hidden_dim)` spliced embeddings of the
            contexts, all of length `n` (no padding after them).
        context_mask: `(groups, n)`, the contexts' padding mask.
        rest: `(groups * copies, r, hidden_dim)` embeddings of the
            continuations, each context's `copies` in a row.
        rest_mask: `(groups * copies, r)`, their padding mask.
        training: the backbone's training mode.
        split: `None` or an int in `[1, n)`: the contexts' positions
            before it run as constants (a frozen prefix).
        pack: whether continuations may run side by side (a few choices);
            `False` for many (a batch's rows after shared demonstrations),
            whose masked attention to each other would grow with their
            number squared.

    Returns `(context_states, rest_states)`: `(groups, n, hidden_dim)` and
    `(groups * copies, r, hidden_dim)`.
    """
    view = _DecoderView(backbone, training)
    methods = causal_lm_class
    groups, n = ops.shape(context_mask)[0], ops.shape(context_mask)[1]
    copies = ops.shape(rest_mask)[0] // groups
    r, hidden_dim = ops.shape(rest_mask)[1], ops.shape(rest)[-1]
    packed = pack and copies > 1 and packs_choices(backbone, n + copies * r)
    # The continuations that run in the context's call: all, or the first.
    along = copies if packed else 1
    rest = ops.reshape(rest, (groups, copies, r, hidden_dim))
    rest_mask = ops.reshape(rest_mask, (groups, copies, r))

    def run(embeddings, start, cache):
        view.token_embedding.embeddings = embeddings
        ids = ops.zeros(ops.shape(embeddings)[:2], "int32")
        _, hidden, cache = methods.call_with_cache(
            view, token_ids=ids, cache=cache, cache_update_index=start
        )
        return hidden, cache

    cache = _empty_cache(
        methods, view, ops.zeros((groups, n + along * r), "int32")
    )
    view.key_mask = ops.concatenate(
        [context_mask, ops.reshape(rest_mask[:, :along], (groups, -1))], 1
    )
    start = split or 0
    if split:
        prefix, cache = run(ops.stop_gradient(context[:, :split]), 0, cache)
        prefix, cache = tree.map_structure(ops.stop_gradient, (prefix, cache))
    embeddings = ops.concatenate(
        [
            context[:, start:],
            ops.reshape(rest[:, :along], (groups, -1, hidden_dim)),
        ],
        1,
    )
    if packed:
        # Keys are the context's (-1) or a continuation's (its index); a
        # continuation sees the context and itself (the causal mask does
        # the rest), at the positions after the context.
        blocks = np.concatenate(
            [np.full(n, -1), np.repeat(np.arange(copies), r)]
        )
        visible = (blocks[None] == -1) | (blocks[None] == blocks[start:, None])
        view.attention_mask = ops.convert_to_tensor(
            np.broadcast_to(visible, (groups,) + visible.shape).astype("int32")
        )
        positions = np.concatenate(
            [np.arange(start, n), np.tile(np.arange(n, n + r), copies)]
        ).astype("float32")
        try:
            with _rotary_positions(backbone, positions):
                hidden, cache = run(embeddings, start, cache)
        finally:
            view.attention_mask = None
    else:
        hidden, cache = run(embeddings, start, cache)
    context_states = hidden[:, : n - start]
    if split:
        context_states = ops.concatenate([prefix, context_states], 1)
    rest_states = [
        ops.reshape(hidden[:, n - start :], (groups, along, r, hidden_dim))
    ]
    if along < copies:
        cache = tree.map_structure(
            lambda x: ops.repeat(x, copies - along, axis=0), cache
        )
        others = ops.reshape(
            rest[:, along:], (groups * (copies - along), r, hidden_dim)
        )
        view.key_mask = ops.concatenate(
            [
                ops.repeat(context_mask, copies - along, axis=0),
                ops.reshape(
                    rest_mask[:, along:], (groups * (copies - along), r)
                ),
            ],
            1,
        )
        hidden, _ = run(others, n, cache)
        rest_states.append(
            ops.reshape(hidden, (groups, copies - along, r, hidden_dim))
        )
    rest_states = ops.reshape(
        ops.concatenate(rest_states, 1), (groups * copies, r, hidden_dim)
    )
    return context_states, rest_states

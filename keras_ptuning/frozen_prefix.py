"""Training a causal decoder's virtual tokens without a backward pass over
the text before them.

In a decoder-only model a position attends only to the positions before
it. With the backbone frozen, the real tokens before a row's first
virtual token (an RTE premise, a BoolQ passage, a LAMA subject) have
hidden states, keys and values that no prompt can change, yet a plain
training step runs them backward through every layer. Here a training
step splits the batch's sequence at `P`, the earliest first virtual token
of its rows: positions `0..P-1` run forward through the family's own
cached decoding (`call_with_cache`, see `keras_ptuning.cached_decoding`)
and enter the rest as constants (their keys and values in the cache);
positions `P..L-1` run on that cache, with gradients. The result is
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

import inspect

import keras
from keras import ops
from keras import tree

from keras_ptuning.input_validation import concrete_numpy
from keras_ptuning.keras_internals import build_cache

# The padding-mask argument of each family's decoder layer.
_MASK_ARGUMENTS = ("decoder_padding_mask", "padding_mask")


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


def run_split(
    causal_lm_class, backbone, embeddings, padding_mask, split, training
):
    """The decoder's sequence output, with positions `0..split-1` run as
    constants.

    Args:
        causal_lm_class: the family's keras-hub `CausalLM` class.
        backbone: the frozen keras-hub decoder backbone.
        embeddings: `(batch, length, hidden_dim)`, the spliced token
            embeddings (the backbone's token-embedding output).
        padding_mask: `(batch, length)`, 1 at real and virtual tokens.
        split: int or int tensor in `[0, length)`: where the prompt can
            first change anything.
        training: the backbone's training mode.

    Returns the `(batch, length, hidden_dim)` hidden states, equal to the
    backbone's output on `embeddings`.
    """
    view = _DecoderView(backbone, training)
    view.key_mask = padding_mask
    methods = causal_lm_class
    batch, length = ops.shape(padding_mask)[0], ops.shape(padding_mask)[1]
    cache = _empty_cache(methods, view, ops.zeros((batch, length), "int32"))

    def run(start, stop, cache):
        view.token_embedding.embeddings = embeddings[:, start:stop]
        ids = ops.zeros((batch, stop - start), "int32")
        _, hidden, cache = methods.call_with_cache(
            view, token_ids=ids, cache=cache, cache_update_index=start
        )
        return hidden, cache

    prefix, cache = run(0, split, cache)
    prefix, cache = tree.map_structure(ops.stop_gradient, (prefix, cache))
    rest, _ = run(split, length, cache)
    return ops.concatenate([prefix, rest], axis=1)

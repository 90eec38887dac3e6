"""Projecting a causal LM's hidden states to the vocabulary only where the
loss looks.

A causal LM's training step projects every position's hidden state onto
the vocabulary (`hidden_dim x vocabulary_size` per position: 576 x 49,152
on SmolLM2), forward and backward, yet the loss weighs only the positions
whose sample weight is nonzero. A template that scores a few answer
tokens after a long passage (what a verbalizer scores) pays for the
projection of every passage position. Here a training step whose sample
weights are known when it runs (PyTorch's eager steps, JAX and
TensorFlow run eagerly) projects only the weighted positions, and the
loss and metrics see those positions alone, weighted so that every value
equals the whole projection's:

- the compiled loss reduces with `"sum_over_batch_size"` (keras' default:
  the weighted sum over the number of positions) or `"sum"`: the gathered
  weights are scaled by `gathered / all` positions for the first;
- metrics are `weighted_metrics` (keras-hub's `CausalLM.compile`): a
  weighted mean over positions of weight 0 adds nothing.

A step where any of that does not hold (unweighted metrics, another
reduction, a loss with `ignore_class`, traced sample weights, every
position weighted) projects every position, as before.
"""

import keras
import numpy as np
from keras import ops

from keras_ptuning.compat.keras_internals import compiled_metrics
from keras_ptuning.input_validation import concrete_numpy

_REDUCTIONS = ("sum_over_batch_size", "sum")


class ScoredPositions:
    """The flat indices `(batch * length)` of the weighted positions.

    Args:
        indices: int array, sorted: where the sample weight is nonzero.
        total: int, the number of positions (`batch * length`).
        reduction: the compiled loss's reduction.
    """

    def __init__(self, indices, total, reduction):
        self.indices = indices
        self.total = total
        self.reduction = reduction
        # One tensor for the step's five gathers (logits, targets, weights).
        self._index_tensor = ops.convert_to_tensor(indices)

    def gather(self, x):
        """`x`'s `(batch, length, ...)` values at the weighted positions, as
        one row: `(1, positions, ...)`."""
        flat = ops.reshape(x, (-1,) + tuple(ops.shape(x)[2:]))
        return ops.take(flat, self._index_tensor, axis=0)[None]

    def loss_weights(self, sample_weight):
        """The gathered sample weights under which the loss reduces to the
        whole projection's value."""
        weights = self.gather(sample_weight)
        if self.reduction == "sum_over_batch_size":
            weights = weights * (len(self.indices) / self.total)
        return weights


def find(model, sample_weight):
    """The `ScoredPositions` of a training step, or `None` where every
    position is projected (see the module docstring).

    Args:
        model: the compiled causal LM.
        sample_weight: the step's `(batch, length)` sample weights.
    """
    if sample_weight is None:
        return None
    weights = concrete_numpy(sample_weight)
    if weights is None or weights.ndim != 2:
        return None
    loss = getattr(model, "loss", None)
    if not isinstance(loss, keras.losses.Loss):
        return None
    if loss.reduction not in _REDUCTIONS:
        return None
    if getattr(loss, "ignore_class", None) is not None:
        return None
    if compiled_metrics(model):
        return None
    indices = np.flatnonzero(weights.reshape(-1)).astype("int32")
    if indices.size in (0, weights.size):
        return None
    return ScoredPositions(indices, weights.size, loss.reduction)

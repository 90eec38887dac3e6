"""Splitting a keras-hub backbone at its token-embedding output.

This module is the one place that knows how keras-hub backbones differ. A
keras-hub backbone is a functional graph, so the graph from the token
embedding's output to the backbone's outputs is itself a model (the *body*)
that can run on embeddings we assemble: real-token embeddings from the
backbone's own embedding layer, with virtual-token embeddings spliced in.

Families differ in two ways only:

- Fused embeddings (`TokenAndPositionEmbedding`, e.g. DistilBERT, RoBERTa):
  the graph holds token+position embeddings as one node, so the split is at
  that node's output and positions are added to the spliced sequence here.
- Causal (decoder-only) models: found from keras-hub's own `CausalLM` task
  classes, used to pick the classifier's pooling token.
"""

import keras
import keras_hub
from keras import ops

from keras_ptuning.compat.keras_internals import functional_nodes
from keras_ptuning.compat.keras_internals import sublayers

# Inputs aligned with `token_ids` and the value that virtual tokens get.
SEQUENCE_INPUT_FILL = {"padding_mask": 1, "segment_ids": 0}


def _subclasses(cls):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _subclasses(subclass)


def causal_lm_class(backbone):
    """The keras-hub `CausalLM` class built for this backbone's class, if any.

    Its `call_with_cache`, `_build_cache` and `generate_step` hold the
    family's cached decoding, which `keras_ptuning.backbones.cached_decoding`
    reuses.
    """
    for task_cls in _subclasses(keras_hub.models.CausalLM):
        if task_cls.__module__.startswith("keras_ptuning"):
            continue
        if getattr(task_cls, "backbone_cls", None) is type(backbone):
            return task_cls
    return None


class BackboneSplit:
    """A keras-hub backbone seen as `embed_tokens` -> splice -> `body`.

    Args:
        backbone: a functional `keras_hub.models.Backbone` with a
            `token_embedding` layer applied to its `token_ids` input.

    Attributes:
        backbone: the backbone, unchanged.
        token_embedding: the backbone's token embedding layer.
        hidden_dim: the embedding size.
        input_names: the backbone's input names, `"token_ids"` first.
        max_positions: the backbone's position limit, or `None` (RoPE).
        causal_lm_class: the keras-hub `CausalLM` class for the backbone, or
            `None` for encoders.
        is_causal: whether the backbone is a decoder-only language model.
        body: a `keras.Model` that runs the backbone from its embedding
            output; its inputs are `[embeddings] + [inputs[name] for name in
            input_names[1:]]`.
    """

    def __init__(self, backbone):
        if not isinstance(backbone, keras_hub.models.Backbone):
            raise TypeError(
                "`backbone` must be a `keras_hub.models.Backbone`. Received: "
                f"backbone={backbone!r} of type {type(backbone).__name__}"
            )
        token_embedding = getattr(backbone, "token_embedding", None)
        inputs = backbone.input
        if token_embedding is None or not isinstance(inputs, dict):
            raise ValueError(
                "`backbone` must have a `token_embedding` layer and dict "
                f"inputs. {type(backbone).__name__} has token_embedding="
                f"{token_embedding!r} and inputs={inputs!r}"
            )
        if "token_ids" not in inputs:
            raise ValueError(
                "`backbone` must take a `token_ids` input. "
                f"{type(backbone).__name__} takes {sorted(inputs)}"
            )
        unsupported = sorted(
            set(inputs) - {"token_ids"} - set(SEQUENCE_INPUT_FILL)
        )
        if unsupported:
            raise ValueError(
                f"{type(backbone).__name__} takes inputs {unsupported} that "
                "P-tuning does not support (only text backbones with "
                f"`token_ids` and {sorted(SEQUENCE_INPUT_FILL)} are). Build "
                "the backbone text-only."
            )
        self.backbone = backbone
        self.token_embedding = token_embedding
        self.hidden_dim = int(token_embedding.output_dim)
        self.input_names = ["token_ids"] + sorted(set(inputs) - {"token_ids"})
        self.causal_lm_class = causal_lm_class(backbone)
        self.is_causal = self.causal_lm_class is not None
        self._fused = None
        split_tensor = self._find_split_tensor(inputs["token_ids"])
        self.max_positions = self._find_max_positions()
        try:
            self.body = keras.Model(
                inputs=[split_tensor]
                + [inputs[name] for name in self.input_names[1:]],
                outputs=backbone.output,
                name=f"{backbone.name}_body",
            )
        except ValueError as error:
            raise ValueError(
                f"{type(backbone).__name__} uses `token_ids` beyond its token "
                "embedding, so it cannot be split there for P-tuning."
            ) from error

    def _find_split_tensor(self, token_ids):
        for node in functional_nodes(self.backbone):
            if not any(t is token_ids for t in node.input_tensors):
                continue
            layer = node.operation
            if layer is self.token_embedding:
                return node.output_tensors[0]
            if getattr(layer, "token_embedding", None) is self.token_embedding:
                # A fused token+position embedding layer.
                self._fused = layer
                return node.output_tensors[0]
        raise ValueError(
            f"{type(self.backbone).__name__}.token_embedding is not applied to "
            "the `token_ids` input in the backbone's graph, so P-tuning cannot "
            "find where to insert virtual tokens."
        )

    def _find_max_positions(self):
        limits = [
            layer.sequence_length
            for layer in sublayers(self.backbone)
            if isinstance(layer, keras_hub.layers.PositionEmbedding)
        ]
        return min(limits) if limits else None

    def embed_tokens(self, token_ids):
        """Token embeddings of `token_ids`, without positions."""
        return self.token_embedding(token_ids)

    def finish_embeddings(self, embeddings):
        """Turns spliced token embeddings into the body's input."""
        if self._fused is None:
            return embeddings
        positions = self._fused.position_embedding(embeddings)
        return ops.add(embeddings, positions)

"""What a classifier head reads from a backbone: its pooling."""

from keras import ops

from keras_ptuning.backbones.backbone_split import causal_lm_class

# What the head can read: the backbone's pooled output (BERT's pooler),
# the first position, the last non-padding token, or the mean over the
# non-padding tokens.
POOLING_MODES = ("pooled", "first", "last", "mean")


def default_pooling(backbone):
    """The classifier's readout when none is given, chosen per family.

    Decoder-only models read the last real token (the only one that sees
    the whole input). Encoders read the mean over the real tokens: with a
    frozen backbone the readout cannot adapt, and a mean keeps every
    token's information, where BERT's pooler (trained on `[CLS]`, here
    reading the first virtual token) kept little of it. The SST-2
    measurements behind this choice are in `docs/results.md`.
    """
    return "last" if _is_causal(backbone) else "mean"


def hf_pooling(backbone):
    """What HF's `*ForSequenceClassification` (and PEFT) reads.

    BERT's pooled output where the backbone has one, the last real token for
    decoder-only models, the first token (`[CLS]`, `<s>`) for other
    encoders. Classifiers saved before `pooling` existed read this, and a
    head written to or read from a PEFT adapter needs it.

    Args:
        backbone: a keras-hub backbone or a `keras_ptuning.PTuningBackbone`.

    Returns:
        The `pooling` string: `"pooled"`, `"last"` or `"first"`.

    Example:
    ```python
    from keras_ptuning.presets import minilm_preset_dir

    backbone = keras_hub.models.BertBackbone.from_preset(minilm_preset_dir())
    classifier = keras_ptuning.PTuningTextClassifier(
        backbone,
        num_classes=2,
        prompt_config=keras_ptuning.PromptEncoderConfig(20),
        pooling=keras_ptuning.hf_pooling(backbone),  # "pooled"
    )
    keras_ptuning.save_peft_adapter(classifier, "adapter")
    ```
    """
    if has_pooled_output(backbone):
        return "pooled"
    return "last" if _is_causal(backbone) else "first"


def check_head_pooling(model, expected, argument, what):
    """Raises unless `model`'s head reads `expected`: a head trained on one
    readout gives wrong logits on another (adapters, PEFT heads)."""
    if model.pooling != expected:
        raise ValueError(
            f"The head of {what} was trained reading `{expected}`; this "
            f"classifier's head reads `{model.pooling}`. Build the "
            f"classifier with `pooling={expected!r}`. Received: "
            f"{argument}={model.pooling!r}"
        )


def pool(outputs, padding_mask, pooling):
    """What a classifier head reads from a backbone's outputs.

    Args:
        outputs: the backbone's output: a dict with `sequence_output` (and
            `pooled_output` for BERT) or the sequence tensor.
        padding_mask: `(batch, sequence_length)`, 1 at real tokens.
        pooling: one of `POOLING_MODES`.
    """
    if pooling == "pooled":
        return outputs["pooled_output"]
    sequence = (
        outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    )
    if pooling == "first":
        return sequence[:, 0, :]
    if pooling == "last":
        return last_token_states(sequence, padding_mask)
    return _mean_over_real_tokens(sequence, padding_mask)


def has_pooled_output(backbone):
    """Whether the backbone outputs a `pooled_output` (BERT's pooler)."""
    return isinstance(backbone.output, dict) and (
        "pooled_output" in backbone.output
    )


def _is_causal(backbone):
    # A `PTuningBackbone` knows; a plain keras-hub backbone is decoder-only
    # when keras-hub has a `CausalLM` for its class.
    is_causal = getattr(backbone, "is_causal", None)
    if is_causal is None:
        is_causal = causal_lm_class(backbone) is not None
    return is_causal


def last_token_states(hidden_states, padding_mask):
    """The hidden state of each row's last real token, `(batch, hidden)`
    (HF's choice for decoder heads, and where a decoder predicts the next
    token). Finds the last true position of `padding_mask`, so rows may be
    padded on either side."""
    mask = ops.cast(padding_mask, "int32")
    positions = ops.cumsum(ops.ones_like(mask), axis=1) - 1
    last = ops.max(mask * positions, axis=1)
    index = ops.reshape(last, (-1, 1, 1))
    return ops.take_along_axis(hidden_states, index, axis=1)[:, 0, :]


def _mean_over_real_tokens(sequence_output, padding_mask):
    """Mean of each row's non-padding hidden states."""
    mask = ops.cast(padding_mask, sequence_output.dtype)[:, :, None]
    total = ops.sum(sequence_output * mask, axis=1)
    return total / ops.maximum(ops.sum(mask, axis=1), 1.0)

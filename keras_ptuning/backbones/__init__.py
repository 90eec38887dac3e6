"""`PTuningBackbone`: a frozen keras-hub backbone split at its token embedding,
the prompt spliced in; the frozen prefix and cached decoding."""

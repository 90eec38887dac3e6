"""The task models: classifiers, causal LMs, masked LMs, next-token LMs, and
what they share (`PTuningTask`)."""

"""Length bucketing: batches padded only to their bucket's length."""

import math

import keras
import numpy as np


def default_bucket_lengths(sequence_length, num_buckets=4, multiple=8):
    """`num_buckets` evenly spaced lengths up to `sequence_length`.

    Each is rounded up to a multiple of `multiple` (and capped at
    `sequence_length`), e.g. `(16, 32, 48, 64)` for 64.
    """
    for name, value in (
        ("sequence_length", sequence_length),
        ("num_buckets", num_buckets),
        ("multiple", multiple),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{name}` must be a positive int. Received: {name}={value!r}"
            )
    lengths = set()
    for k in range(1, num_buckets + 1):
        length = math.ceil(sequence_length * k / num_buckets / multiple)
        lengths.add(min(length * multiple, sequence_length))
    return tuple(sorted(lengths))


class LengthBucketedDataset(keras.utils.PyDataset):
    """Batches of right-padded sequences, each cut to its bucket's length.

    Rows are grouped by their real length (the sum of `padding_mask`) into
    buckets from a small fixed set of lengths; every batch holds rows of one
    bucket and is cut to that bucket's length. A compiled train step (`jit`)
    therefore sees a few shapes, not one per batch, and short sentences no
    longer pay for the longest one's padding. Works on every backend (plain
    NumPy), with `fit`, `evaluate` and `predict`.

    Inputs must be right-padded, as keras-hub preprocessors make them. Every
    `(rows, sequence_length, ...)` entry of `x` is cut; other per-row entries
    (a `PromptTemplate`'s `mask_positions`) are kept whole. `y` and
    `sample_weight` are cut too when they are `(rows, sequence_length)`
    arrays (a `CausalLMPreprocessor`'s labels and weights), and kept whole
    otherwise (class labels).

    Each bucket's last batch may be smaller than `batch_size`, so a `jit`
    backend compiles at most two shapes per bucket. The first two batches
    always differ in length and in size where any batches do: Keras'
    TensorFlow adapter fixes the batch signature from those two.

    Args:
        x: dict of `(rows, ...)` arrays with a `(rows, sequence_length)`
            `"padding_mask"` entry, e.g. a keras-hub preprocessor's output.
        y: optional labels, `(rows, ...)`.
        sample_weight: optional weights, `(rows, ...)`.
        batch_size: int, rows per batch.
        bucket_lengths: increasing ints up to `sequence_length`. Defaults to
            `default_bucket_lengths(sequence_length)`. `sequence_length` is
            added when missing, so every row fits a bucket.
        shuffle: bool. Shuffle rows within buckets and the order of batches
            at the start and after every epoch (`on_epoch_end`). Use `False`
            for evaluation. Rows come out grouped by bucket either way; see
            `row_order()` to map `predict` outputs back.
        seed: optional int seed for the shuffling.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).

    Example:
    ```python
    sentences = ["a gripping, funny film", "a dull mess", "pure joy", "meh"]
    labels = np.array([1, 0, 1, 0])
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        "bert_tiny_en_uncased", sequence_length=64
    )
    x = keras.tree.map_structure(np.asarray, preprocessor(sentences))
    train = keras_ptuning.LengthBucketedDataset(x, labels, batch_size=32)
    model = keras_ptuning.PTuningTextClassifier(
        keras_hub.models.BertBackbone.from_preset("bert_tiny_en_uncased"),
        num_classes=2,
        prompt_config=keras_ptuning.PromptEncoderConfig(20),
    )
    model.fit(train, epochs=3)  # a P-tuning task model takes it as is
    ```
    """

    def __init__(
        self,
        x,
        y=None,
        sample_weight=None,
        batch_size=32,
        bucket_lengths=None,
        shuffle=True,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(x, dict) or "padding_mask" not in x:
            raise ValueError(
                "`x` must be a dict of arrays with a 'padding_mask' entry. "
                f"Received: x={type(x).__name__}"
                + (f" with keys {sorted(x)}" if isinstance(x, dict) else "")
            )
        x = {name: np.asarray(value) for name, value in x.items()}
        padding_mask = x["padding_mask"]
        if padding_mask.ndim != 2:
            raise ValueError(
                "`x['padding_mask']` must be 2-D (rows, sequence_length). "
                f"Received shape {padding_mask.shape}"
            )
        rows, sequence_length = padding_mask.shape
        for name, value in x.items():
            if value.ndim < 1 or value.shape[0] != rows:
                raise ValueError(
                    f"Every entry of `x` must have {rows} rows like "
                    f"'padding_mask'. Received: x[{name!r}].shape="
                    f"{value.shape}"
                )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                "`batch_size` must be a positive int. "
                f"Received: batch_size={batch_size!r}"
            )
        if bucket_lengths is None:
            bucket_lengths = default_bucket_lengths(sequence_length)
        bucket_lengths = tuple(bucket_lengths)
        if (
            not bucket_lengths
            or any(not isinstance(b, int) for b in bucket_lengths)
            or list(bucket_lengths) != sorted(set(bucket_lengths))
            or bucket_lengths[0] < 1
            or bucket_lengths[-1] > sequence_length
        ):
            raise ValueError(
                "`bucket_lengths` must be strictly increasing ints from 1 "
                f"to the sequence length {sequence_length}. "
                f"Received: bucket_lengths={bucket_lengths!r}"
            )
        if bucket_lengths[-1] != sequence_length:
            bucket_lengths += (sequence_length,)
        lengths = np.asarray(padding_mask, bool).sum(axis=1)
        in_order = np.arange(sequence_length)[None] < lengths[:, None]
        if not np.array_equal(np.asarray(padding_mask, bool), in_order):
            raise ValueError(
                "`x['padding_mask']` must be right-padded: ones, then zeros, "
                "in every row."
            )

        self.x = x
        self.y = None if y is None else keras.tree.map_structure(np.asarray, y)
        self.sample_weight = (
            None if sample_weight is None else np.asarray(sample_weight)
        )
        for name, value in (
            ("y", self.y),
            ("sample_weight", self.sample_weight),
        ):
            for leaf in [] if value is None else keras.tree.flatten(value):
                if len(leaf) != rows:
                    raise ValueError(
                        f"`{name}` must have {rows} rows like `x`. "
                        f"Received {len(leaf)}"
                    )
        self.batch_size = batch_size
        self.bucket_lengths = bucket_lengths
        self.sequence_length = sequence_length
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        bucket_of_row = np.searchsorted(bucket_lengths, lengths)
        self.bucket_rows = [
            np.flatnonzero(bucket_of_row == b)
            for b in range(len(bucket_lengths))
        ]
        self._batches = []
        self._make_batches()

    def _make_batches(self):
        batches = []
        for bucket, rows in enumerate(self.bucket_rows):
            if self.shuffle:
                rows = self._rng.permutation(rows)
            for start in range(0, len(rows), self.batch_size):
                batches.append((bucket, rows[start : start + self.batch_size]))
        if self.shuffle:
            batches = [batches[i] for i in self._rng.permutation(len(batches))]
        self._batches = _varying_shapes_first(batches)

    def __len__(self):
        return len(self._batches)

    def __getitem__(self, index):
        # The batch list being served: `row_order` reads it after a pass,
        # once `on_epoch_end` has already drawn the next epoch's.
        self._served_batches = self._batches
        bucket, rows = self._batches[index]
        length = self.bucket_lengths[bucket]

        def take(value):
            value = value[rows]
            if value.ndim >= 2 and value.shape[1] == self.sequence_length:
                value = value[:, :length]
            return value

        x = {name: take(value) for name, value in self.x.items()}
        if self.y is None:
            return x
        y = keras.tree.map_structure(take, self.y)
        if self.sample_weight is None:
            return x, y
        return x, y, take(self.sample_weight)

    def row_order(self):
        """The original row index of each output row, batch after batch.

        `predict` returns rows grouped by bucket; `outputs[argsort(
        row_order())]` puts them back in input order. It describes the last
        pass over the data (the `predict` just run, even with `shuffle=True`,
        where Keras' `on_epoch_end` has drawn a new order since), or the
        next one before any.
        """
        batches = getattr(self, "_served_batches", None) or self._batches
        return np.concatenate([rows for _, rows in batches])

    def on_epoch_end(self):
        if self.shuffle:
            self._make_batches()

    def padded_fraction(self):
        """The share of batch positions that are padding (0 to 1)."""
        real = sum(
            int(np.asarray(self.x["padding_mask"][rows], bool).sum())
            for _, rows in self._batches
        )
        total = sum(
            len(rows) * self.bucket_lengths[bucket]
            for bucket, rows in self._batches
        )
        return 1.0 - real / max(total, 1)


def _varying_shapes_first(batches):
    """Moves two batches to the front that differ in length and size.

    Keras' TensorFlow data adapter fixes a `PyDataset`'s signature from its
    first two batches: a dimension is left `None` only where those two
    differ. Where the batches vary at all (bucket length, short last
    batches), the first two show it; the order is otherwise kept.
    """
    if len(batches) < 2:
        return batches
    # One batch per (bucket, size) is enough to choose from.
    candidates = {}
    for index, (bucket, rows) in enumerate(batches):
        candidates.setdefault((bucket, len(rows)), index)
    buckets = {bucket for bucket, _ in candidates}
    sizes = {size for _, size in candidates}

    def score(pair):
        (bucket_a, size_a), (bucket_b, size_b) = pair
        return (len(buckets) > 1 and bucket_a != bucket_b) + (
            len(sizes) > 1 and size_a != size_b
        )

    keys = list(candidates)
    best = max(
        ((a, b) for a in keys for b in keys if a != b),
        key=score,
        default=None,
    )
    if best is None:
        return batches
    first = [candidates[best[0]], candidates[best[1]]]
    rest = [batch for i, batch in enumerate(batches) if i not in first]
    return [batches[first[0]], batches[first[1]]] + rest

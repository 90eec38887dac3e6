import numpy as np
import pytest
from keras import ops

from keras_ptuning import LengthBucketedDataset
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningTextClassifier
from keras_ptuning.preprocessing.length_bucketing import default_bucket_lengths
from tests.backbones import FAMILIES


def _features(lengths, sequence_length=16, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    padding_mask = np.arange(sequence_length)[None] < lengths[:, None]
    token_ids = rng.integers(1, 60, (len(lengths), sequence_length))
    return {
        "token_ids": np.where(padding_mask, token_ids, 0).astype("int32"),
        "padding_mask": padding_mask,
        "segment_ids": np.zeros((len(lengths), sequence_length), "int32"),
    }


def test_default_bucket_lengths():
    assert default_bucket_lengths(64) == (16, 32, 48, 64)
    assert default_bucket_lengths(50) == (16, 32, 40, 50)
    assert default_bucket_lengths(8, num_buckets=4) == (8,)
    with pytest.raises(ValueError, match="num_buckets=0"):
        default_bucket_lengths(64, num_buckets=0)


def test_batches_are_cut_to_their_bucket_and_cover_every_row_once():
    lengths = [1, 3, 4, 5, 8, 9, 12, 16, 2, 7, 15, 6, 11]
    x = _features(lengths)
    y = np.arange(len(lengths))
    weights = np.linspace(0.5, 1.5, len(lengths))
    dataset = LengthBucketedDataset(
        x, y, weights, batch_size=2, bucket_lengths=(4, 8, 12), seed=3
    )
    assert dataset.bucket_lengths == (4, 8, 12, 16)
    seen = []
    for index in range(len(dataset)):
        batch_x, batch_y, batch_w = dataset[index]
        rows = batch_y
        width = batch_x["token_ids"].shape[1]
        assert width in (4, 8, 12, 16)
        for name in x:
            assert batch_x[name].shape == (len(rows), width)
            np.testing.assert_array_equal(batch_x[name], x[name][rows, :width])
        np.testing.assert_array_equal(batch_w, weights[rows])
        row_lengths = np.asarray(lengths)[rows]
        # The smallest bucket that holds every row of the batch.
        assert row_lengths.max() <= width
        smaller = [b for b in dataset.bucket_lengths if b < width]
        assert not smaller or row_lengths.min() > max(smaller)
        assert len(rows) <= 2
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(lengths)))
    np.testing.assert_array_equal(dataset.row_order(), seen)
    assert 0.0 <= dataset.padded_fraction() < 0.5


def test_shuffle_is_seeded_and_changes_each_epoch():
    x = _features(np.arange(1, 17).repeat(4))
    y = np.arange(64)

    def order(dataset):
        return [tuple(dataset[i][1]) for i in range(len(dataset))]

    first = LengthBucketedDataset(x, y, batch_size=4, seed=7)
    again = LengthBucketedDataset(x, y, batch_size=4, seed=7)
    assert order(first) == order(again)
    epoch_one = order(first)
    first.on_epoch_end()
    assert order(first) != epoch_one
    fixed = LengthBucketedDataset(x, y, batch_size=4, shuffle=False)
    # Buckets (8, 16): rows 0-31 are up to 8 long. Without shuffling each
    # batch holds consecutive rows of one bucket.
    assert fixed.bucket_lengths == (8, 16)
    batches = order(fixed)
    assert sorted(sum(batches, ())) == list(range(64))
    assert sorted(batches) == [tuple(range(i, i + 4)) for i in range(0, 64, 4)]


def test_first_two_batches_show_every_varying_dimension():
    # Keras' TF adapter fixes the signature from the first two batches.
    x = _features([2] * 8 + [3] * 3 + [12] * 8)
    for seed in range(5):
        dataset = LengthBucketedDataset(
            x, np.zeros(19), batch_size=4, bucket_lengths=(4, 16), seed=seed
        )
        (first, _), (second, _) = dataset[0], dataset[1]
        assert first["token_ids"].shape[0] != second["token_ids"].shape[0]
        assert first["token_ids"].shape[1] != second["token_ids"].shape[1]


def test_sequence_labels_are_cut_class_labels_kept():
    x = _features([3, 3, 10, 10])
    labels = np.tile(np.arange(16), (4, 1))
    dataset = LengthBucketedDataset(
        x, labels, batch_size=4, bucket_lengths=(4, 16), shuffle=False
    )
    assert [dataset[i][1].shape for i in range(2)] == [(2, 4), (2, 16)]
    no_y = LengthBucketedDataset(x, batch_size=4, shuffle=False)
    assert sorted(no_y[0]) == sorted(x)


def test_per_row_entries_such_as_mask_positions_are_kept_whole():
    x = _features([3, 3, 10, 10])
    x["mask_positions"] = np.array([[1], [2], [8], [9]])
    dataset = LengthBucketedDataset(
        x, batch_size=4, bucket_lengths=(4, 16), shuffle=False
    )
    first, second = dataset[0], dataset[1]
    assert first["token_ids"].shape == (2, 4)
    np.testing.assert_array_equal(first["mask_positions"], [[1], [2]])
    np.testing.assert_array_equal(second["mask_positions"], [[8], [9]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"x": {"token_ids": np.zeros((2, 4))}}, "'padding_mask' entry"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"bucket_lengths": (8, 4)}, r"bucket_lengths=\(8, 4\)"),
        ({"bucket_lengths": (4, 32)}, "sequence length 16"),
        ({"y": np.zeros(3)}, "`y` must have 4 rows"),
        (
            {
                "x": {
                    "token_ids": np.zeros((4, 16)),
                    "padding_mask": np.tile(np.arange(16) % 2, (4, 1)),
                }
            },
            "right-padded",
        ),
        (
            {
                "x": {
                    "token_ids": np.zeros((3, 16)),
                    "padding_mask": np.ones((4, 16)),
                }
            },
            r"4 rows .* x\['token_ids'\].shape=\(3, 16\)",
        ),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    arguments = {"x": _features([1, 2, 3, 4])}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        LengthBucketedDataset(**arguments)


def test_fit_and_predict_on_buckets_match_full_length_inputs():
    model = PTuningTextClassifier(
        FAMILIES["bert"](), num_classes=2, prompt_config=PromptEncoderConfig(2)
    )
    x = _features([2, 3, 9, 12, 16, 5, 7, 4], sequence_length=16)
    y = np.arange(8) % 2
    train = LengthBucketedDataset(x, y, batch_size=3, seed=0)
    history = model.fit(train, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2

    evaluation = LengthBucketedDataset(x, batch_size=3, shuffle=False)
    bucketed = model.predict(evaluation, verbose=0)
    bucketed = bucketed[np.argsort(evaluation.row_order())]
    full = ops.convert_to_numpy(model(x, training=False))
    # Cutting trailing padding does not change a right-padded row's logits.
    np.testing.assert_allclose(bucketed, full, atol=1e-5)


def test_row_order_maps_shuffled_predictions_back_to_their_rows():
    """Keras calls `on_epoch_end` at the end of `predict`, which draws the
    next shuffle: `row_order()` must still describe the `predict` run."""
    import keras

    lengths = np.array([3, 14, 5, 16, 2, 9, 7, 12, 4, 10, 6, 15])
    x = _features(lengths)
    dataset = LengthBucketedDataset(x, batch_size=3, shuffle=True, seed=1)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((None,), dtype="bool", name="padding_mask")
    segment_ids = keras.Input((None,), dtype="int32", name="segment_ids")
    # Each row's output is its own token-id sum: it names the row.
    total = keras.layers.Lambda(
        lambda ids: ops.sum(ops.cast(ids, "float32"), axis=1)
    )(token_ids)
    model = keras.Model(
        {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "segment_ids": segment_ids,
        },
        total,
    )
    for _ in range(2):
        outputs = model.predict(dataset, verbose=0)
        restored = outputs[np.argsort(dataset.row_order())]
        np.testing.assert_array_equal(restored, x["token_ids"].sum(1))

"""`Verbalizer`: class scores from a masked LM's logits at the mask."""

import numbers
import warnings

import keras
import numpy as np
from keras import ops

from keras_ptuning.preprocessing.vocabulary import single_token_id

REDUCTIONS = ("mean", "max")
# The id table is int32.
MAX_WORD_ID = 2**31


def label_word_ids(verbalizer, tokenizer=None):
    """Resolves a verbalizer to class names and label-word token ids.

    Args:
        verbalizer: a dict of class name to a list of label words, or a list
            (class index order) of such lists. A word is a string, tokenized
            with `tokenizer` to exactly one token, or an int token id.
        tokenizer: a keras-hub tokenizer; needed for string words.

    Returns:
        `(class_names, word_ids)`: a list of names (`None` for a list
        verbalizer) and a list of lists of ints, one per class.
    """
    if isinstance(verbalizer, dict):
        names = list(verbalizer)
        words = [verbalizer[name] for name in names]
    elif isinstance(verbalizer, (list, tuple)):
        names = None
        words = list(verbalizer)
    else:
        raise TypeError(
            "`verbalizer` must be a dict of class name to label words, or a "
            f"list of label-word lists. Received: verbalizer={verbalizer!r}"
        )
    if len(words) < 2:
        raise ValueError(
            "`verbalizer` must name at least 2 classes. Received: "
            f"verbalizer={verbalizer!r}"
        )
    ids = []
    for index, class_words in enumerate(words):
        name = names[index] if names else index
        if isinstance(class_words, np.ndarray):
            class_words = class_words.tolist()
        if isinstance(class_words, (str, numbers.Integral)):
            class_words = [class_words]
        if not isinstance(class_words, (list, tuple)):
            raise TypeError(
                f"`verbalizer` class {name!r} must be a label word or a "
                f"list of label words. Received: {class_words!r} in "
                f"verbalizer={verbalizer!r}"
            )
        if not class_words:
            raise ValueError(
                f"`verbalizer` class {name!r} has no label words. Received: "
                f"verbalizer={verbalizer!r}"
            )
        ids.append([_word_id(word, name, tokenizer) for word in class_words])
    owners = {}
    for index, class_ids in enumerate(ids):
        for word_id in class_ids:
            owners.setdefault(word_id, set()).add(index)
    shared = {i: sorted(c) for i, c in owners.items() if len(c) > 1}
    if shared:
        word_id, classes = next(iter(shared.items()))
        classes = [names[c] if names else c for c in classes]
        raise ValueError(
            f"A label word cannot stand for two classes: token id {word_id} "
            f"is a label word of classes {classes}. Received: "
            f"verbalizer={verbalizer!r}"
        )
    return names, ids


def _word_id(word, class_name, tokenizer):
    if isinstance(word, numbers.Integral) and not isinstance(word, bool):
        return int(word)
    if not isinstance(word, str):
        raise TypeError(
            f"Label words must be strings or token ids. Received: {word!r} "
            f"for class {class_name!r}"
        )
    if tokenizer is None:
        raise ValueError(
            f"The label word {word!r} (class {class_name!r}) is a string, "
            "but there is no tokenizer: give the model a preprocessor or use "
            "token ids."
        )
    # In a sentence the word follows a space: "Ġgood", not "good".
    return single_token_id(
        word, tokenizer, "label word", f" (class {class_name!r})"
    )


@keras.saving.register_keras_serializable(package="keras_ptuning")
class Verbalizer(keras.layers.Layer):
    """Maps masked-LM vocabulary logits to class scores.

    Class `c` scores the mean (or max) of the logits of its label words, as
    in the P-tuning paper's cloze setting ("It was [MASK]." with `good` /
    `great` for positive). The layer has no weights.

    Args:
        word_ids: a list, one per class, of lists of vocabulary ids.
        score_reduction: `"mean"` (default) or `"max"` over a class's
            words (the name the tasks use too).
        reduction: deprecated name of `score_reduction`, read for this
            release with a `DeprecationWarning`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    verbalizer = keras_ptuning.Verbalizer(
        [[12, 40], [7]], score_reduction="max"
    )
    verbalizer(np.random.rand(2, 64))  # (2, 2): max(l[12], l[40]), l[7]
    ```
    """

    def __init__(
        self, word_ids, score_reduction="mean", reduction=None, **kwargs
    ):
        super().__init__(**kwargs)
        name = "score_reduction"
        if reduction is not None:
            if score_reduction != "mean":
                raise ValueError(
                    "Pass `score_reduction` only (`reduction` is its old "
                    f"name). Received: score_reduction={score_reduction!r}, "
                    f"reduction={reduction!r}"
                )
            name, score_reduction = "reduction", reduction
        if (
            not isinstance(score_reduction, str)
            or score_reduction not in REDUCTIONS
        ):
            raise ValueError(
                f"`{name}` must be one of {REDUCTIONS}. Received: "
                f"{name}={score_reduction!r}"
            )
        if reduction is not None:
            warnings.warn(
                "`Verbalizer(reduction=)` is `score_reduction=` now, the "
                "name the tasks use; `reduction` is read for this release "
                "only.",
                DeprecationWarning,
                stacklevel=2,
            )
        if isinstance(word_ids, np.ndarray):
            word_ids = word_ids.tolist()
        if not isinstance(word_ids, (list, tuple)) or not all(
            isinstance(w, (list, tuple, np.ndarray)) for w in word_ids
        ):
            raise TypeError(
                "`word_ids` must be a list, one per class, of lists of token "
                f"ids. Received: word_ids={word_ids!r}"
            )
        _, word_ids = label_word_ids([list(w) for w in word_ids])
        for class_ids in word_ids:
            for word_id in class_ids:
                if not 0 <= word_id < MAX_WORD_ID:
                    raise ValueError(
                        "`word_ids` must be token ids in [0, 2**31). "
                        f"Received: word_ids={word_ids}"
                    )
        self.word_ids = word_ids
        self.score_reduction = score_reduction
        width = max(len(ids) for ids in word_ids)
        padded = np.zeros((len(word_ids), width), "int32")
        present = np.zeros((len(word_ids), width), bool)
        for row, ids in enumerate(word_ids):
            padded[row, : len(ids)] = ids
            present[row, : len(ids)] = True
        self._padded_ids = padded
        self._present = present
        self.built = True

    @property
    def num_classes(self):
        return len(self.word_ids)

    @property
    def reduction(self):
        """Deprecated name of `score_reduction`."""
        return self.score_reduction

    def check_vocabulary_size(self, vocabulary_size):
        """Raises if a label word id is outside the vocabulary."""
        largest = int(self._padded_ids.max())
        if largest >= vocabulary_size:
            raise ValueError(
                f"Label word id {largest} is outside the vocabulary of "
                f"{vocabulary_size} tokens."
            )

    def call(self, logits):
        num_classes, width = self._padded_ids.shape
        flat = ops.take(logits, self._padded_ids.reshape(-1), axis=-1)
        scores = ops.reshape(flat, (-1, num_classes, width))
        present = ops.convert_to_tensor(self._present)
        if self.score_reduction == "max":
            # Absent words repeat the class's first word: no effect on max.
            scores = ops.where(present, scores, scores[..., :1])
            return ops.max(scores, axis=-1)
        present = ops.cast(present, scores.dtype)
        counts = ops.sum(present, axis=-1)
        return ops.sum(scores * present, axis=-1) / counts

    def compute_output_shape(self, logits_shape):
        return (logits_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"word_ids": self.word_ids, "score_reduction": self.score_reduction}
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Written before `score_reduction` had this name.
        if "reduction" in config:
            config["score_reduction"] = config.pop("reduction")
        return cls(**config)

"""What a keras-hub tokenizer does with words: unknown text, spaces, and
the most likely tokens of a prediction."""

import keras_hub
import numpy as np
from keras import ops


def unknown_token_id(tokenizer):
    """The id a tokenizer gives unknown text, or `None` if it has none.

    WordPiece tokenizers map unknown words to their `oov_token`,
    SentencePiece ones to their model's unknown piece; byte-level BPE
    tokenizers spell every text in bytes and have none.
    """
    oov_token = getattr(tokenizer, "oov_token", None)
    if oov_token is not None:
        return int(tokenizer.token_to_id(oov_token))
    unk_id = getattr(tokenizer, "_unk_token_id", None)
    if unk_id is not None and unk_id >= 0:
        return int(unk_id)
    return None


def check_known(ids, text, what, tokenizer):
    """Raises if `text` tokenized to `ids` holds the unknown token: it would
    mean "some word this tokenizer does not know", not `text`."""
    unknown = unknown_token_id(tokenizer)
    if unknown is not None and unknown in [int(i) for i in ids]:
        name = tokenizer.id_to_token(unknown)
        raise ValueError(
            f"The {what} {text!r} tokenizes to the tokenizer's unknown token "
            f"{name!r} (id {unknown}): the model would read an unknown word, "
            "not this text. Use words of the tokenizer's vocabulary."
        )


def _ids(tokenizer, text):
    return [int(i) for i in np.asarray(tokenizer(text)).reshape(-1)]


def spaces_word_starts(tokenizer):
    """Whether words in running text carry the space before them.

    True for byte-level BPE (`"Ġgood"`) and for SentencePiece models without
    a dummy prefix (Gemma's `"▁good"`): there a word after a space must be
    tokenized with that space to get the ids it has inside a sentence. False
    where spaces only separate words (WordPiece, SentencePiece with a dummy
    prefix): a leading space changes nothing. Decided by probing the
    tokenizer with a short phrase.
    """
    if isinstance(tokenizer, keras_hub.tokenizers.BytePairTokenizer):
        return True
    alone, spaced = _ids(tokenizer, "the"), _ids(tokenizer, " the")
    return alone != spaced and _ids(tokenizer, "the the") == alone + spaced


def word_token_ids(word, tokenizer):
    """The token ids of `word` where it follows a space in running text.

    The form a label word or an object takes after a template: `" Paris"`
    for tokenizers that carry spaces (see `spaces_word_starts`), `"Paris"`
    otherwise. Returns a list of ints (one or more).
    """
    if spaces_word_starts(tokenizer):
        word = " " + word
    return _ids(tokenizer, word)


def single_token_id(word, tokenizer, noun, context=""):
    """The one token id of `word` after a space in running text (see
    `word_token_ids`); raises if it is more than one token or unknown.
    `noun` and `context` name the word in errors: `"label word"`,
    `" (class 'neg')"`."""
    tokens = word_token_ids(word, tokenizer)
    if len(tokens) != 1:
        pieces = [tokenizer.id_to_token(t) for t in tokens]
        raise ValueError(
            f"Each {noun} must be one token of the vocabulary. The {noun} "
            f"{word!r}{context} tokenizes to {len(tokens)} tokens: {pieces}. "
            "Choose another word."
        )
    check_known(tokens, word, noun + context, tokenizer)
    return tokens[0]


def check_top_k(top_k, vocabulary_size):
    """Raises unless `top_k` is an int in `[1, vocabulary_size]`."""
    if (
        isinstance(top_k, bool)
        or not isinstance(top_k, int)
        or not 1 <= top_k <= vocabulary_size
    ):
        raise ValueError(
            f"`top_k` must be an int in [1, {vocabulary_size}]. "
            f"Received: top_k={top_k!r}"
        )


def top_k_tokens(probabilities, top_k, tokenizer=None):
    """The `top_k` most likely tokens of each row of `probabilities`.

    Returns a dict of numpy arrays `(..., top_k)`: `token_ids`,
    `probabilities` (descending) and, with a tokenizer, `tokens` (`None`
    for ids past the tokenizer's vocabulary: embedding tables can be padded
    beyond it).
    """
    values, indices = ops.top_k(probabilities, top_k)
    result = {
        "token_ids": np.asarray(ops.convert_to_numpy(indices)),
        "probabilities": np.asarray(ops.convert_to_numpy(values)),
    }
    if tokenizer is not None:
        known = tokenizer.vocabulary_size()
        result["tokens"] = np.vectorize(
            lambda i: tokenizer.id_to_token(int(i)) if i < known else None,
            otypes=[object],
        )(result["token_ids"])
    return result

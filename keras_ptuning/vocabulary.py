"""What a keras-hub tokenizer does with text it does not know."""


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

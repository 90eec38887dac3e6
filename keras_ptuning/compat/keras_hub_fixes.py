"""Config entries keras-hub 0.32 leaves out of two `get_config`s, put back.

Applied once when `keras_ptuning` is imported. Without them, a keras-hub
Llama model whose settings are not Llama 3's defaults does not survive a
preset or `.keras` save and load, ours or keras-hub's:

- `LlamaBackbone.get_config` (and so `Llama3Backbone`'s) has no
  `tie_word_embeddings`: a tied model (SmolLM2) is rebuilt untied and its
  weights fail to load (`expected 2 variables ... reverse_embeddings`).
- `Llama3Tokenizer.get_config` has no `bos_token`, `eos_token` or
  `misc_special_tokens`: a tokenizer with other special tokens (SmolLM2's
  `<|im_start|>`, `<|im_end|>`) is rebuilt with Llama 3's and fails
  (`Cannot find special token '<|eot_id|>'`).

Each fix only adds a key keras-hub does not write itself, so it turns into
a no-op once keras-hub saves them.

What plain keras-hub 0.32 (without `import keras_ptuning`) can read back:
every file of a tokenizer with Llama 3's own special tokens (the entry
`misc_special_tokens` is then not written, and `bos_token`/`eos_token` are
constructor arguments it knows), and every `LlamaBackbone`. A tokenizer
with other special tokens (SmolLM2's, so `keras_ptuning.presets`'
converted SmolLM2 folder) stores them as a JSON list, which keras-hub's
constructor cannot take (it needs a set): loading such a file needs
`import keras_ptuning` first. Without the entry keras-hub could not load
it either (it would look for Llama 3's special tokens).
"""

import functools

import keras_hub

from keras_ptuning.compat.keras_internals import special_token_names

_FIXED = "_keras_ptuning_fixed"


def _add_missing(get_config, entries):
    @functools.wraps(get_config)
    def wrapped(self):
        config = get_config(self)
        for key, value in entries(self).items():
            config.setdefault(key, value)
        return config

    return wrapped


def _llama_backbone_entries(backbone):
    return {"tie_word_embeddings": backbone.tie_word_embeddings}


# keras-hub's `Llama3Tokenizer` default, which its constructor needs as a
# set: JSON cannot hold one, so the entry is written only when it differs.
DEFAULT_MISC_SPECIAL_TOKENS = {"<|start_header_id|>", "<|end_header_id|>"}


def _llama3_tokenizer_entries(tokenizer):
    entries = {
        "bos_token": tokenizer.start_token,
        "eos_token": tokenizer.end_token,
    }
    misc = {
        getattr(tokenizer, name)
        for name in special_token_names(tokenizer)
        if name.startswith("special_token_")
    }
    if misc != DEFAULT_MISC_SPECIAL_TOKENS - set(entries.values()):
        entries["misc_special_tokens"] = sorted(misc)
    return entries


def _llama3_tokenizer_init(init):
    # Keras reads the constructor's argument names (no `*args` allowed).
    @functools.wraps(init)
    def wrapped(
        self,
        vocabulary=None,
        merges=None,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        misc_special_tokens=("<|start_header_id|>", "<|end_header_id|>"),
        **kwargs,
    ):
        # JSON gives a list; keras-hub's constructor needs a set (and
        # removes entries from the one it is given).
        init(
            self,
            vocabulary=vocabulary,
            merges=merges,
            bos_token=bos_token,
            eos_token=eos_token,
            misc_special_tokens=set(misc_special_tokens),
            **kwargs,
        )

    return wrapped


def apply():
    """Adds the missing entries; safe to call more than once."""
    backbone = keras_hub.models.LlamaBackbone
    if not getattr(backbone.get_config, _FIXED, False):
        backbone.get_config = _add_missing(
            backbone.get_config, _llama_backbone_entries
        )
        setattr(backbone.get_config, _FIXED, True)
    tokenizer = keras_hub.models.Llama3Tokenizer
    if not getattr(tokenizer.get_config, _FIXED, False):
        tokenizer.__init__ = _llama3_tokenizer_init(tokenizer.__init__)
        tokenizer.get_config = _add_missing(
            tokenizer.get_config, _llama3_tokenizer_entries
        )
        setattr(tokenizer.get_config, _FIXED, True)

"""Tiny randomly initialised keras-hub backbones, one per supported family.

`FAMILIES[name]()` returns the family's backbone, built once per session
and shared: P-tuning never changes a backbone (the tests check it), so
sharing costs nothing and saves building ~200 per backend. Under another
dtype policy than float32 a fresh one is built.
"""

import functools

import keras
import keras_hub

VOCABULARY_SIZE = 64
HIDDEN_DIM = 16
MAX_SEQUENCE_LENGTH = 32

_ENCODER = dict(
    vocabulary_size=VOCABULARY_SIZE,
    num_layers=2,
    num_heads=2,
    hidden_dim=HIDDEN_DIM,
    intermediate_dim=32,
    max_sequence_length=MAX_SEQUENCE_LENGTH,
    dropout=0.0,
)
_ROPE = dict(
    vocabulary_size=VOCABULARY_SIZE,
    num_layers=2,
    num_query_heads=2,
    num_key_value_heads=1,
    hidden_dim=HIDDEN_DIM,
    intermediate_dim=32,
)

_BUILDERS = {
    "bert": lambda: keras_hub.models.BertBackbone(**_ENCODER),
    "distil_bert": lambda: keras_hub.models.DistilBertBackbone(**_ENCODER),
    "roberta": lambda: keras_hub.models.RobertaBackbone(**_ENCODER),
    "gpt2": lambda: keras_hub.models.GPT2Backbone(**_ENCODER),
    "gemma": lambda: keras_hub.models.GemmaBackbone(**_ROPE, head_dim=8),
    "gemma3": lambda: keras_hub.models.Gemma3Backbone(
        **_ROPE, head_dim=8, image_size=16, sliding_window_size=8
    ),
    "llama": lambda: keras_hub.models.LlamaBackbone(**_ROPE),
    "llama3": lambda: keras_hub.models.Llama3Backbone(**_ROPE),
    "mistral": lambda: keras_hub.models.MistralBackbone(
        **_ROPE, sliding_window=8
    ),
    "qwen": lambda: keras_hub.models.QwenBackbone(**_ROPE),
}

CAUSAL = {"gpt2", "gemma", "gemma3", "llama", "llama3", "mistral", "qwen"}


@functools.cache
def _shared(name):
    return _BUILDERS[name]()


def _build(name):
    if keras.config.dtype_policy().name != "float32":
        return _BUILDERS[name]()
    return _shared(name)


FAMILIES = {name: functools.partial(_build, name) for name in _BUILDERS}


def fresh_backbone(name):
    """A new backbone of family `name`, never shared: for models built
    under a distribution scope, which must create their own variables."""
    return _BUILDERS[name]()

"""Every private Keras and keras-hub API keras_ptuning relies on, in one place.

Checked against Keras 3.15 and keras-hub 0.32 (`KERAS_CHECKED`,
`KERAS_HUB_CHECKED`); the dependency bounds in `pyproject.toml` stop at the
next minor version of each. Nothing here falls back silently: a name that
has moved raises when it is used, and `tests/keras_internals_test.py`
checks every entry (that each still exists and still does what is relied
on, e.g. that the keys of Keras' object-sharing scope are the ones cleared
here), so a new release that breaks one fails a test instead of turning a
workaround into a no-op.

What is used, and why:

- `in_symbolic_scope` (`keras.src.backend.common.symbolic_scope`): whether
  PyTorch's `compute_output_spec` is running a model on stand-in values, so
  input checks skip them.
- Keras' object-sharing scope (`keras.src.backend.common.global_state`,
  `SHARED_OBJECT_KEYS`): cleared while a `Bidirectional` LSTM is built
  during `load_model` (see `outside_object_sharing`).
- `Functional._nodes_by_depth` and `Layer._flatten_layers()`: the
  backbone's graph, where it is split at the token embedding.
- `Layer._tracker`: tracking sublayers added after build (multi-task
  tables), as Keras' own `enable_lora` does.
- `Model._compile_metrics._user_metrics`: whether `compile` was given
  unweighted metrics (a causal LM's step projects only the weighted
  positions otherwise, `models.scored_positions`).
- `Tokenizer._special_token_attrs`: a Llama 3 tokenizer's special tokens
  (`keras_hub_fixes`).
- `Backbone._lora_rank` / `_lora_enabled_layers`: whether keras-hub LoRA is
  enabled, and its rank.
- `keras_hub.src.utils.preset_utils`: a preset's loader, and the task
  class its `task.json` names (`from_preset` of p-tuned presets).
- `keras.src.saving.saving_lib.save_weights_only` / `load_weights_only`:
  one layer's weights in a `.weights.h5` file (a prompt-only preset's
  `model.weights.h5` holds the prompt layer's alone).
- `keras.src.models.functional.Functional`: building any functional
  keras-hub task (`CausalLM.from_preset`) makes Keras swap `Model` for
  `Functional` in the bases of keras-hub's shared `PipelineModel`
  (`inject_functional_model_class`), so a subclassed task inherits
  `Functional`'s graph methods, which fail without a graph
  (`subclassed_model`).
- `CausalLM._build_cache` and `call_with_cache` (each family's cached
  decoding) and `Sampler.__call__` / `run_loop` with the loop variables
  `(prompt, cache, index, mask)` (`cached_decoding`).
"""

import contextlib

import keras
import keras_hub
from keras.src.backend.common import global_state
from keras.src.backend.common.symbolic_scope import in_symbolic_scope
from keras.src.models.functional import Functional

KERAS_CHECKED = "3.15"
KERAS_HUB_CHECKED = "0.32"

__all__ = [
    "KERAS_CHECKED",
    "KERAS_HUB_CHECKED",
    "SHARED_OBJECT_KEYS",
    "SAMPLER_LOOP_CACHE",
    "build_cache",
    "functional_nodes",
    "in_symbolic_scope",
    "lora_config",
    "lora_rank",
    "outside_object_sharing",
    "preset_loader",
    "preset_config_class",
    "preset_task_class",
    "load_layer_weights",
    "run_sampler",
    "runs_plain_loop",
    "save_layer_weights",
    "special_token_names",
    "sublayers",
    "subclassed_model",
    "tracking_unlocked",
]

# The global-state keys of `keras.src.saving.serialization_lib`'s
# `ObjectSharingScope` (Keras 3.15).
SHARED_OBJECT_KEYS = (
    "shared_objects/id_to_obj_map",
    "shared_objects/id_to_config_map",
)

# Where the cache is in `Sampler.run_loop`'s loop variables
# `(prompt, cache, index, mask)` (keras-hub 0.32).
SAMPLER_LOOP_CACHE = 1


@contextlib.contextmanager
def outside_object_sharing():
    """Build layers as if no `.keras` file were being loaded.

    `keras.layers.Bidirectional` copies the layer it is given by
    serializing and deserializing it. Inside `keras.saving.load_model`'s
    object-sharing scope a copy is matched by the Python `id()` of the
    layer, and a new LSTM that reuses the address of one serialized earlier
    in the same load is "deserialized" as that earlier layer (Keras 3.15):
    an encoder with two LSTM layers, or a multi-task table with several
    LSTM encoders, could come back sharing one LSTM, or fail with
    "Forward layer and backward layer should have different
    `go_backwards`". The scope is cleared while the block runs and
    restored after it.
    """
    saved = [
        global_state.get_global_attribute(key) for key in SHARED_OBJECT_KEYS
    ]
    for key in SHARED_OBJECT_KEYS:
        global_state.set_global_attribute(key, None)
    try:
        yield
    finally:
        for key, value in zip(SHARED_OBJECT_KEYS, saved):
            global_state.set_global_attribute(key, value)


def subclassed_model(cls):
    """Class decorator: `cls` (a subclassed keras-hub task) resolves every
    name that `Functional` and its base `Function` define as if Keras had
    not put them among its bases, whether or not it has since."""
    graph_classes = Functional.__mro__[: Functional.__mro__.index(keras.Model)]
    names = {
        name
        for graph_class in graph_classes
        for name in vars(graph_class)
        if not name.startswith("__")
    }
    for name in sorted(names):
        for base in cls.__mro__:
            if base in graph_classes or name not in vars(base):
                continue
            if base is not cls:
                setattr(cls, name, vars(base)[name])
            break
    return cls


def functional_nodes(model):
    """Every node of a functional `model`'s graph."""
    return [node for nodes in model._nodes_by_depth.values() for node in nodes]


def sublayers(layer):
    """`layer` and every layer inside it, depth first."""
    return list(layer._flatten_layers())


@contextlib.contextmanager
def tracking_unlocked(layer):
    """Lets a built `layer` take new sublayers and variables (as Keras'
    own `enable_lora` does)."""
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def compiled_metrics(model):
    """The unweighted metrics `model.compile(metrics=...)` was given (not
    its `weighted_metrics`), or `None`."""
    compile_metrics = getattr(model, "_compile_metrics", None)
    if compile_metrics is None:
        return None
    return compile_metrics._user_metrics


def special_token_names(tokenizer):
    """The attribute names of a keras-hub tokenizer's special tokens."""
    return list(tokenizer._special_token_attrs)


def lora_rank(backbone):
    """The keras-hub LoRA rank enabled on `backbone`, or `None`."""
    if not getattr(backbone, "_lora_enabled_layers", None):
        return None
    return backbone._lora_rank


def lora_config(backbone):
    """`{"rank", "target_layer_names"}` of keras-hub LoRA on `backbone`, or
    `None`: what `backbone.enable_lora(rank, target_layer_names)` rebuilds
    (keras-hub's own `get_config` does not record LoRA)."""
    rank = lora_rank(backbone)
    if rank is None:
        return None
    # `enable_lora` records indices into the layers that have weights.
    with_weights = [
        layer
        for layer in backbone._flatten_layers(include_self=False)
        if layer.weights
    ]
    names = [with_weights[i].name for i in backbone._lora_enabled_layers]
    return {"rank": rank, "target_layer_names": list(dict.fromkeys(names))}


def build_cache(causal_lm_class, view, token_ids, *args, **kwargs):
    """Runs a family's `CausalLM._build_cache` with `view` as `self`."""
    return causal_lm_class._build_cache(view, token_ids, *args, **kwargs)


class _LoopResult:
    """A sampler whose `run_loop` keeps the final loop variables."""

    def __init__(self, sampler):
        self._sampler = sampler
        self.loop_vars = None

    def run_loop(self, cond, body, **kwargs):
        self.loop_vars = self._sampler.run_loop(cond, body, **kwargs)
        return self.loop_vars

    def __getattr__(self, name):
        return getattr(self._sampler, name)


def runs_plain_loop(sampler):
    """Whether `sampler` decodes with keras-hub's plain `Sampler` loop."""
    return type(sampler).__call__ is keras_hub.samplers.Sampler.__call__


def run_sampler(sampler, next, prompt, cache, **kwargs):
    """Runs a plain-loop `sampler` and returns `(prompt, final_cache)`.

    keras-hub's `Sampler.__call__` returns only the prompt; the final cache
    is read from the loop variables its `run_loop` returns.
    """
    loop = _LoopResult(sampler)
    prompt = keras_hub.samplers.Sampler.__call__(
        loop, next, prompt, cache=cache, **kwargs
    )
    return prompt, loop.loop_vars[SAMPLER_LOOP_CACHE]


def preset_loader(preset):
    """keras-hub's loader for `preset` (a name, handle or folder)."""
    from keras_hub.src.utils.preset_utils import get_preset_loader

    return get_preset_loader(preset)


def preset_task_class(preset):
    """The task class a preset's `task.json` names, or `None` without one."""
    from keras_hub.src.utils import preset_utils

    return preset_config_class(preset, preset_utils.TASK_CONFIG_FILE)


def preset_config_class(preset, config_file):
    """The class a preset's `config_file` (e.g. `preprocessor.json`) names,
    or `None` without one."""
    from keras_hub.src.utils import preset_utils

    if not preset_utils.check_file_exists(preset, config_file):
        return None
    config = preset_utils.load_json(preset, config_file)
    return preset_utils.check_config_class(config)


def save_layer_weights(layer, filepath, skip=()):
    """Writes `layer`'s weights (and its sublayers', but those in `skip`)
    to a `.weights.h5` file, as `Model.save_weights` does for a model
    (`keras.src.saving.saving_lib.save_weights_only`, which takes any
    layer)."""
    from keras.src.saving import saving_lib

    saving_lib.save_weights_only(layer, filepath, objects_to_skip=list(skip))


def load_layer_weights(layer, filepath, skip=()):
    """Reads what `save_layer_weights` wrote into `layer`
    (`saving_lib.load_weights_only`)."""
    from keras.src.saving import saving_lib

    saving_lib.load_weights_only(layer, filepath, objects_to_skip=list(skip))

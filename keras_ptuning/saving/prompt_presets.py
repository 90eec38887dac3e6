"""Prompt-only presets: what P-tuning trained, and the base preset's handle.

A p-tuned task's `save_to_preset(preset_dir, base_preset=handle)` writes a
keras-hub preset that holds the prompt (its encoder and table), the task's
head, every config (the template and verbalizer with the preprocessor),
and in place of the frozen backbone a *reference*: the handle of the base
preset it was loaded from, its class, its architecture entries and a sample
of its token embeddings. Kilobytes instead of the backbone; the files are
the ones `keras_hub.upload_preset` requires (`config.json`,
`model.weights.h5`), and the tokenizer's vocabulary is not copied: it is
read from the base preset too.

Loading (`from_preset` of the task, of keras-hub's `Task`/`Backbone`, or
`keras.saving`) resolves the reference: the base preset's backbone is
loaded with its weights and checked against the reference, and a base of
another class or architecture, or with other token embeddings (another
checkpoint), is refused with a `ValueError` naming both.
"""

import json
import os
import shutil
import tempfile

import h5py
import keras
import keras_hub
import numpy as np

from keras_ptuning.compat import keras_internals
from keras_ptuning.input_validation import directories_to_create
from keras_ptuning.input_validation import remove_created_directories
from keras_ptuning.saving.adapter import backbone_architecture
from keras_ptuning.saving.adapter import check_adapter_backbone

# The key that tells a reference from a serialized backbone.
BASE_PRESET = "base_preset"
# The `model.weights.h5` attribute that marks a prompt-only weights file.
PROMPT_WEIGHTS_MARK = "keras_ptuning_base_reference"
# How many token-embedding entries the reference keeps, evenly spaced.
FINGERPRINT_SIZE = 64


def is_base_reference(config):
    """Whether a `PTuningBackbone`'s `backbone` config is a reference."""
    return isinstance(config, dict) and BASE_PRESET in config


def embedding_fingerprint(backbone):
    """`FINGERPRINT_SIZE` evenly spaced entries of the token embedding
    matrix, float32: what tells two checkpoints of one architecture apart."""
    table = backbone.token_embedding.embeddings
    size = int(np.prod(table.shape))
    indices = np.linspace(0, size - 1, FINGERPRINT_SIZE).astype("int64")
    flat = keras.ops.reshape(table, (-1,))
    values = keras.ops.take(flat, keras.ops.convert_to_tensor(indices))
    return np.asarray(
        keras.ops.convert_to_numpy(keras.ops.cast(values, "float32"))
    ).tolist()


def base_reference(backbone, base_preset, include_encoder=False):
    """The reference a prompt-only preset holds for `backbone`."""
    if not isinstance(base_preset, str) or not base_preset:
        raise TypeError(
            "`base_preset` must be a non-empty str: the keras-hub preset "
            "name, `hf://`/`kaggle://` handle or directory the frozen "
            f"backbone was loaded from. Received: base_preset={base_preset!r}"
        )
    if os.path.isdir(base_preset):
        base_preset = os.path.abspath(base_preset)
    return {
        BASE_PRESET: base_preset,
        "backbone_class": type(backbone).__name__,
        "backbone_architecture": backbone_architecture(backbone),
        "fingerprint": embedding_fingerprint(backbone),
        # Written as the `PTuningBackbone`'s config, so only these keys
        # (and `base_preset`) may be read back from it.
        "include_encoder": include_encoder,
    }


def check_base(reference, backbone, source):
    """Refuses a `backbone` that is not the one `reference` was written
    for: another class, architecture or token embeddings."""
    check_adapter_backbone(reference, backbone, source)
    expected = np.asarray(reference["fingerprint"], "float32")
    found = np.asarray(embedding_fingerprint(backbone), "float32")
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    if found.shape != expected.shape or not np.allclose(
        found, expected, rtol=1e-2, atol=1e-3 * scale
    ):
        raise ValueError(
            f"{source} was trained on another checkpoint of this "
            f"{type(backbone).__name__}: the token embeddings of "
            f"{reference[BASE_PRESET]!r} differ from the ones it recorded "
            f"(largest difference "
            f"{float(np.max(np.abs(found - expected))):.3g}). A prompt only "
            "means something on the checkpoint it was trained on."
        )


def load_base_backbone(reference):
    """The base preset's backbone, with its weights, checked against
    `reference`."""
    base = reference[BASE_PRESET]
    backbone = keras_hub.models.Backbone.from_preset(base)
    check_base(reference, backbone, f"The prompt-only preset (base {base!r})")
    return backbone


def prompt_weights_reference(filepath):
    """The reference a prompt-only `model.weights.h5` holds, or `None` for
    any other file."""
    filepath = os.fspath(filepath)
    if not filepath.endswith(".weights.h5") or not os.path.isfile(filepath):
        return None
    with h5py.File(filepath, "r") as f:
        if PROMPT_WEIGHTS_MARK not in f.attrs:
            return None
        return json.loads(f.attrs[PROMPT_WEIGHTS_MARK])


def save_prompt_weights(ptuning, filepath, reference):
    """Writes the prompt layer's weights of a `PTuningBackbone` (the table,
    and the encoder where the reference includes it) and the reference,
    marked as prompt-only."""
    skip = [] if reference["include_encoder"] else [ptuning.prompt_encoder]
    keras_internals.save_layer_weights(
        ptuning.prompt_injection, filepath, skip=skip
    )
    with h5py.File(filepath, "a") as f:
        f.attrs[PROMPT_WEIGHTS_MARK] = json.dumps(reference)


def load_prompt_weights(ptuning, filepath, reference):
    """Reads a prompt-only weights file (holding `reference`) into a
    `PTuningBackbone`, after checking that its frozen backbone is the
    file's base."""
    check_base(reference, ptuning.backbone, f"{os.fspath(filepath)!r}")
    if not reference["include_encoder"] and ptuning.prompt_source != "table":
        raise ValueError(
            f"{os.fspath(filepath)!r} holds the collapsed prompt only "
            "(include_encoder=False); this model runs its prompt encoder "
            f"(prompt_source={ptuning.prompt_source!r}). Load it with "
            "`from_preset`, which builds the model on the table."
        )
    skip = [] if reference["include_encoder"] else [ptuning.prompt_encoder]
    keras_internals.load_layer_weights(
        ptuning.prompt_injection, filepath, skip=skip
    )


def save_to_preset(save, owner, preset_dir, base_preset, include_encoder):
    """`save_to_preset` of a p-tuned task or `PTuningBackbone` (`owner`).

    Without `base_preset`, keras-hub's `save(directory)` writes the whole
    preset. With it, `save` runs with the `PTuningBackbone` written as a
    reference to `base_preset`, into a fresh folder moved into `preset_dir`
    only once complete; the tokenizer's vocabulary (`assets/`) is left out.
    Without the encoder, the prompt is written as its collapsed table and
    the preset's config runs on it (`prompt_source="table"`).
    """
    if base_preset is None:
        if include_encoder is not False:
            raise ValueError(
                "`include_encoder` is for prompt-only presets "
                "(base_preset=); a whole preset keeps everything. "
                f"Received: include_encoder={include_encoder!r}"
            )
        return save(preset_dir)
    if not isinstance(include_encoder, bool):
        raise TypeError(
            "`include_encoder` must be a bool. Received: "
            f"include_encoder={include_encoder!r}"
        )
    ptuning = owner._ptuning_backbone()
    if ptuning.lora_rank is not None:
        # LoRA weights live in the frozen backbone's layers, which the
        # preset leaves to the base.
        raise ValueError(
            "A prompt-only preset (base_preset=) holds no backbone weights, "
            "and this model's LoRA weights sit in its backbone's layers: "
            "save the whole preset (base_preset=None). Received: a "
            f"{type(owner).__name__} with LoRA enabled"
        )
    if not include_encoder and ptuning.is_multi_task:
        raise ValueError(
            "A multi-task prompt has one table per task: save its encoders "
            "(include_encoder=True). Received: include_encoder=False"
        )
    if not isinstance(preset_dir, (str, os.PathLike)):
        raise TypeError(
            "`preset_dir` must be a path. Received: preset_dir of type "
            f"{type(preset_dir).__name__}"
        )
    preset_dir = os.fspath(preset_dir)
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise ValueError(
            f"`preset_dir` is a file. Received: preset_dir={preset_dir!r}"
        )
    parent = os.path.dirname(os.path.abspath(preset_dir))
    missing = directories_to_create(parent, "preset_dir", preset_dir)
    reference = base_reference(ptuning.backbone, base_preset, include_encoder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".prompt-preset-", dir=parent)
    written = False
    try:
        if not include_encoder and ptuning.prompt_source == "encoder":
            # The table the file holds is the encoder's current output (the
            # model keeps running its encoder; the table is unused there).
            ptuning.prompt_injection.prompt_table.assign(
                keras.ops.cast(ptuning.prompt_table(), "float32")
            )
        # Read by `PTuningBackbone.get_config` and `save_weights`.
        ptuning.writing_base_reference = json.dumps(reference)
        try:
            save(staging)
        finally:
            ptuning.writing_base_reference = None
        shutil.rmtree(os.path.join(staging, "assets"), ignore_errors=True)
        os.makedirs(preset_dir, exist_ok=True)
        # A vocabulary left by an earlier whole preset in the same folder
        # would not be the base preset's.
        shutil.rmtree(os.path.join(preset_dir, "assets"), ignore_errors=True)
        for name in os.listdir(staging):
            target = os.path.join(preset_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
        written = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not written:
            remove_created_directories(missing)


def read_assets_from_base(preprocessor, base_preset):
    """Makes keras-hub's `load_preset_assets(<the prompt-only preset>)`,
    which its loader calls right after deserializing a task, read the
    tokenizer's vocabulary from `base_preset` instead: a prompt-only preset
    holds none. (Reading it during deserialization would trip Keras'
    safe mode: a file outside the archive.)"""
    load_preset_assets = preprocessor.load_preset_assets

    def load_base_assets(preset):
        load_preset_assets(base_preset)

    preprocessor.load_preset_assets = load_base_assets

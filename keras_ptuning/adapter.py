"""Adapter files: only what P-tuning trained, for any backend.

An adapter holds the collapsed `(num_virtual_tokens, token_dim)` prompt,
the task head's weights if the task has one, the configuration as JSON
(with the placement: prepended, or slots and their placeholder id),
and, with `include_encoder=True`, the prompt encoder's weights so that
training can resume (which PEFT's adapters cannot do). The backbone is not
in it: a few hundred KB where the backbone is tens of MB or more.
"""

import json
import os

import h5py
import numpy as np
from keras import ops

from keras_ptuning.pooling import check_head_pooling
from keras_ptuning.pooling import hf_pooling
from keras_ptuning.version import __version__

ADAPTER_FORMAT = "keras_ptuning.adapter"
ADAPTER_FORMAT_VERSION = 1


def float32_numpy(variable):
    """A variable or tensor as a float32 numpy array."""
    return np.asarray(ops.convert_to_numpy(variable), dtype="float32")


def _check_shape(what, expected, found):
    if tuple(expected) != tuple(found):
        raise ValueError(
            f"The adapter's {what} has shape {tuple(found)}, but this model "
            f"needs {tuple(expected)}."
        )


def _check_single_task(ptuning):
    if ptuning.is_multi_task:
        raise ValueError(
            "Adapters hold one task's prompt; this model has tasks "
            f"{ptuning.task_names}. Save it with `model.save(...)`."
        )


# Backbone config entries that a prompt depends on: an adapter is refused
# by a backbone whose entries differ (another checkpoint's architecture).
ARCHITECTURE_KEYS = (
    "vocabulary_size",
    "num_layers",
    "hidden_dim",
    "intermediate_dim",
    "num_heads",
    "num_query_heads",
    "num_key_value_heads",
    "head_dim",
)


def backbone_architecture(backbone):
    """The int `ARCHITECTURE_KEYS` entries of `backbone.get_config()`."""
    config = backbone.get_config()
    return {
        key: config[key]
        for key in ARCHITECTURE_KEYS
        if isinstance(config.get(key), int)
    }


def check_adapter_backbone(config, backbone, source):
    """Refuses an adapter written for another backbone class, or for one
    whose architecture entries differ (`ValueError`, naming both)."""
    found = config.get("backbone_class")
    here = type(backbone).__name__
    if found is not None and found != here:
        raise ValueError(
            f"{source} was trained on a {found}; this model's backbone is a "
            f"{here}. A prompt only means something on the checkpoint it "
            "was trained on."
        )
    mine = backbone_architecture(backbone)
    differ = {
        key: value
        for key, value in config.get("backbone_architecture", {}).items()
        if key in mine and mine[key] != value
    }
    if differ:
        raise ValueError(
            f"{source} was trained on a {here} with "
            + ", ".join(f"{k}={v}" for k, v in sorted(differ.items()))
            + "; this model's has "
            + ", ".join(f"{k}={mine[k]}" for k in sorted(differ))
            + "."
        )


def _placement(placeholder_id):
    return "prepended prompt" if placeholder_id is None else "prompt slots"


class AdapterMixin:
    """`save_adapter` / `load_adapter` for the P-tuning models.

    Models provide `_ptuning_backbone()` (their `PTuningBackbone`) and
    `_head_variables()` (a dict of name to trainable head variable).
    """

    def _ptuning_backbone(self):
        return self.backbone

    def _head_variables(self):
        return {}

    def _head_pooling(self):
        """What the task head reads (a classifier's `pooling`), or None."""
        return None

    def save_adapter(self, filepath, include_encoder=False, overwrite=True):
        """Writes the trained prompt (and head) to an HDF5 adapter file.

        Args:
            filepath: str. Where to write; `.adapter.h5` is the convention.
            include_encoder: bool. Also keep the prompt encoder's weights, so
                that a model loading the adapter can resume training.
            overwrite: bool. Whether an existing file may be replaced.
        """
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(
                f"`filepath` must be a path. Received: filepath={filepath!r}"
            )
        if os.path.exists(filepath) and not overwrite:
            raise ValueError(
                f"`filepath` exists and overwrite=False. Received: "
                f"filepath={filepath!r}"
            )
        ptuning = self._ptuning_backbone()
        _check_single_task(ptuning)
        if include_encoder and ptuning.prompt_source != "encoder":
            raise ValueError(
                "include_encoder=True needs the prompt encoder in use, but "
                "this model runs on a collapsed prompt table "
                f"(prompt_source={ptuning.prompt_source!r})."
            )
        head = self._head_variables()
        encoder = ptuning.prompt_encoder
        config = {
            "format": ADAPTER_FORMAT,
            "format_version": ADAPTER_FORMAT_VERSION,
            "keras_ptuning_version": __version__,
            "task": type(self).__name__,
            "backbone_class": type(ptuning.backbone).__name__,
            "backbone_architecture": backbone_architecture(ptuning.backbone),
            "hidden_dim": ptuning.hidden_dim,
            "prompt_config": ptuning.prompt_config.to_dict(),
            "placeholder_id": ptuning.placeholder_id,
            "head": {name: list(v.shape) for name, v in head.items()},
            "head_pooling": self._head_pooling() if head else None,
            "include_encoder": bool(include_encoder),
            "encoder_weights": [v.path for v in encoder.weights]
            if include_encoder
            else [],
        }
        arrays = {"prompt_table": float32_numpy(ptuning.prompt_table())}
        arrays.update({f"head/{k}": float32_numpy(v) for k, v in head.items()})
        if include_encoder:
            arrays.update(
                {
                    f"encoder/{i}": float32_numpy(v)
                    for i, v in enumerate(encoder.weights)
                }
            )
        # Write next to the target, then move into place: never half-written.
        temporary = f"{filepath}.tmp-{os.getpid()}"
        try:
            with h5py.File(temporary, "w") as f:
                f.attrs["config"] = json.dumps(config)
                for name, value in arrays.items():
                    f.create_dataset(name, data=value)
            os.replace(temporary, filepath)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def load_adapter(self, filepath):
        """Restores an adapter written by `save_adapter`, on any backend.

        The model must be built on the same backbone (the same class and
        architecture entries, e.g. `vocabulary_size` and `num_layers`, as
        recorded in the file), with the same placement, number of virtual
        tokens and head shapes; mismatches raise a `ValueError` before
        anything is changed. A prompt-only adapter (no head) may move
        between tasks on one backbone, e.g. from a `PTuningCausalLM` to its
        `PTuningBackbone`. An adapter with the encoder
        restores it (training resumes from there); one without switches the
        model to the collapsed prompt (`prompt_source="table"`). A compiled
        model is recompiled from its compile config, with a fresh optimizer.
        """
        if not os.path.isfile(filepath):
            raise ValueError(
                f"`filepath` is not a file. Received: filepath={filepath!r}"
            )
        with h5py.File(filepath, "r") as f:
            config = json.loads(f.attrs.get("config", "{}"))
            if config.get("format") != ADAPTER_FORMAT:
                raise ValueError(
                    f"{filepath!r} is not a keras_ptuning adapter file."
                )
            version = config.get("format_version")
            if not isinstance(version, int) or not (
                1 <= version <= ADAPTER_FORMAT_VERSION
            ):
                raise ValueError(
                    f"{filepath!r} has adapter format_version={version!r}; "
                    f"this keras_ptuning ({__version__}) reads versions 1 to "
                    f"{ADAPTER_FORMAT_VERSION}."
                )
            arrays = {}
            f.visititems(
                lambda name, item: (
                    arrays.__setitem__(name, item[()])
                    if isinstance(item, h5py.Dataset)
                    else None
                )
            )
        check_adapter_backbone(
            config, self._ptuning_backbone().backbone, f"{filepath!r}"
        )
        placement = config.get("placeholder_id")
        if placement != self._ptuning_backbone().placeholder_id:
            raise ValueError(
                "The adapter was trained with placeholder_id="
                f"{placement} ({_placement(placement)}); this model uses "
                f"placeholder_id={self._ptuning_backbone().placeholder_id} "
                f"({_placement(self._ptuning_backbone().placeholder_id)})."
            )
        head_arrays = {
            name[len("head/") :]: value
            for name, value in arrays.items()
            if name.startswith("head/")
        }
        if head_arrays and self._head_pooling() is not None:
            # Adapters written before the readout was recorded read HF's.
            stored = config.get(
                "head_pooling", hf_pooling(self._ptuning_backbone())
            )
            check_head_pooling(self, stored, "pooling", f"{filepath!r}")
        encoder_arrays = None
        if config["include_encoder"]:
            prompt_config = self._ptuning_backbone().prompt_config.to_dict()
            if config["prompt_config"] != prompt_config:
                raise ValueError(
                    "The adapter's prompt encoder config "
                    f"{config['prompt_config']} differs from this model's "
                    f"{prompt_config}."
                )
            encoder_arrays = [
                arrays[f"encoder/{i}"]
                for i in range(len(config["encoder_weights"]))
            ]
        self.set_trained_weights(
            arrays["prompt_table"],
            head_arrays,
            encoder_arrays,
            source=f"the adapter (a {config['task']})",
        )

    def set_trained_weights(
        self, prompt_table, head=None, encoder=None, source="the adapter"
    ):
        """Puts a trained prompt (and head) into the model, checked first.

        Args:
            prompt_table: `(num_virtual_tokens, hidden_dim)` array.
            head: dict of head weight name (`"kernel"`, `"bias"`) to array;
                must name exactly the model's head weights.
            encoder: optional list of arrays, the prompt encoder's weights in
                order. Given, the model keeps training through its encoder;
                otherwise it switches to the collapsed `prompt_table`.
            source: what the weights come from, for error messages.

        Every shape is checked before anything changes; a mismatch raises a
        `ValueError` naming both shapes.
        """
        ptuning = self._ptuning_backbone()
        _check_single_task(ptuning)
        encoder_variables = ptuning.prompt_encoder.weights
        head = head or {}
        hidden_dim, num_tokens = ptuning.hidden_dim, ptuning.num_virtual_tokens
        found = tuple(np.shape(prompt_table))
        if len(found) != 2 or found[1] != hidden_dim:
            raise ValueError(
                f"{source} has a prompt of shape {found}: it was trained on a "
                f"backbone of hidden size {found[-1]}, this model's is "
                f"{hidden_dim}."
            )
        if found[0] != num_tokens:
            raise ValueError(
                f"{source} has num_virtual_tokens={found[0]}; this model has "
                f"{num_tokens}."
            )
        head_variables = self._head_variables()
        if set(head) != set(head_variables):
            raise ValueError(
                f"{source} holds head weights {sorted(head)}; this "
                f"{type(self).__name__} has {sorted(head_variables)}."
            )
        for name, variable in head_variables.items():
            _check_shape(
                f"head weight {name!r}", variable.shape, np.shape(head[name])
            )
        if encoder is not None:
            if len(encoder) != len(encoder_variables):
                raise ValueError(
                    f"{source} has {len(encoder)} encoder weights; this "
                    f"model's encoder has {len(encoder_variables)}."
                )
            for variable, value in zip(encoder_variables, encoder):
                _check_shape(
                    f"encoder weight {variable.path!r}",
                    variable.shape,
                    np.shape(value),
                )

        # All checked: now change the model.
        for name, variable in head_variables.items():
            variable.assign(head[name])
        if encoder is not None:
            for variable, value in zip(encoder_variables, encoder):
                variable.assign(value)
            ptuning.prompt_injection.prompt_table.assign(prompt_table)
            ptuning.prompt_injection.set_prompt_source("encoder")
        else:
            ptuning.collapse_prompt(prompt_table)
        self._reset_after_prompt_change()

    def _reset_after_prompt_change(self):
        for name in (
            "train_function",
            "test_function",
            "predict_function",
            "generate_function",
        ):
            if hasattr(self, name):
                setattr(self, name, None)
        if getattr(self, "compiled", False):
            compile_config = self.get_compile_config()
            if compile_config:
                self.compile_from_config(compile_config)


def read_adapter_config(filepath):
    """The JSON config stored in an adapter file."""
    with h5py.File(filepath, "r") as f:
        return json.loads(f.attrs["config"])

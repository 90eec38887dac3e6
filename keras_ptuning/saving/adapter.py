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

from keras_ptuning.layers.pooling import check_head_pooling
from keras_ptuning.layers.pooling import hf_pooling
from keras_ptuning.version import __version__

ADAPTER_FORMAT = "keras_ptuning.saving.adapter"
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


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r}")


def _check_path(filepath):
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(
            f"`filepath` must be a path. Received: filepath={filepath!r}"
        )
    if not os.fspath(filepath):
        raise ValueError(
            f"`filepath` must not be empty. Received: filepath={filepath!r}"
        )


def _float32_array(value, what, source):
    """`value` as a finite float32 numpy array, or a `ValueError`."""
    try:
        if ops.is_tensor(value):
            value = ops.convert_to_numpy(value)
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"values of dtype {array.dtype}")
        array = array.astype("float32")
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The {what} of {source} is not an array of real numbers ({error})."
        ) from error
    if not np.isfinite(array).all():
        raise ValueError(
            f"The {what} of {source} holds non-finite values (NaN or inf)."
        )
    return array


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


ADAPTER_FORMATS = ("keras", "peft")


def _check_format(format):
    if not isinstance(format, str) or format not in ADAPTER_FORMATS:
        raise ValueError(
            f"`format` must be one of {ADAPTER_FORMATS}. Received: "
            f"format={format!r}"
        )


def _refuse_peft_options(**options):
    for name, value in options.items():
        if value is not None:
            raise ValueError(
                f"`{name}` is for PEFT adapters (format='peft'). Received: "
                f"{name}={value!r} with format='keras'"
            )


def _is_directory(filepath):
    return isinstance(filepath, (str, os.PathLike)) and os.path.isdir(filepath)


class AdapterMixin:
    """`save_adapter` / `load_adapter` (this library's adapter files and
    PEFT's directories) and `export` (a TensorFlow SavedModel) for the
    P-tuning models.

    Models provide `_ptuning_backbone()` (their `PTuningBackbone`) and
    `_head_variables()` (a dict of name to trainable head variable).
    """

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        *,
        overwrite=False,
        include_preprocessing=False,
        max_length=None,
    ):
        """Exports the model as a TensorFlow SavedModel, from any backend.

        `keras.Model.export` traces the model's `call` with the backend's
        own exporter, which cannot trace a P-tuning model on JAX or
        PyTorch; this runs `keras_ptuning.export_saved_model` instead (its
        signatures, raw text in with `include_preprocessing=True`, and
        `generate` for a causal LM).

        Args:
            filepath: str. The SavedModel directory to write.
            format: `"tf_saved_model"`, the only format offered.
            verbose: ignored (Keras' argument; the export prints nothing).
            input_signature: must be `None`: the signatures are the model's
                input names, see `keras_ptuning.export_saved_model`.
            overwrite: bool. Replace `filepath` (a directory) if it exists.
                Defaults to `False`.
            include_preprocessing: bool. Signatures take raw text through
                the model's preprocessor.
            max_length: `None` or int. The `generate` signature's length
                (a `PTuningCausalLM` exported with raw text).
        """
        from keras_ptuning.saving.export import export_saved_model

        if format != "tf_saved_model":
            raise ValueError(
                "P-tuning models export as TensorFlow SavedModels only "
                "(`keras_ptuning.export_saved_model`). Received: "
                f"format={format!r}"
            )
        if input_signature is not None:
            raise ValueError(
                "The exported signatures are the model's own inputs (see "
                "`keras_ptuning.export_saved_model`); `input_signature` "
                f"must be None. Received: input_signature={input_signature!r}"
            )
        export_saved_model(
            self,
            filepath,
            overwrite=overwrite,
            include_preprocessing=include_preprocessing,
            max_length=max_length,
        )

    def _ptuning_backbone(self):
        return self.backbone

    def _head_variables(self):
        return {}

    def _head_pooling(self):
        """What the task head reads (a classifier's `pooling`), or None."""
        return None

    def save_adapter(
        self,
        filepath,
        include_encoder=False,
        overwrite=None,
        *,
        format="keras",
        base_model_name_or_path=None,
        transformers_version=None,
    ):
        """Writes what P-tuning trained (the prompt, and the head) as an
        adapter: this library's HDF5 file, or a PEFT adapter directory.

        Args:
            filepath: str. Where to write: a file (`format="keras"`;
                `.adapter.h5` is the convention) or a directory
                (`format="peft"`).
            include_encoder: bool. Also keep the prompt encoder's weights, so
                that a model loading the adapter can resume training
                (`format="keras"` only: PEFT keeps the collapsed prompt).
            overwrite: `None` or bool. Whether an existing file or adapter
                directory may be replaced. `None` (default) is each
                format's own default: `True` for a file, as Keras' savers,
                `False` for a PEFT directory (replacing one deletes it).
            format: `"keras"` (default) or `"peft"`: a directory that
                `peft.PeftModel.from_pretrained` loads into the HF model of
                the same checkpoint (`keras_ptuning.save_peft_adapter`).
            base_model_name_or_path: `format="peft"` only: the HF name or
                path recorded in `adapter_config.json`.
            transformers_version: `format="peft"` only (Gemma prompts; see
                `keras_ptuning.save_peft_adapter`).
        """
        _check_format(format)
        if format == "peft":
            from keras_ptuning.saving.peft_interop import save_peft_adapter

            if include_encoder is not False:
                raise ValueError(
                    "A PEFT adapter holds the collapsed prompt only; the "
                    "prompt encoder's weights go in format='keras'. "
                    f"Received: include_encoder={include_encoder!r} with "
                    "format='peft'"
                )
            save_peft_adapter(
                self,
                filepath,
                base_model_name_or_path,
                overwrite=False if overwrite is None else overwrite,
                transformers_version=transformers_version,
            )
            return
        _refuse_peft_options(
            base_model_name_or_path=base_model_name_or_path,
            transformers_version=transformers_version,
        )
        self._save_keras_adapter(
            filepath, include_encoder, True if overwrite is None else overwrite
        )

    def _save_keras_adapter(self, filepath, include_encoder, overwrite):
        _check_path(filepath)
        _check_bool("include_encoder", include_encoder)
        _check_bool("overwrite", overwrite)
        if os.path.isdir(filepath):
            raise ValueError(
                "`filepath` is a directory; an adapter is written to a file. "
                f"Received: filepath={filepath!r}"
            )
        if os.path.exists(filepath) and not overwrite:
            raise ValueError(
                f"`filepath` exists and overwrite=False. Received: "
                f"filepath={filepath!r}"
            )
        parent = os.path.dirname(os.path.abspath(filepath))
        if not os.path.isdir(parent):
            why = "is a file" if os.path.exists(parent) else "does not exist"
            raise ValueError(
                f"The directory of `filepath`, {parent!r}, {why}. Received: "
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
        temporary = f"{os.fspath(filepath)}.tmp-{os.getpid()}"
        try:
            with h5py.File(temporary, "w") as f:
                f.attrs["config"] = json.dumps(config)
                for name, value in arrays.items():
                    f.create_dataset(name, data=value)
            os.replace(temporary, filepath)
        except OSError as error:
            raise ValueError(
                f"The adapter could not be written to `filepath` ({error}). "
                f"Received: filepath={filepath!r}"
            ) from error
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def load_adapter(self, filepath, format=None, *, transformers_version=None):
        """Restores an adapter written by `save_adapter` (either format) or
        by PEFT, on any backend.

        Args:
            filepath: str. The adapter: a file (`format="keras"`) or a PEFT
                adapter directory (`format="peft"`).
            format: `None` (default: a directory is a PEFT adapter, a file
                this library's), `"keras"` or `"peft"`
                (`keras_ptuning.load_peft_adapter`: the collapsed prompt and
                the head, into a model that prepends its prompt).
            transformers_version: `format="peft"` only: the transformers
                version that trained a Gemma or Gemma 2 adapter (see
                `keras_ptuning.load_peft_adapter`).
        """
        if format is None:
            format = "peft" if _is_directory(filepath) else "keras"
        _check_format(format)
        if format == "peft":
            from keras_ptuning.saving.peft_interop import load_peft_adapter

            load_peft_adapter(
                self, filepath, transformers_version=transformers_version
            )
            return
        _refuse_peft_options(transformers_version=transformers_version)
        self._load_keras_adapter(filepath)

    def _load_keras_adapter(self, filepath):
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
        _check_path(filepath)
        if not os.path.isfile(filepath):
            raise ValueError(
                f"`filepath` is not a file. Received: filepath={filepath!r}"
            )
        config, arrays = _read_adapter(filepath)
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
        head_arrays = arrays["head"]
        if head_arrays and self._head_pooling() is not None:
            # Adapters written before the readout was recorded read HF's.
            stored = config.get(
                "head_pooling", hf_pooling(self._ptuning_backbone())
            )
            check_head_pooling(self, stored, "pooling", f"{filepath!r}")
        if config["include_encoder"]:
            prompt_config = self._ptuning_backbone().prompt_config.to_dict()
            if config["prompt_config"] != prompt_config:
                raise ValueError(
                    "The adapter's prompt encoder config "
                    f"{config['prompt_config']} differs from this model's "
                    f"{prompt_config}."
                )
        self.set_trained_weights(
            arrays["prompt_table"],
            head_arrays,
            arrays["encoder"],
            source=f"the adapter {filepath!r} (a {config['task']})",
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

        Every value and shape is checked before anything changes: a mismatch
        raises a `ValueError` naming both shapes, and so does an array that
        is not of finite real numbers (strings, NaN, inf).
        """
        ptuning = self._ptuning_backbone()
        _check_single_task(ptuning)
        encoder_variables = ptuning.prompt_encoder.weights
        if head is None:
            head = {}
        if not isinstance(head, dict):
            raise TypeError(
                "`head` must be a dict of head weight name to array. "
                f"Received: head of type {type(head).__name__}"
            )
        if encoder is not None and not isinstance(encoder, (list, tuple)):
            raise TypeError(
                "`encoder` must be a list of arrays, the prompt encoder's "
                f"weights in order. Received: encoder of type "
                f"{type(encoder).__name__}"
            )
        # Every value converted (and checked) before anything is assigned.
        prompt_table = _float32_array(prompt_table, "prompt", source)
        head = {
            name: _float32_array(value, f"head weight {name!r}", source)
            for name, value in head.items()
        }
        if encoder is not None:
            encoder = [
                _float32_array(value, f"encoder weight {index}", source)
                for index, value in enumerate(encoder)
            ]
        hidden_dim, num_tokens = ptuning.hidden_dim, ptuning.num_virtual_tokens
        found = prompt_table.shape
        if len(found) != 2:
            raise ValueError(
                f"{source} has a prompt of shape {found}, which is not 2-D: "
                f"this model needs (num_virtual_tokens, hidden_dim) = "
                f"{(num_tokens, hidden_dim)}."
            )
        if found[1] != hidden_dim:
            raise ValueError(
                f"{source} has a prompt of shape {found}: it was trained on a "
                f"backbone of hidden size {found[1]}, this model's is "
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
                f"{source} holds head weights {sorted(head, key=repr)}; this "
                f"{type(self).__name__} has {sorted(head_variables)}."
            )
        for name, variable in head_variables.items():
            _check_shape(
                f"head weight {name!r}", variable.shape, head[name].shape
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
                    value.shape,
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


def _invalid(filepath, why):
    return ValueError(
        f"{filepath!r} is not a valid keras_ptuning adapter: {why}"
    )


def _open(filepath):
    try:
        return h5py.File(filepath, "r")
    except OSError as error:
        raise _invalid(
            filepath, f"it cannot be read as an HDF5 file ({error})."
        ) from error


def _config_object(f, filepath):
    """The file's JSON config, a dict (`{}` when the file has none)."""
    raw = f.attrs.get("config", "{}")
    if not isinstance(raw, (str, bytes)):
        raise _invalid(
            filepath,
            f"its config attribute is of type {type(raw).__name__}, not "
            "JSON text.",
        )
    try:
        config = json.loads(raw)
    except ValueError as error:
        raise _invalid(
            filepath, f"its config is not valid JSON ({error})."
        ) from error
    if not isinstance(config, dict):
        raise _invalid(
            filepath,
            f"its config is a JSON {type(config).__name__}, not an object.",
        )
    return config


# Config entries every adapter has had, and their types; then optional ones
# (absent from files written before they were recorded), and their types.
REQUIRED_ENTRIES = {
    "task": (str,),
    "include_encoder": (bool,),
    "encoder_weights": (list,),
    "prompt_config": (dict,),
}
OPTIONAL_ENTRIES = {
    "backbone_class": (str,),
    "backbone_architecture": (dict,),
    "placeholder_id": (int, type(None)),
    "head": (dict,),
    "head_pooling": (str, type(None)),
}
JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a bool",
    int: "an integer",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def _check_config(config, filepath):
    if config.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{filepath!r} is not a keras_ptuning adapter file.")
    version = config.get("format_version")
    if (
        isinstance(version, bool)
        or not isinstance(version, int)
        or not (1 <= version <= ADAPTER_FORMAT_VERSION)
    ):
        raise ValueError(
            f"{filepath!r} has adapter format_version={version!r}; "
            f"this keras_ptuning ({__version__}) reads versions 1 to "
            f"{ADAPTER_FORMAT_VERSION}."
        )
    missing = sorted(set(REQUIRED_ENTRIES) - set(config))
    if missing:
        raise _invalid(filepath, f"its config lacks the entries {missing}.")
    for key, types in {**REQUIRED_ENTRIES, **OPTIONAL_ENTRIES}.items():
        if key not in config:
            continue
        value = config[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(
            value, types
        ):
            expected = " or ".join(JSON_TYPE_NAMES[t] for t in types)
            raise _invalid(
                filepath,
                f"its config entry {key!r} must be {expected}. Found: "
                f"{key}={value!r}",
            )
    if not all(isinstance(name, str) for name in config["encoder_weights"]):
        raise _invalid(
            filepath,
            "its config entry 'encoder_weights' must list weight names. "
            f"Found: encoder_weights={config['encoder_weights']!r}",
        )


def _numeric_dataset(f, name, filepath):
    item = f.get(name)
    if item is None:
        raise _invalid(filepath, f"it has no {name!r} array.")
    if not isinstance(item, h5py.Dataset):
        raise _invalid(
            filepath,
            f"{name!r} is an HDF5 {type(item).__name__}, not an array.",
        )
    if item.shape is None:
        raise _invalid(filepath, f"{name!r} is empty (a null dataspace).")
    if item.dtype.kind not in "biuf":
        raise _invalid(
            filepath,
            f"{name!r} holds values of dtype {item.dtype}, not numbers.",
        )
    return item[()]


def _read_adapter(filepath):
    """The checked config and arrays of the adapter file at `filepath`.

    Returns `(config, arrays)`: `arrays` has `"prompt_table"`, `"head"` (a
    dict of name to array) and `"encoder"` (the list of encoder weights, or
    `None` without them). Anything missing, mistyped or unreadable raises a
    `ValueError` naming the file.
    """
    try:
        with _open(filepath) as f:
            config = _config_object(f, filepath)
            _check_config(config, filepath)
            arrays = {
                "prompt_table": _numeric_dataset(f, "prompt_table", filepath)
            }
            head = f.get("head")
            if head is not None and not isinstance(head, h5py.Group):
                raise _invalid(filepath, "'head' is not an HDF5 group.")
            arrays["head"] = {
                name: _numeric_dataset(f, f"head/{name}", filepath)
                for name in (head.keys() if head is not None else ())
            }
            arrays["encoder"] = None
            if config["include_encoder"]:
                count = len(config["encoder_weights"])
                encoder = []
                for index in range(count):
                    name = f"encoder/{index}"
                    if f.get(name) is None:
                        raise _invalid(
                            filepath,
                            f"its config lists {count} encoder weights, but "
                            f"it has no {name!r} array.",
                        )
                    encoder.append(_numeric_dataset(f, name, filepath))
                arrays["encoder"] = encoder
    except OSError as error:  # A file cut short, found while reading.
        raise _invalid(
            filepath, f"it cannot be read as an HDF5 file ({error})."
        ) from error
    return config, arrays


def read_adapter_config(filepath):
    """The JSON config stored in an adapter file."""
    with _open(filepath) as f:
        return _config_object(f, filepath)

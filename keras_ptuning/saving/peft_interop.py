"""Reading and writing HuggingFace PEFT P-tuning adapters.

A PEFT P-tuning adapter is a directory with `adapter_config.json`
(`peft_type: "P_TUNING"`) and `adapter_model.safetensors` (or `.bin`)
holding `prompt_embeddings`, the `(num_virtual_tokens, token_dim)` prompt
PEFT computes from its encoder when saving, plus for a `SEQ_CLS` adapter the
classifier head HF's `*ForSequenceClassification` model has. Heads of one
`Linear` layer cross over both ways, as a `PTuningTextClassifier`'s `Dense`
head: BERT's `classifier` on the pooler (`pooling="pooled"`) and
decoder-only models' bias-free `score` on the last token (`pooling="last"`;
PEFT runs HF's decoders on `inputs_embeds`, where they read the last
position whatever the padding, so only unpadded or left-padded rows agree).
DistilBERT's head (`pre_classifier` -> ReLU -> `classifier`) and RoBERTa's
(`classifier.dense` -> tanh -> `classifier.out_proj`) are two layers deep on
the first token: adapters holding them are refused, and so are classifiers
on those backbones when written. A `CAUSAL_LM` adapter holds the prompt
only and maps to `PTuningCausalLM`. PEFT only prepends virtual tokens:
adapters interoperate for keras_ptuning models in the default prepend
placement; models with prompt slots (`placeholder_id`) can neither write
nor load PEFT adapters.

The backbone must be the keras-hub port of the same HF checkpoint. Numbers
agree to within the ports' own differences (keras-hub's BERT uses the
tanh-approximate GELU where HF's uses the exact one).

Gemma's embedding scale. Gemma models multiply token embeddings by
`sqrt(hidden_size)`. keras-hub's `GemmaBackbone` and `Gemma3Backbone` do it
after their token embedding in the graph, where keras_ptuning has already
spliced in the virtual tokens, so the model reads `prompt_table *
sqrt(hidden_dim)`. PEFT feeds its prompt through `inputs_embeds`, and
whether transformers scales those depends on the model and the version:

- Gemma 3: transformers scales inside `embed_tokens`
  (`Gemma3TextScaledWordEmbedding`, since Gemma 3 was added in 4.50), so
  the model reads PEFT's prompt as it is. Loading divides
  `prompt_embeddings` by keras-hub's factor and saving multiplies by it.
- Gemma and Gemma 2 (both `GemmaBackbone`): before transformers 5.4 the
  model's forward scaled `inputs_embeds`, prompt included, as keras-hub does
  (the prompt crosses over unchanged); from 5.4 `embed_tokens` scales
  (`GemmaTextScaledWordEmbedding`), as for Gemma 3. A PEFT adapter does not
  record the transformers version it was trained with, so
  `load_peft_adapter` refuses such an adapter unless given
  `transformers_version`. `save_peft_adapter` writes for the installed
  transformers (or the one named by `transformers_version`; with none
  installed, for 5.4 and later) and records which in `adapter_config.json`
  under `"keras_ptuning_prompt_convention"` (`"transformers>=5.4"` or
  `"transformers<5.4"`), which `load_peft_adapter` reads back. PEFT ignores
  keys it does not know, with a warning (since PEFT 0.14; earlier releases
  raise on them). Adapters of other backbones carry no such key.

The factor is `sqrt(hidden_dim)` cast to the token embedding's compute
dtype, as keras-hub computes it (transformers casts it to the weights'
dtype too): under `mixed_bfloat16`, `sqrt(3072)` is 55.5.
"""

import json
import os
import re
import shutil
import tempfile

import keras_hub
import numpy as np
from keras import ops

from keras_ptuning.backbones.ptuning_backbone import PTuningBackbone
from keras_ptuning.input_validation import directories_to_create
from keras_ptuning.input_validation import remove_created_directories
from keras_ptuning.layers.pooling import check_head_pooling
from keras_ptuning.layers.pooling import hf_pooling
from keras_ptuning.layers.prompt_encoder_config import PromptEncoderConfig
from keras_ptuning.models.ptuning_causal_lm import PTuningCausalLM
from keras_ptuning.models.ptuning_next_token_lm import PTuningNextTokenLM
from keras_ptuning.models.ptuning_text_classifier import PTuningTextClassifier
from keras_ptuning.saving.adapter import AdapterMixin
from keras_ptuning.saving.adapter import float32_numpy

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
# HF's one-layer sequence-classification heads, by module name, and what
# each reads (`hf_pooling` of the backbones that have it).
HEAD_READOUTS = {"classifier": "pooled", "score": "last"}
# HF's heads, by what they read.
HF_HEADS = {
    "pooled": "a one-layer `classifier` on the pooler (BERT)",
    "last": "a bias-free one-layer `score` on the last token (decoder-only "
    "models)",
    "first": "two layers deep on the first token (DistilBERT: "
    "`pre_classifier` -> ReLU -> `classifier`; RoBERTa: `classifier.dense` "
    "-> tanh -> `classifier.out_proj`), which a PTuningTextClassifier's one "
    "`Dense` head cannot express",
}
ENCODER_FIELDS = (
    "num_virtual_tokens",
    "token_dim",
    "encoder_reparameterization_type",
    "encoder_hidden_size",
    "encoder_num_layers",
    "encoder_dropout",
)
# Where `GemmaBackbone` adapters record whose convention their prompt
# follows (see the module docstring), and the two conventions.
PROMPT_CONVENTION_KEY = "keras_ptuning_prompt_convention"
EMBED_TOKENS_SCALES = "transformers>=5.4"
FORWARD_SCALES = "transformers<5.4"
# The first transformers release whose Gemma and Gemma 2 scale inside
# `embed_tokens`, where PEFT's prompt is not scaled.
GEMMA_EMBED_TOKENS_SCALES_SINCE = (5, 4)


def _unreadable(directory, name, error):
    return ValueError(
        f"`directory`'s {name} cannot be read "
        f"({type(error).__name__}: {str(error)[:200]}). Received: "
        f"directory={directory!r}"
    )


def _read_config(directory):
    """The adapter's `adapter_config.json`, a dict."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"`directory` has no {CONFIG_NAME}. Received: "
            f"directory={directory!r}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as error:  # Includes JSONDecodeError.
        raise _unreadable(directory, CONFIG_NAME, error) from error
    if not isinstance(config, dict):
        raise ValueError(
            f"`directory`'s {CONFIG_NAME} is not a JSON object (it holds a "
            f"{type(config).__name__}). Received: directory={directory!r}"
        )
    return config


def _read_tensors(directory):
    path = os.path.join(directory, SAFETENSORS_NAME)
    if os.path.isfile(path):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as error:  # SafetensorError, OSError, ...
            raise _unreadable(directory, SAFETENSORS_NAME, error) from error
    path = os.path.join(directory, BIN_NAME)
    if os.path.isfile(path):
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return {k: v.float().numpy() for k, v in state.items()}
        except Exception as error:  # UnpicklingError, RuntimeError, ...
            raise _unreadable(directory, BIN_NAME, error) from error
    raise ValueError(
        f"`directory` holds neither {SAFETENSORS_NAME} nor {BIN_NAME}. "
        f"Received: directory={directory!r}"
    )


def _find_head(tensors, directory):
    """The adapter's head as `(name, {"kernel", "bias"})`, or `(None, None)`.

    Raises for any weight beyond the prompt and one one-layer head: what is
    not loaded must not be dropped silently.
    """
    heads, unsupported = {}, []
    for key in sorted(tensors):
        if key == "prompt_embeddings":
            continue
        parts = key.split(".")
        if (
            len(parts) >= 2
            and parts[-2] in HEAD_READOUTS
            and parts[-1] in ("weight", "bias")
        ):
            heads.setdefault(parts[-2], {})[parts[-1]] = tensors[key]
        else:
            unsupported.append(key)
    if unsupported:
        raise ValueError(
            f"The PEFT adapter in {directory!r} holds weights that no "
            f"keras_ptuning model has a place for: {unsupported}. A "
            "PTuningTextClassifier's head is one `Dense` layer, as HF's "
            f"heads are for BERT ({HF_HEADS['pooled']}) and decoder-only "
            f"models; HF's heads for DistilBERT and RoBERTa are "
            f"{HF_HEADS['first']}."
        )
    if len(heads) > 1:
        raise ValueError(
            f"The PEFT adapter in {directory!r} holds {len(heads)} heads "
            f"({sorted(heads)}); a classifier has one."
        )
    if not heads:
        return None, None
    name, weights = heads.popitem()
    if "weight" not in weights:
        raise ValueError(
            f"The PEFT adapter in {directory!r} holds a `{name}` bias "
            "without its weight."
        )
    weight = weights["weight"].astype("float32")
    if weight.ndim != 2 or weight.shape[0] < 1:
        raise ValueError(
            f"The PEFT adapter in {directory!r} holds a `{name}` weight of "
            f"shape {weight.shape}; a head's is (num_classes, hidden_size), "
            "with at least one class."
        )
    bias = weights.get("bias")
    bias = np.zeros(weight.shape[0], "float32") if bias is None else bias
    if bias.shape != weight.shape[:1]:
        raise ValueError(
            f"The PEFT adapter in {directory!r} holds a `{name}` bias of "
            f"shape {bias.shape} for a weight of shape {weight.shape}; it "
            f"must be of shape {weight.shape[:1]}."
        )
    return name, {"kernel": weight.T, "bias": bias.astype("float32")}


def _backbone_name(backbone):
    if isinstance(backbone, PTuningBackbone):
        backbone = backbone.backbone
    return type(backbone).__name__


def _check_head_readout(name, backbone, directory):
    """Raises unless HF's classifiers on `backbone` have the `name` head."""
    readout = hf_pooling(backbone)
    if readout != HEAD_READOUTS[name]:
        raise ValueError(
            f"The PEFT adapter in {directory!r} holds a `{name}` head, "
            f"{HF_HEADS[HEAD_READOUTS[name]]}; HF's heads for a "
            f"{_backbone_name(backbone)} are {HF_HEADS[readout]}. Load the "
            "adapter into the backbone of the checkpoint it was trained "
            "on. Received: model_or_backbone with a "
            f"{_backbone_name(backbone)}"
        )


def _parse_transformers_version(transformers_version):
    """`(major, minor)` of a version string such as `"4.57.1"`."""
    match = None
    if isinstance(transformers_version, str):
        match = re.match(r"\s*(\d+)\.(\d+)", transformers_version)
    if match is None:
        raise ValueError(
            "`transformers_version` must be a transformers version string "
            "such as '4.57.1'. Received: "
            f"transformers_version={transformers_version!r}"
        )
    return int(match.group(1)), int(match.group(2))


def _convention_of(transformers_version):
    """The Gemma (v1/v2) prompt convention of a transformers version."""
    since = GEMMA_EMBED_TOKENS_SCALES_SINCE
    if _parse_transformers_version(transformers_version) >= since:
        return EMBED_TOKENS_SCALES
    return FORWARD_SCALES


def _installed_transformers_version():
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def _convention_depends_on_version(backbone):
    """Whether HF's scaling of this backbone's prompt changed with versions:
    Gemma and Gemma 2, not Gemma 3 (a class of its own in keras-hub)."""
    return isinstance(backbone, keras_hub.models.GemmaBackbone)


def _peft_prompt_scale(backbone, convention):
    """The factor between PEFT's prompt and our table: `peft = ours * scale`.

    PEFT prepends its prompt through `inputs_embeds`; keras_ptuning splices
    virtual tokens in at the token embedding's output. keras-hub's Gemma
    backbones multiply that output by `sqrt(hidden_dim)` afterwards, prompt
    included, so our model reads `table * sqrt(hidden_dim)`. Where
    transformers scales inside `embed_tokens` instead (Gemma 3; Gemma and
    Gemma 2 from transformers 5.4, `convention=EMBED_TOKENS_SCALES`), PEFT's
    prompt reaches the model unscaled, so our table is PEFT's prompt divided
    by keras-hub's own factor: `sqrt(hidden_dim)` cast to the token
    embedding's compute dtype, as `GemmaBackbone` and `Gemma3Backbone`
    compute it. Where transformers scaled `inputs_embeds` in the model's
    forward (Gemma and Gemma 2 before 5.4), and for every other backbone,
    the prompt crosses over as it is: 1.

    Args:
        backbone: the plain keras-hub backbone.
        convention: for a `GemmaBackbone`, `EMBED_TOKENS_SCALES` or
            `FORWARD_SCALES`; ignored otherwise.

    Returns:
        The factor, a float32 numpy scalar.
    """
    if isinstance(backbone, keras_hub.models.Gemma3Backbone) or (
        _convention_depends_on_version(backbone)
        and convention == EMBED_TOKENS_SCALES
    ):
        dtype = backbone.token_embedding.compute_dtype
        scale = ops.cast(ops.sqrt(backbone.hidden_dim), dtype)
        return np.float32(ops.convert_to_numpy(ops.cast(scale, "float32")))
    return np.float32(1.0)


def _loaded_convention(backbone, config, transformers_version, directory):
    """Whose convention a PEFT adapter's prompt follows, for a backbone
    whose HF scaling changed with versions (otherwise `None`)."""
    if transformers_version is not None:
        # Checked for every backbone, used for Gemma and Gemma 2 only.
        convention = _convention_of(transformers_version)
    else:
        convention = config.get(PROMPT_CONVENTION_KEY)
    if not _convention_depends_on_version(backbone):
        return None
    if convention is None:
        raise ValueError(
            f"The PEFT adapter in {directory!r} is for a "
            f"{_backbone_name(backbone)} (Gemma or Gemma 2), whose prompt "
            "transformers before 5.4 multiplied by sqrt(hidden_size) in the "
            "model's forward and transformers 5.4 and later reads as it "
            "is; the adapter does not record which version trained it. "
            "Pass the transformers version it was trained with, e.g. "
            "`load_peft_adapter(model_or_backbone, directory, "
            "transformers_version='4.57.1')`."
        )
    if convention not in (EMBED_TOKENS_SCALES, FORWARD_SCALES):
        raise ValueError(
            f"The PEFT adapter in {directory!r} records "
            f"{PROMPT_CONVENTION_KEY}={convention!r}; known are "
            f"{EMBED_TOKENS_SCALES!r} and {FORWARD_SCALES!r}."
        )
    return convention


def _no_place_for_head(directory, config, model_name):
    return ValueError(
        f"The PEFT adapter in {directory!r} (task_type="
        f"{config.get('task_type')!r}) holds a classifier head, which a "
        f"{model_name} has no place for: load it into a "
        "PTuningTextClassifier."
    )


def _model_for_backbone(
    backbone,
    config,
    prompt_table,
    head_name,
    head,
    transformers_version,
    directory,
):
    """The model that `load_peft_adapter` builds on a plain backbone.

    The adapter's config is checked against its tensors and the backbone
    first: nothing (no prompt encoder, however large its config asks it to
    be) is built for an adapter that would be refused.
    """
    prompt_config = PromptEncoderConfig(
        **{k: config[k] for k in ENCODER_FIELDS if k in config}
    )
    task_type = config.get("task_type")
    if task_type == "SEQ_CLS" and head is not None:
        model_class = PTuningTextClassifier
    elif task_type == "CAUSAL_LM":
        model_class = PTuningCausalLM
    else:
        model_class = PTuningBackbone
    if head is not None and model_class is not PTuningTextClassifier:
        raise _no_place_for_head(directory, config, model_class.__name__)
    shape = prompt_table.shape
    num_tokens = prompt_config.num_virtual_tokens
    if len(shape) != 2 or shape[0] != num_tokens:
        raise ValueError(
            f"The PEFT adapter in {directory!r} has `prompt_embeddings` of "
            f"shape {shape}; its {CONFIG_NAME} has num_virtual_tokens="
            f"{num_tokens}, for a prompt of shape ({num_tokens}, token_dim)."
        )
    token_dim = prompt_config.token_dim
    if token_dim is not None and token_dim != shape[1]:
        raise ValueError(
            f"The PEFT adapter in {directory!r} has `prompt_embeddings` of "
            f"shape {shape}; its {CONFIG_NAME} has token_dim={token_dim}."
        )
    hidden_dim = getattr(
        getattr(backbone, "token_embedding", None), "output_dim", None
    )
    # A backbone without a token embedding is PTuningBackbone's to refuse.
    if hidden_dim is not None and shape[1] != hidden_dim:
        raise ValueError(
            f"The PEFT adapter in {directory!r} has a prompt of shape "
            f"{shape}: it was trained on a backbone of hidden size "
            f"{shape[1]}; this {_backbone_name(backbone)}'s is {hidden_dim}. "
            "Received: model_or_backbone with a "
            f"{_backbone_name(backbone)}"
        )
    if head is not None:
        _check_head_readout(head_name, backbone, directory)
        features = head["kernel"].shape[0]
        if hidden_dim is not None and features != hidden_dim:
            raise ValueError(
                f"The PEFT adapter in {directory!r} holds a `{head_name}` "
                f"head reading {features} features; this "
                f"{_backbone_name(backbone)}'s hidden size is {hidden_dim}."
            )
    _loaded_convention(backbone, config, transformers_version, directory)
    # All checked: build the model.
    if model_class is PTuningTextClassifier:
        # The head was trained on what HF's model reads.
        ptuning = PTuningBackbone(backbone, prompt_config)
        return PTuningTextClassifier(
            ptuning, head["kernel"].shape[1], pooling=hf_pooling(ptuning)
        )
    if model_class is PTuningCausalLM:
        return PTuningCausalLM(backbone, prompt_config=prompt_config)
    return PTuningBackbone(backbone, prompt_config)


def load_peft_adapter(
    model_or_backbone, directory, *, transformers_version=None
):
    """Loads a PEFT P-tuning adapter directory into a keras_ptuning model.

    Args:
        model_or_backbone: a `PTuningTextClassifier`, `PTuningCausalLM` or
            `PTuningBackbone` to load into, or a plain keras-hub backbone, for
            which a model is built from the adapter's config (`SEQ_CLS`: a
            `PTuningTextClassifier` with the head's number of classes;
            `CAUSAL_LM`: a `PTuningCausalLM`; otherwise a `PTuningBackbone`).
        directory: the adapter directory, as PEFT's `save_pretrained` writes
            it.
        transformers_version: `None` or the version string of the
            transformers that trained the adapter (e.g. `"4.57.1"`). Needed
            only for Gemma and Gemma 2 adapters that PEFT wrote (see the
            module docstring); given, it overrides what an adapter written
            by `save_peft_adapter` records.

    Returns:
        The model, with the collapsed prompt (and head) loaded. PEFT keeps
        only the prompt's output, not its encoder, so the model runs on the
        prompt table (`prompt_source="table"`).

    Raises:
        TypeError: for a `directory` that is not a path.
        ValueError: before anything is changed (or built), for a directory
            whose files cannot be read, a model with prompt
            slots (PEFT prompts are prepended), an adapter whose head a
            `PTuningTextClassifier` cannot hold (two layers deep, as HF's
            DistilBERT and RoBERTa heads, or another family's head) or
            whose shapes differ from the model's, and for a Gemma or Gemma
            2 adapter of unknown transformers version.
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"`directory` must be a path. Received: directory={directory!r}"
        )
    config = _read_p_tuning_config(directory)
    tensors = _read_tensors(directory)
    if "prompt_embeddings" not in tensors:
        raise ValueError(
            f"The adapter in {directory!r} has no `prompt_embeddings`."
        )
    prompt_table = tensors["prompt_embeddings"].astype("float32")
    head_name, head = _find_head(tensors, directory)
    model = model_or_backbone
    if isinstance(model, keras_hub.models.Backbone) and not isinstance(
        model, PTuningBackbone
    ):
        model = _model_for_backbone(
            model,
            config,
            prompt_table,
            head_name,
            head,
            transformers_version,
            directory,
        )
    if not isinstance(model, AdapterMixin):
        raise TypeError(
            "`model_or_backbone` must be a keras_ptuning model or a keras-hub "
            f"backbone. Received: {type(model_or_backbone).__name__}"
        )
    ptuning = model._ptuning_backbone()
    wants_head = _check_target(
        model, ptuning, config, head_name, head, directory
    )
    convention = _loaded_convention(
        ptuning.backbone, config, transformers_version, directory
    )
    prompt_table = prompt_table / _peft_prompt_scale(
        ptuning.backbone, convention
    )
    model.set_trained_weights(
        prompt_table,
        head if wants_head else None,
        source=f"the PEFT adapter in {directory!r}",
    )
    return model


def _read_p_tuning_config(directory):
    """`adapter_config.json` of a PEFT P-tuning adapter with one
    transformer submodule, refused otherwise."""
    config = _read_config(directory)
    if config.get("peft_type") != "P_TUNING":
        raise ValueError(
            "Only PEFT P-tuning adapters can be loaded. Received: "
            f"peft_type={config.get('peft_type')!r}"
        )
    if config.get("num_transformer_submodules", 1) != 1:
        raise ValueError(
            "Only decoder-only or encoder-only adapters "
            "(num_transformer_submodules=1) are supported. Received: "
            f"num_transformer_submodules={config['num_transformer_submodules']}"
        )
    return config


def _check_target(model, ptuning, config, head_name, head, directory):
    """Refuses a model the adapter cannot go into (prompt slots, no place
    for the adapter's head, another readout); returns whether the model
    takes the head."""
    if ptuning.uses_slots:
        raise ValueError(
            f"The PEFT adapter in {directory!r} prepends its virtual tokens "
            "(PEFT P-tuning only prepends: placeholder_id=None); this model "
            "places them at slots, where the prompt would be read at "
            "positions it was not trained at. Load it into a model built "
            "with placeholder_id=None. Received: model_or_backbone with "
            f"placeholder_id={ptuning.placeholder_id} (prompt slots)"
        )
    wants_head = bool(model._head_variables())
    if head is not None and not wants_head:
        raise _no_place_for_head(directory, config, type(model).__name__)
    if head is not None:
        _check_head_readout(head_name, ptuning, directory)
        check_head_pooling(
            model,
            hf_pooling(model.backbone),
            "model_or_backbone.pooling",
            f"the PEFT adapter in {directory!r}",
        )
    return wants_head


def _remove_created(missing):
    """Removes what a failed save created: the target (`missing[0]`) with
    what is in it, then the parents it made, deepest first."""
    if missing:
        shutil.rmtree(missing[0], ignore_errors=True)
    remove_created_directories(missing[1:])


def _adapter_files(directory):
    return [
        name
        for name in (CONFIG_NAME, SAFETENSORS_NAME, BIN_NAME)
        if os.path.exists(os.path.join(directory, name))
    ]


def _peft_head_tensors(model, head):
    """The head's PEFT tensors: HF's module of the model's family."""
    readout = hf_pooling(model.backbone)
    if readout not in HEAD_READOUTS.values():
        raise ValueError(
            f"HF's heads for a {_backbone_name(model.backbone)} are "
            f"{HF_HEADS[readout]}, so PEFT would read this classifier's "
            "head as part of a deeper one. Use `model.save_adapter` "
            f"instead. Received: model.pooling={model.pooling!r}"
        )
    # PEFT's HF model reads HF's readout.
    check_head_pooling(model, readout, "model.pooling", "a PEFT adapter")
    kernel = np.ascontiguousarray(float32_numpy(head["kernel"]).T)
    bias = float32_numpy(head["bias"])
    if readout == "pooled":
        return {
            "base_model.classifier.weight": kernel,
            "base_model.classifier.bias": bias,
        }
    if np.any(bias != 0):
        raise ValueError(
            "HF's decoder-only classifiers read the last token through a "
            "`score` head with no bias, so PEFT would drop this "
            "classifier's head bias; only a zero bias (as a head loaded "
            "from PEFT has) can be written. Received: a head bias with "
            f"max |bias| = {float(np.abs(bias).max()):.4g}"
        )
    return {"base_model.score.weight": kernel}


def save_peft_adapter(
    model,
    directory,
    base_model_name_or_path=None,
    *,
    overwrite=False,
    transformers_version=None,
):
    """Writes a model's prompt (and head) as a PEFT P-tuning adapter.

    `peft.PeftModel.from_pretrained(hf_model, directory)` loads it into the
    HF model of the same checkpoint. PEFT has no place for our encoder's
    weights or for prompts that are not prepended, so only the collapsed
    prompt and the classifier head are written. The head goes where HF's
    `*ForSequenceClassification` has it: BERT's `classifier` (the model
    reads `pooling="pooled"`) or a decoder-only model's bias-free `score`
    (`pooling="last"`, zero bias). Classifiers on backbones whose HF heads
    are two layers deep (DistilBERT, RoBERTa) are refused.

    Args:
        model: a `PTuningTextClassifier`, `PTuningCausalLM`,
            `PTuningNextTokenLM` or `PTuningBackbone`.
        directory: where to write `adapter_config.json` and
            `adapter_model.safetensors` (created if needed).
        base_model_name_or_path: optional str, recorded in the config as
            PEFT does (it must be JSON-serializable).
        overwrite: bool. Whether an adapter already in `directory` may be
            replaced.
        transformers_version: `None` or the version string of the
            transformers that will run the adapter. Read only for Gemma and
            Gemma 2 backbones, whose prompt transformers scales differently
            before 5.4 (see the module docstring). Defaults to the installed
            transformers, or with none installed to 5.4 and later; the
            convention written is recorded in `adapter_config.json`.

    Everything is checked before anything is written; each file is written
    beside its target and moved into place, so none is ever half-written.
    A save that fails removes the directories it created.
    """
    from safetensors.numpy import save_file

    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(
        directory
    ):
        raise TypeError(
            f"`directory` must be a path. Received: directory={directory!r}"
        )
    if not isinstance(overwrite, bool):
        raise TypeError(
            f"`overwrite` must be a bool. Received: overwrite={overwrite!r}"
        )
    try:
        json.dumps(base_model_name_or_path)
    except (TypeError, ValueError) as error:
        raise TypeError(
            "`base_model_name_or_path` must be a str (or None), as PEFT "
            f"records it in {CONFIG_NAME} ({error}). Received: "
            f"base_model_name_or_path={base_model_name_or_path!r}"
        ) from error
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(
            "`directory` exists and is not a directory. Received: "
            f"directory={directory!r}"
        )
    missing = directories_to_create(directory, "directory", directory)
    existing = _adapter_files(directory)
    if existing and not overwrite:
        raise ValueError(
            f"`directory` holds an adapter ({', '.join(existing)}) and "
            f"overwrite=False. Received: directory={directory!r}"
        )
    if not isinstance(model, AdapterMixin):
        raise TypeError(
            "`model` must be a keras_ptuning model. Received: "
            f"{type(model).__name__}"
        )
    ptuning = model._ptuning_backbone()
    if ptuning.is_multi_task:
        raise ValueError(
            "A PEFT adapter holds one task's prompt; this model has tasks "
            f"{ptuning.task_names}."
        )
    if ptuning.uses_slots:
        raise ValueError(
            "PEFT P-tuning only prepends virtual tokens; this model places "
            f"them at slots (placeholder_id={ptuning.placeholder_id}), which "
            "a PEFT adapter cannot express. Use `model.save_adapter` instead."
        )
    backbone = ptuning.backbone
    convention = None
    if transformers_version is not None:
        # Checked for every backbone, used for Gemma and Gemma 2 only.
        convention = _convention_of(transformers_version)
    if _convention_depends_on_version(backbone) and convention is None:
        installed = _installed_transformers_version()
        convention = (
            EMBED_TOKENS_SCALES
            if installed is None
            else _convention_of(installed)
        )
    task_type = {
        PTuningTextClassifier: "SEQ_CLS",
        PTuningCausalLM: "CAUSAL_LM",
        # The same prompt, read at the last token only.
        PTuningNextTokenLM: "CAUSAL_LM",
    }.get(type(model), "FEATURE_EXTRACTION")
    config = {
        "peft_type": "P_TUNING",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "num_transformer_submodules": 1,
        "num_attention_heads": getattr(
            backbone, "num_heads", getattr(backbone, "num_query_heads", None)
        ),
        "num_layers": getattr(backbone, "num_layers", None),
        "modules_to_save": ["classifier", "score"]
        if task_type == "SEQ_CLS"
        else None,
    }
    prompt_config = ptuning.prompt_config
    config.update({k: getattr(prompt_config, k) for k in ENCODER_FIELDS})
    config["encoder_hidden_size"] = prompt_config.hidden_size
    if _convention_depends_on_version(backbone):
        config[PROMPT_CONVENTION_KEY] = convention
    prompt = float32_numpy(ptuning.prompt_table())
    tensors = {
        "prompt_embeddings": prompt * _peft_prompt_scale(backbone, convention)
    }
    head = model._head_variables()
    if head:
        tensors.update(_peft_head_tensors(model, head))

    config_text = json.dumps(config, indent=2)

    # All checked: now write, each file beside its target first.
    try:
        os.makedirs(directory, exist_ok=True)
        temporary = tempfile.mkdtemp(prefix=".peft-adapter-", dir=directory)
    except BaseException:
        _remove_created(missing)
        raise
    try:
        save_file(tensors, os.path.join(temporary, SAFETENSORS_NAME))
        with open(os.path.join(temporary, CONFIG_NAME), "w") as f:
            f.write(config_text)
        # The weights first: the config, which readers open first, comes
        # last. An older adapter's pickled weights would be stale.
        os.replace(
            os.path.join(temporary, SAFETENSORS_NAME),
            os.path.join(directory, SAFETENSORS_NAME),
        )
        os.replace(
            os.path.join(temporary, CONFIG_NAME),
            os.path.join(directory, CONFIG_NAME),
        )
        if os.path.exists(os.path.join(directory, BIN_NAME)):
            os.remove(os.path.join(directory, BIN_NAME))
    except BaseException:
        _remove_created(missing)
        raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)

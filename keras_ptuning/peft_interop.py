"""Reading and writing HuggingFace PEFT P-tuning adapters.

A PEFT P-tuning adapter is a directory with `adapter_config.json`
(`peft_type: "P_TUNING"`) and `adapter_model.safetensors` (or `.bin`)
holding `prompt_embeddings`, the `(num_virtual_tokens, token_dim)` prompt
PEFT computes from its encoder when saving, plus for a `SEQ_CLS` adapter the
classifier head (`base_model.classifier.weight` / `.bias`, or `score.*`).
A `CAUSAL_LM` adapter holds the prompt only and maps to `PTuningCausalLM`.
PEFT only prepends virtual tokens: adapters interoperate for keras_ptuning
models in the default prepend placement; models with prompt slots
(`placeholder_id`) cannot be written as PEFT adapters, and PEFT adapters
load as prepend models.

The backbone must be the keras-hub port of the same HF checkpoint. Numbers
agree to within the ports' own differences (keras-hub's BERT uses the
tanh-approximate GELU where HF's uses the exact one).
"""

import json
import os

import keras_hub
import numpy as np

from keras_ptuning.adapter import AdapterMixin
from keras_ptuning.adapter import float32_numpy
from keras_ptuning.pooling import check_head_pooling
from keras_ptuning.pooling import hf_pooling
from keras_ptuning.prompt_encoder_config import PromptEncoderConfig
from keras_ptuning.ptuning_backbone import PTuningBackbone
from keras_ptuning.ptuning_causal_lm import PTuningCausalLM
from keras_ptuning.ptuning_next_token_lm import PTuningNextTokenLM
from keras_ptuning.ptuning_text_classifier import PTuningTextClassifier

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
HEAD_NAMES = ("classifier", "score")
ENCODER_FIELDS = (
    "num_virtual_tokens",
    "token_dim",
    "encoder_reparameterization_type",
    "encoder_hidden_size",
    "encoder_num_layers",
    "encoder_dropout",
)


def _read_tensors(directory):
    path = os.path.join(directory, SAFETENSORS_NAME)
    if os.path.isfile(path):
        from safetensors.numpy import load_file

        return load_file(path)
    path = os.path.join(directory, BIN_NAME)
    if os.path.isfile(path):
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise ValueError(
        f"`directory` holds neither {SAFETENSORS_NAME} nor {BIN_NAME}. "
        f"Received: directory={directory!r}"
    )


def _find_head(tensors):
    for suffix in HEAD_NAMES:
        weight = [k for k in tensors if k.endswith(f"{suffix}.weight")]
        bias = [k for k in tensors if k.endswith(f"{suffix}.bias")]
        if weight:
            head = {"kernel": tensors[weight[0]].T}
            head["bias"] = (
                tensors[bias[0]]
                if bias
                else np.zeros(tensors[weight[0]].shape[0], "float32")
            )
            return head
    return None


def load_peft_adapter(model_or_backbone, directory):
    """Loads a PEFT P-tuning adapter directory into a keras_ptuning model.

    Args:
        model_or_backbone: a `PTuningTextClassifier`, `PTuningCausalLM` or
            `PTuningBackbone` to load into, or a plain keras-hub backbone, for
            which a model is built from the adapter's config (`SEQ_CLS`: a
            `PTuningTextClassifier` with the head's number of classes;
            `CAUSAL_LM`: a `PTuningCausalLM`; otherwise a `PTuningBackbone`).
        directory: the adapter directory, as PEFT's `save_pretrained` writes
            it.

    Returns:
        The model, with the collapsed prompt (and head) loaded. PEFT keeps
        only the prompt's output, not its encoder, so the model runs on the
        prompt table (`prompt_source="table"`).
    """
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"`directory` has no {CONFIG_NAME}. Received: "
            f"directory={directory!r}"
        )
    with open(path) as f:
        config = json.load(f)
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
    tensors = _read_tensors(directory)
    if "prompt_embeddings" not in tensors:
        raise ValueError(
            f"The adapter in {directory!r} has no `prompt_embeddings`."
        )
    prompt_table = tensors["prompt_embeddings"].astype("float32")
    head = _find_head(tensors)
    model = model_or_backbone
    if isinstance(model, keras_hub.models.Backbone) and not isinstance(
        model, PTuningBackbone
    ):
        prompt_config = PromptEncoderConfig(
            **{k: config[k] for k in ENCODER_FIELDS if k in config}
        )
        task_type = config.get("task_type")
        if task_type == "SEQ_CLS" and head is not None:
            # The head was trained on what HF's model reads.
            ptuning = PTuningBackbone(model, prompt_config)
            model = PTuningTextClassifier(
                ptuning, head["kernel"].shape[1], pooling=hf_pooling(ptuning)
            )
        elif task_type == "CAUSAL_LM":
            model = PTuningCausalLM(model, prompt_config)
        else:
            model = PTuningBackbone(model, prompt_config)
    if not isinstance(model, AdapterMixin):
        raise TypeError(
            "`model_or_backbone` must be a keras_ptuning model or a keras-hub "
            f"backbone. Received: {type(model_or_backbone).__name__}"
        )
    wants_head = bool(model._head_variables())
    if head is not None and not wants_head:
        raise ValueError(
            f"The PEFT adapter in {directory!r} (task_type="
            f"{config.get('task_type')!r}) holds a classifier head, which a "
            f"{type(model).__name__} has no place for: load it into a "
            "PTuningTextClassifier."
        )
    if head is not None:
        check_head_pooling(
            model,
            hf_pooling(model.backbone),
            "model_or_backbone.pooling",
            f"the PEFT adapter in {directory!r}",
        )
    model.set_trained_weights(
        prompt_table,
        head if wants_head else None,
        source=f"the PEFT adapter in {directory!r}",
    )
    return model


def save_peft_adapter(model, directory, base_model_name_or_path=None):
    """Writes a model's prompt (and head) as a PEFT P-tuning adapter.

    `peft.PeftModel.from_pretrained(hf_model, directory)` loads it into the
    HF model of the same checkpoint. PEFT has no place for our encoder's
    weights or for prompts that are not prepended, so only the collapsed
    prompt and the classifier head are written.

    Args:
        model: a `PTuningTextClassifier`, `PTuningCausalLM`,
            `PTuningNextTokenLM` or `PTuningBackbone`.
        directory: where to write `adapter_config.json` and
            `adapter_model.safetensors` (created if needed).
        base_model_name_or_path: optional, recorded in the config as PEFT
            does.
    """
    from safetensors.numpy import save_file

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
    tensors = {"prompt_embeddings": float32_numpy(ptuning.prompt_table())}
    head = model._head_variables()
    if head:
        # PEFT's HF model reads HF's readout.
        check_head_pooling(
            model, hf_pooling(model.backbone), "model.pooling", "a PEFT adapter"
        )
        tensors["base_model.classifier.weight"] = np.ascontiguousarray(
            float32_numpy(head["kernel"]).T
        )
        tensors["base_model.classifier.bias"] = float32_numpy(head["bias"])
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, SAFETENSORS_NAME))
    with open(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2)

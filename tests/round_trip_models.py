"""The models of the round-trip matrix: every model kind in every prompt
state, each holding a prompt that a silently re-initialised encoder cannot
reproduce.

Kinds: `PTuningBackbone` (Llama: RoPE), `PTuningTextClassifier` (BERT),
`PTuningCausalLM` (GPT-2), `PTuningMaskedLM` (BERT with its LM head) and
`PTuningNextTokenLM` (Gemma: scaled embeddings).
States:

- `encoder`: the prompt encoder in use.
- `table`: a fresh model that loaded an adapter without the encoder, so
  it runs on the collapsed table while its own encoder is untrained.
- `peft_table`: the same through a PEFT adapter (prepend models only).
- `slots`: virtual tokens at placeholder slots (`placeholder_id=-1`).
- `multi_task`: two tasks (the masked LM has no multi-task mode).
"""

import os
import tempfile

import keras_hub
import numpy as np

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningMaskedLM
from keras_ptuning import PTuningNextTokenLM
from keras_ptuning import PTuningTextClassifier
from keras_ptuning import load_peft_adapter
from keras_ptuning import save_peft_adapter
from tests.backbones import FAMILIES

KINDS = ("backbone", "classifier", "causal_lm", "masked_lm", "next_token_lm")
STATES = ("encoder", "table", "peft_table", "slots", "multi_task")
# Combinations that do not exist, and why.
NOT_OFFERED = {
    # (kind, state): what the library's error says.
    ("masked_lm", "multi_task"): "task_names",
}
CASES = [(kind, state) for kind in KINDS for state in STATES]
OFFERED = [case for case in CASES if case not in NOT_OFFERED]
# Every offered case round-trips on every backend (`round_trip_matrix_test`)
# and is exported and served from TensorFlow (`export_test`). What differs
# between backends when a `.keras` file crosses them is per kind (its config
# and layers) and per state (its variables), not per pair: the chain
# (`cross_backend_save.py`) crosses ten cases, every kind in two states and
# every state in two kinds.
CROSSED_BACKENDS = [
    ("backbone", "multi_task"),
    ("classifier", "slots"),
    ("causal_lm", "peft_table"),
    ("masked_lm", "table"),
    ("next_token_lm", "encoder"),
    ("backbone", "encoder"),
    ("classifier", "multi_task"),
    ("causal_lm", "slots"),
    ("masked_lm", "peft_table"),
    ("next_token_lm", "table"),
]
TOLERANCE = 1e-5
CONFIG = PromptEncoderConfig(3, encoder_hidden_size=8)


def _build(kind, placeholder_id=None, task_names=None):
    if kind == "backbone":
        return PTuningBackbone(
            FAMILIES["llama"](),
            CONFIG,
            placeholder_id=placeholder_id,
            task_names=task_names,
        )
    if kind == "classifier":
        # HF's readout, so that the head crosses to PEFT and back (the
        # default, the mean, is refused there; saving_test, export_test).
        return PTuningTextClassifier(
            FAMILIES["bert"](),
            3,
            prompt_config=CONFIG,
            placeholder_id=placeholder_id,
            task_names=task_names,
            pooling="pooled",
        )
    if kind == "causal_lm":
        return PTuningCausalLM(
            FAMILIES["gpt2"](),
            prompt_config=CONFIG,
            placeholder_id=placeholder_id,
            task_names=task_names,
        )
    if kind == "next_token_lm":
        return PTuningNextTokenLM(
            FAMILIES["gemma"](),
            prompt_config=CONFIG,
            placeholder_id=placeholder_id,
            task_names=task_names,
        )
    # Passed on only when given, so that the library itself refuses it.
    multi_task = {} if task_names is None else {"task_names": task_names}
    return PTuningMaskedLM(
        _masked_lm(),
        CONFIG,
        verbalizer=[[5, 6], [7]],
        placeholder_id=placeholder_id,
        **multi_task,
    )


_MASKED_LM = []


def _masked_lm():
    # One masked LM (head weights) for every masked-LM model of the matrix,
    # so an adapter moves between them as between models of one checkpoint.
    if not _MASKED_LM:
        _MASKED_LM.append(keras_hub.models.BertMaskedLM(FAMILIES["bert"]()))
    return _MASKED_LM[0]


def build(kind, state):
    """The model of `kind` in `state`. The library raises for the
    `NOT_OFFERED` pairs."""
    if state == "slots":
        return _build(kind, placeholder_id=-1)
    if state == "multi_task":
        return _build(kind, task_names=["a", "b"])
    model = _build(kind)
    if state == "encoder":
        return model
    # A trained prompt moves into a fresh model whose encoder is untrained.
    fresh = _build(kind)
    with tempfile.TemporaryDirectory() as directory:
        if state == "table":
            path = os.path.join(directory, "a.adapter.h5")
            model.save_adapter(path)
            fresh.load_adapter(path)
        else:
            save_peft_adapter(model, directory)
            load_peft_adapter(fresh, directory)
    assert fresh._ptuning_backbone().prompt_source == "table"
    return fresh


def predictions(model, inputs):
    """The model's outputs on `inputs` as a dict of numpy arrays."""
    outputs = model.predict(inputs, verbose=0)
    if not isinstance(outputs, dict):
        outputs = {"output": outputs}
    return {name: np.asarray(value) for name, value in outputs.items()}


def assert_same_predictions(model, inputs, expected, atol=TOLERANCE):
    got = predictions(model, inputs)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=atol)


def prompt_state(model):
    """Where the prompt comes from, where it goes and its tasks."""
    ptuning = model._ptuning_backbone()
    return (
        ptuning.prompt_source,
        ptuning.placeholder_id,
        ptuning.task_names,
        ptuning.trainable_tasks,
        ptuning.prompt_config,
    )

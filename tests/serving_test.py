"""SavedModels that take raw text: the preprocessor and, for causal LMs,
greedy generation in the graph, served where only TensorFlow and
tensorflow_text's ops load."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PromptTemplate
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningMaskedLM
from keras_ptuning import PTuningNextTokenLM
from keras_ptuning import PTuningTextClassifier
from keras_ptuning import export_saved_model
from keras_ptuning.saving import export
from tests.backbones import _ROPE
from tests.backbones import FAMILIES
from tests.support import BACKEND
from tests.support import bert_tokenizer
from tests.support import byte_level_llama3_tokenizer
from tests.support import run_on_one_backend
from tests.support import run_tensorflow_only

# One string, then three of different lengths: empty, longer than every
# sequence length (truncated by the preprocessor) and short.
SHORT = "the movie was great"
LONG = "it was a bad film , the movie was terrible " * 3
BATCHES = [[SHORT], ["", LONG, "a good film"]]
GENERATE_MAX_LENGTH = 18
ENCODER_HIDDEN_SIZE = 7


def _decoder_and_tokenizer():
    tokenizer = byte_level_llama3_tokenizer([" the", " movie", " was"])
    backbone = keras_hub.models.Llama3Backbone(
        **{**_ROPE, "vocabulary_size": tokenizer.vocabulary_size()},
        tie_word_embeddings=True,
    )
    return backbone, tokenizer


def _models():
    """`{name: (model, inputs per batch as the model takes them)}`."""
    classifier = PTuningTextClassifier(
        FAMILIES["bert"](),
        3,
        prompt_config=PromptEncoderConfig(3),
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            bert_tokenizer(), sequence_length=10
        ),
    )
    cloze = PTuningMaskedLM(
        keras_hub.models.BertMaskedLM(FAMILIES["bert"]()),
        verbalizer={"negative": ["bad"], "positive": ["good", "great"]},
        preprocessor=PromptTemplate(
            "[P] {premise} [P] {hypothesis} ? it was [MASK] .",
            bert_tokenizer(),
            sequence_length=16,
        ),
    )
    multi_task = PTuningTextClassifier(
        FAMILIES["bert"](),
        2,
        prompt_config=PromptEncoderConfig(2),
        placeholder_id=-1,
        task_names=["a", "b"],
        preprocessor=PromptTemplate(
            "[P] {sentence} [P]", bert_tokenizer(), sequence_length=8
        ),
    )
    decoder, tokenizer = _decoder_and_tokenizer()
    next_token = PTuningNextTokenLM(
        decoder,
        preprocessor=PromptTemplate(
            "[P:2] {subject} was [P]",
            tokenizer,
            sequence_length=12,
            add_end_token=False,
        ),
    )
    decoder, tokenizer = _decoder_and_tokenizer()
    causal_lm = PTuningCausalLM(
        decoder,
        prompt_config=PromptEncoderConfig(
            3, encoder_hidden_size=ENCODER_HIDDEN_SIZE
        ),
        preprocessor=keras_hub.models.Llama3CausalLMPreprocessor(
            tokenizer, sequence_length=10
        ),
    )
    causal_lm.compile(sampler="greedy")
    return {
        "classifier": (classifier, [{"text": b} for b in BATCHES]),
        "cloze": (
            cloze,
            [{"premise": b, "hypothesis": b[::-1]} for b in BATCHES],
        ),
        "multi_task": (
            multi_task,
            [
                {"text": b, "task_id": np.arange(len(b), dtype="int32") % 2}
                for b in BATCHES
            ],
        ),
        "next_token": (next_token, [{"text": b} for b in BATCHES]),
        "causal_lm": (causal_lm, [{"text": b} for b in BATCHES]),
    }


def _keras_inputs(model, inputs):
    """The same inputs as `model.predict` takes them."""
    fields = getattr(model.preprocessor, "field_names", None)
    if "text" in inputs and fields:
        inputs = {fields[0]: inputs["text"], **inputs}
        del inputs["text"]
    if list(inputs) == ["text"]:
        return inputs["text"]
    return inputs


def _expected(model, inputs):
    outputs = model.predict(_keras_inputs(model, inputs), verbose=0)
    if isinstance(model, PTuningTextClassifier):
        logits = outputs
        probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(outputs))
    elif isinstance(model, PTuningMaskedLM) and model.activation is None:
        logits = outputs  # class logits, the default
        probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(outputs))
    elif isinstance(model, PTuningMaskedLM):
        logits, probabilities = np.log(outputs), outputs
    elif isinstance(model, PTuningNextTokenLM):
        logits = outputs
        probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(outputs))
    else:
        return {"logits": outputs}
    expected = {"logits": logits, "probabilities": probabilities}
    if not isinstance(model, PTuningNextTokenLM):
        expected["label"] = np.argmax(probabilities, -1)
    return expected


# A TensorFlow Serving stand-in: keras, keras_hub and keras_ptuning cannot
# be imported; tensorflow_text's kernels are loaded from its op libraries
# (importing the package would import Keras), as a model server links them.
TEXT_SERVER = r"""
import glob, importlib.util, json, os, sys
for blocked in ("keras", "keras_hub", "keras_ptuning"):
    sys.modules[blocked] = None
import numpy as np
import tensorflow as tf

text_ops = os.path.join(
    os.path.dirname(importlib.util.find_spec("tensorflow_text").origin),
    "python", "ops")
for library in sorted(glob.glob(os.path.join(text_ops, "*.so"))):
    tf.load_op_library(library)

def rest_inputs(body, signature):
    # TF Serving's REST "predict" body, row format: one object per example.
    rows = json.loads(body)["instances"]
    specs = signature.structured_input_signature[1]
    return {name: tf.constant([row[name] for row in rows], spec.dtype)
            for name, spec in specs.items()}

cases = json.loads(sys.argv[1])
results = {}
for name, case in cases.items():
    loaded = tf.saved_model.load(case["path"])
    result = results[name] = {"signatures": sorted(loaded.signatures)}
    serve = loaded.signatures["serving_default"]
    result["inputs"] = {
        k: spec.dtype.name
        for k, spec in serve.structured_input_signature[1].items()}
    result["variable_shapes"] = sorted(
        list(v.shape) for v in loaded.model_variables)
    result["shared_prefix"] = [
        list(v.shape) for v in getattr(loaded, "shared_prefix", [])]
    result["batches"] = []
    for body in case["requests"]:
        outputs = serve(**rest_inputs(body, serve))
        result["batches"].append(
            {k: v.numpy().tolist() for k, v in outputs.items()})
    if "generate" in loaded.signatures:
        generate = loaded.signatures["generate"]
        result["generated"] = [
            [s.decode("utf-8", "replace") for s in
             generate(prompts=tf.constant(prompts))["outputs"].numpy()]
            for prompts in case["prompts"]]
imported = sorted(
    m for m in sys.modules
    if m.startswith(("keras", "keras_hub", "keras_ptuning", "tensorflow_text"))
    and sys.modules[m] is not None)
for result in results.values():
    result["imported"] = imported
print(json.dumps(results))
"""


# TensorFlow exports every model. From JAX and PyTorch `export_saved_model`
# saves the model's `.keras` file and a TensorFlow child process loads and
# exports it: the graph traced from the file is the same whichever backend
# wrote it (the chain in `saving_test.py` carries files from JAX through
# PyTorch to TensorFlow with the same predictions), so they export one
# model through that child, the next-token LM (a decoder with prompt slots
# in its template); tracing the causal LM's generation loop is
# TensorFlow's work whoever saved it.
EXPORTED = (
    ["classifier", "cloze", "multi_task", "next_token", "causal_lm"]
    if BACKEND == "tensorflow"
    else ["next_token"]
)
ONLY_FROM_TENSORFLOW = run_on_one_backend(
    "tensorflow",
    "JAX and PyTorch export the next-token LM only; the graph TensorFlow "
    "traces from a .keras file is the same whichever backend wrote it",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`{name: (model, inputs, what the server returned)}` for every model
    of `_models()`, exported from this backend and served in one process
    that has TensorFlow alone."""
    directory = tmp_path_factory.mktemp("serving")
    models = {k: v for k, v in _models().items() if k in EXPORTED}
    cases = {}
    for name, (model, batches) in models.items():
        path = os.path.join(directory, name)
        generates = isinstance(model, PTuningCausalLM)
        export_saved_model(
            model,
            path,
            include_preprocessing=True,
            max_length=GENERATE_MAX_LENGTH if generates else None,
        )
        rows = [
            [
                dict(zip(b, map(_json_value, values)))
                for values in zip(*b.values())
            ]
            for b in batches
        ]
        cases[name] = {
            "path": path,
            "requests": [json.dumps({"instances": r}) for r in rows],
            "prompts": [b["text"] for b in batches]
            if isinstance(model, PTuningCausalLM)
            else [],
        }
    results = run_tensorflow_only(TEXT_SERVER, cases)
    return {k: (m, b, results[k]) for k, (m, b) in models.items()}


def _json_value(value):
    return value.item() if isinstance(value, np.generic) else value


@pytest.mark.slow  # exports and a TensorFlow-only process
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name, marks=() if name in EXPORTED else ONLY_FROM_TENSORFLOW
        )
        for name in [
            "classifier",
            "cloze",
            "multi_task",
            "next_token",
            "causal_lm",
        ]
    ],
)
def test_text_signature_serves_what_predict_returns(name, served):
    model, batches, result = served[name]
    assert result["imported"] == []
    signatures = ["serve_token_ids", "serving_default"]
    if name == "causal_lm":
        signatures.append("generate")
    assert result["signatures"] == sorted(signatures)
    names = {
        "cloze": {"premise": "string", "hypothesis": "string"},
        "multi_task": {"text": "string", "task_id": "int32"},
    }
    assert result["inputs"] == names.get(name, {"text": "string"})
    for inputs, outputs in zip(batches, result["batches"]):
        expected = _expected(model, inputs)
        assert sorted(outputs) == sorted(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(
                np.asarray(outputs[key]), value, atol=2e-5, rtol=1e-4
            )


@pytest.mark.slow  # exports and a TensorFlow-only process
@ONLY_FROM_TENSORFLOW
def test_generate_signature_is_greedy_generate_token_for_token(served):
    model, batches, result = served["causal_lm"]
    model.compile(sampler="greedy")
    for inputs, generated in zip(batches, result["generated"]):
        expected = model.generate(
            inputs["text"], max_length=GENERATE_MAX_LENGTH
        )
        assert generated == list(expected)
    # The virtual tokens' keys and values are saved for one row (the
    # cache's first segment), and the prompt table; the encoder is not.
    num_tokens = model.backbone.num_virtual_tokens
    assert result["shared_prefix"], result
    assert all(shape[0] == 1 for shape in result["shared_prefix"])
    shapes = result["variable_shapes"]
    assert [num_tokens, model.backbone.hidden_dim] in shapes
    # The encoder's hidden size, 7, is in no backbone weight's shape.
    assert not any(ENCODER_HIDDEN_SIZE in shape for shape in shapes)


def test_text_export_refuses_what_it_cannot_serve(tmp_path):
    decoder, tokenizer = _decoder_and_tokenizer()
    no_preprocessor = PTuningCausalLM(
        decoder, prompt_config=PromptEncoderConfig(2)
    )
    path = str(tmp_path / "out")
    with pytest.raises(ValueError, match="has none. Attach one"):
        export_saved_model(no_preprocessor, path, include_preprocessing=True)
    with pytest.raises(TypeError, match="include_preprocessing="):
        export_saved_model(no_preprocessor, path, include_preprocessing="yes")
    with pytest.raises(ValueError, match="max_length=5 for a PTuningCausalLM"):
        export_saved_model(no_preprocessor, path, max_length=5)
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer, sequence_length=8
    )
    lm = PTuningCausalLM(
        decoder, prompt_config=PromptEncoderConfig(2), preprocessor=preprocessor
    )
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"max_length={bad!r}"):
            export_saved_model(
                lm, path, include_preprocessing=True, max_length=bad
            )
    slots = PTuningCausalLM(
        FAMILIES["gpt2"](),
        prompt_config=PromptEncoderConfig(2),
        placeholder_id=-1,
    )
    slots.preprocessor = preprocessor
    with pytest.raises(ValueError, match="cannot write the placeholders"):
        export.check_text_export(slots, True, None)
    assert not os.path.exists(path)


@pytest.mark.slow  # traces a causal LM's text signatures
@run_on_one_backend("tensorflow", "fails the export in this process")
def test_failed_text_export_leaves_nothing_and_the_model_as_it_was(
    tmp_path, monkeypatch
):
    decoder, tokenizer = _decoder_and_tokenizer()
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer, sequence_length=8
    )
    lm = PTuningCausalLM(
        decoder, prompt_config=PromptEncoderConfig(2), preprocessor=preprocessor
    )
    lm.compile(sampler="top_k")
    before = lm.predict(["the movie"], verbose=0)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    # Fails while `generate` is traced (greedy), after the text signature.
    monkeypatch.setattr(lm, "generate_step", broken)
    with pytest.raises(RuntimeError, match="boom"):
        export_saved_model(
            lm, str(tmp_path / "out"), include_preprocessing=True
        )
    assert os.listdir(tmp_path) == []
    assert lm.backbone.prompt_source == "encoder"
    assert isinstance(lm.sampler, keras_hub.samplers.TopKSampler)
    np.testing.assert_array_equal(lm.predict(["the movie"], verbose=0), before)

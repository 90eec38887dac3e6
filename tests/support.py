"""Shared test support: inputs, references, tokenizers, one-backend tests
and child processes. Test modules import from here (and from
`tests.backbones`), never from one another."""

import io
import json
import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningMaskedLM
from keras_ptuning import PTuningNextTokenLM
from keras_ptuning import PTuningTextClassifier
from tests.backbones import VOCABULARY_SIZE
from tests.jax_settings import with_test_xla_flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.config.backend()
# The one skip reason CI accepts (see conftest.py): tests that run from a
# single backend's suite because they drive other backends themselves.
ONE_BACKEND_REASON = "runs on one backend"


def run_on_one_backend(backend, why):
    """Marks a test that runs from `backend`'s suite only."""
    return run_on_backends((backend,), why)


def run_on_backends(backends, why):
    """Marks a test that runs from the suites of `backends` (one or two)
    only."""
    scope = "" if len(backends) == 1 else " or two"
    return pytest.mark.skipif(
        BACKEND not in backends,
        reason=f"{ONE_BACKEND_REASON}{scope} ({', '.join(backends)}): {why}",
    )


def everywhere_or_on_tensorflow(cases, everywhere, why):
    """`cases` (values, or tuples of values) as pytest params: those in
    `everywhere` run from every backend's suite, the others from
    TensorFlow's only, for `why`."""
    tensorflow_only = run_on_one_backend("tensorflow", why)
    return [
        pytest.param(
            *(case if isinstance(case, tuple) else (case,)),
            marks=() if case in everywhere else tensorflow_only,
        )
        for case in cases
    ]


_RUN_EAGERLY = keras.Model.run_eagerly


def run_models_eagerly(monkeypatch=None):
    """Makes every Keras model run eagerly (`run_eagerly` reads True), for
    the test (with pytest's `monkeypatch`) or for the whole process."""
    always = property(lambda self: True, _RUN_EAGERLY.fset)
    if monkeypatch is None:
        keras.Model.run_eagerly = always
    else:
        monkeypatch.setattr(keras.Model, "run_eagerly", always)


def to_numpy(x, dtype=None):
    """A tensor or variable as a numpy array."""
    return np.asarray(ops.convert_to_numpy(x), dtype=dtype)


def run_python(args, backend=None, timeout=900, cwd=None, env=None):
    """Runs `python ARGS` (on `backend`), failing with the child's output
    tail; returns the completed process."""
    child_env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    if backend is not None:
        child_env["KERAS_BACKEND"] = backend
    child_env.update(env or {})
    if child_env.get("KERAS_BACKEND") == "jax":
        child_env = with_test_xla_flags(child_env)
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        env=child_env,
        cwd=cwd or REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"`python {' '.join(map(str, args))}` on {backend or BACKEND} "
            f"exited {result.returncode}.\n--- stdout tail ---\n"
            f"{result.stdout[-3000:]}\n--- stderr tail ---\n"
            f"{result.stderr[-6000:]}",
            pytrace=False,
        )
    return result


def make_inputs(input_names, batch_size=3, length=7, seed=0, padded=True):
    """Random token ids with right padding, as keras-hub preprocessors emit."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, VOCABULARY_SIZE, (batch_size, length))
    lengths = np.full((batch_size,), length)
    if padded:
        lengths = rng.integers(max(1, length // 2), length + 1, (batch_size,))
        lengths[0] = length
    padding_mask = np.arange(length)[None, :] < lengths[:, None]
    token_ids = np.where(padding_mask, token_ids, 0).astype("int32")
    inputs = {
        "token_ids": token_ids,
        "padding_mask": padding_mask.astype("int32"),
    }
    if "segment_ids" in input_names:
        inputs["segment_ids"] = np.zeros_like(token_ids)
    return inputs


def with_real_prompt(inputs, prompt_ids):
    """`inputs` with `prompt_ids` as real tokens in front of every row.

    The reference for virtual tokens whose embeddings equal those tokens'.
    """
    batch, n = len(inputs["token_ids"]), len(prompt_ids)
    fill = {"token_ids": np.tile(prompt_ids, (batch, 1)), "padding_mask": 1}
    extended = {}
    for name, value in inputs.items():
        value = np.asarray(value)
        front = np.broadcast_to(fill.get(name, 0), (batch, n))
        extended[name] = np.concatenate([front.astype(value.dtype), value], 1)
    return extended


def uncached_greedy(lm, ids, lengths, **inputs):
    """Greedy decoding by a full forward pass of `lm` per new token.

    Row r keeps its first `lengths[r]` ids of `ids` (its prompt) and is
    continued to `ids`' length; `inputs` go to every call (e.g. `task_id`).
    """
    lengths = np.asarray(lengths)
    buffer = ids.copy()
    for t in range(lengths.min(), buffer.shape[1]):
        logits = to_numpy(
            lm(
                {
                    "token_ids": buffer,
                    "padding_mask": np.ones_like(buffer),
                    **inputs,
                }
            )
        )
        next_token = logits[:, t - 1].argmax(-1)
        buffer[:, t] = np.where(t < lengths, buffer[:, t], next_token)
    return buffer


def backbone_weights(backbone):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in backbone.weights]


def make_identity_prompt(model, token_ids):
    """Sets the MLP encoder so its prompt equals the embeddings of token_ids."""
    encoder = model.prompt_encoder
    target = to_numpy(model.backbone.token_embedding(np.array(token_ids)))
    shift = (
        1.0 + 2.0 * np.abs(target).max()
    )  # keeps the ReLUs in their linear part
    eye = np.eye(target.shape[-1], dtype="float32")
    encoder.embedding.embeddings.assign(target)
    first, second = encoder.encoder_layers
    first.kernel.assign(eye)
    first.bias.assign(np.full_like(eye[0], shift))
    second.kernel.assign(eye)
    second.bias.assign(np.zeros_like(eye[0]))
    encoder.output_dense.kernel.assign(eye)
    encoder.output_dense.bias.assign(np.full_like(eye[0], -shift))
    return target


BERT_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was",
    "great", "good", "bad", "it", "?", ".", "un", "##believ", "##able",
    "terrible", "a", "film",
]  # fmt: skip
# "Ġthe" (id 1) is "the" after a space; "the" (id 2) starts a text.
GPT2_VOCAB = {
    "<|endoftext|>": 0, "Ġthe": 1, "the": 2, "Ġ": 3, "t": 4, "h": 5,
    "e": 6, "Ġt": 7, "Ġth": 8, "th": 9,
}  # fmt: skip
GPT2_MERGES = ["Ġ t", "Ġt h", "Ġth e", "t h", "th e"]


def bert_tokenizer():
    return keras_hub.tokenizers.BertTokenizer(
        vocabulary=BERT_VOCAB, lowercase=True
    )


def gpt2_tokenizer():
    return keras_hub.tokenizers.GPT2Tokenizer(
        vocabulary=GPT2_VOCAB, merges=GPT2_MERGES
    )


def sentencepiece_proto(sentences, vocab_size, **options):
    """A word-level SentencePiece model trained on `sentences` (ten times
    over), ids 0-3 for pad, unknown, start and end; `options` go to the
    trainer. Returns the serialized proto."""
    import sentencepiece

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 10),
        model_writer=proto,
        vocab_size=vocab_size,
        model_type="WORD",
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="<pad>",
        unk_piece="<unk>",
        minloglevel=2,
        **options,
    )
    return proto.getvalue()


def sentencepiece_tokenizer():
    proto = sentencepiece_proto(
        ["the movie was great", "it was bad", "good movie"],
        13,
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        user_defined_symbols="[MASK]",
    )
    return keras_hub.tokenizers.AlbertTokenizer(proto=proto)


# Runs in a fresh interpreter where keras, keras_hub and keras_ptuning cannot
# be imported (TensorFlow imports keras when it is installed, so they are
# blocked outright): what TensorFlow Serving would see.
TF_ONLY_CHECK = """
import json, sys
for blocked in ("keras", "keras_hub", "keras_ptuning"):
    sys.modules[blocked] = None
import numpy as np
import tensorflow as tf
all_results = {}
for path, cases in json.loads(sys.argv[1]).items():
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["serving_default"]
    results = {"inputs": sorted(served.structured_input_signature[1]),
               "outputs": sorted(served.structured_outputs),
               "variable_shapes": sorted(
                   list(v.shape) for v in loaded.model_variables)}
    for name in cases:
        data = np.load(name)
        inputs = {k[3:]: tf.constant(data[k])
                  for k in data.files if k.startswith("in_")}
        outputs = served(**inputs)
        for k in data.files:
            if k.startswith("out_"):
                got = outputs[k[4:]].numpy()
                results[name + ":" + k] = float(np.abs(got - data[k]).max())
    all_results[path] = results
imported = sorted(
    m for m in sys.modules
    if m.startswith(("keras", "keras_hub", "keras_ptuning"))
    and sys.modules[m] is not None
)
for results in all_results.values():
    results["imported"] = imported
print(json.dumps(all_results))
"""


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def expected_served_outputs(model, inputs):
    outputs = model.predict(inputs, verbose=0)
    if isinstance(model, PTuningTextClassifier):
        return {"logits": outputs, "probabilities": _softmax(outputs)}
    if isinstance(model, PTuningMaskedLM):
        if model.activation is None:  # class logits, the default
            return {"logits": outputs, "probabilities": _softmax(outputs)}
        return {"logits": np.log(outputs), "probabilities": outputs}
    if isinstance(model, PTuningNextTokenLM):
        return {"logits": outputs, "probabilities": _softmax(outputs)}
    if isinstance(model, PTuningCausalLM):
        return {"logits": outputs}
    if isinstance(outputs, dict):
        return outputs
    return {"sequence_output": outputs}


def served_inputs(model, batch, length, seed):
    """Random inputs; with prompt slots, the placeholders at random real
    positions of every row; for a masked LM, a mask position per row."""
    inputs = make_inputs(model_input_names(model), batch, length, seed=seed)
    ptuning = model._ptuning_backbone()
    rng = np.random.default_rng(seed)
    real = inputs["padding_mask"].sum(1)
    if ptuning.uses_slots:
        for row in range(batch):
            slots = rng.choice(real[row], ptuning.num_virtual_tokens, False)
            inputs["token_ids"][row, slots] = ptuning.placeholder_id
    if "task_id" in model_input_names(model):
        num_tasks = len(ptuning.task_names)
        inputs["task_id"] = rng.integers(0, num_tasks, batch)
    if "mask_positions" in model_input_names(model):
        inputs["mask_positions"] = rng.integers(0, real[:, None])
    return inputs


def check_exports_in_tensorflow_only_process(exports, tmp_path):
    """Serves each `(model, path)` SavedModel in one TensorFlow-only process
    on two batches; returns, per pair, what it saw: `inputs` and `outputs`
    (names), `variable_shapes`, `imported` (keras modules, which must be
    none) and the largest difference from the model per batch and output."""
    cases = {}
    for j, (model, path) in enumerate(exports):
        cases[path] = []
        for i, (batch, length) in enumerate([(2, 6), (5, 11)]):
            inputs = served_inputs(model, batch, length, seed=i)
            expected = expected_served_outputs(model, inputs)
            name = str(tmp_path / f"model{j}_case{i}.npz")
            np.savez(
                name,
                **{f"in_{k}": v.astype("int32") for k, v in inputs.items()},
                **{f"out_{k}": np.asarray(v) for k, v in expected.items()},
            )
            cases[path].append(name)
    results = run_tensorflow_only(TF_ONLY_CHECK, cases)
    return [results[path] for _, path in exports]


def run_tensorflow_only(script, argument):
    """Runs `python -c script JSON` (`argument` as JSON) with no Keras
    backend set; returns what its last line of output holds (JSON)."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(argument)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def model_input_names(model):
    if isinstance(model, PTuningBackbone):
        return model.input_names
    return model.model_input_names


def byte_level_llama3_tokenizer(words):
    """A Llama 3 (SmolLM2-style) byte-level tokenizer: every byte, plus
    each of `words` (spaces as written) as one token."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    byte_chars = list(bytes_to_unicode()[1])
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocabulary = {token: i for i, token in enumerate(specials)}
    for char in byte_chars:
        vocabulary.setdefault(char, len(vocabulary))
    merges = []
    for word in words:
        word = word.replace(" ", "Ġ")
        for end in range(2, len(word) + 1):
            merge = f"{word[: end - 1]} {word[end - 1]}"
            if merge not in merges:  # Words may share a prefix.
                merges.append(merge)
            vocabulary.setdefault(word[:end], len(vocabulary))
    return keras_hub.models.Llama3Tokenizer(
        vocabulary=vocabulary,
        merges=merges,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        misc_special_tokens={"<|endoftext|>"},
    )

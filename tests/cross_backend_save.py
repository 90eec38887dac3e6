"""One link of the cross-backend `.keras` chain in `saving_test.py`.

Step 0 builds, trains and saves a classifier (and its adapter, its preset
and its prompt-only preset over a base preset of its backbone) with its
predictions, a cloze model with prompt slots and its `PromptTemplate`, a
causal-LM classifier with LoRA, an LSTM prompt started from text and its
`ChoiceTemplate`, and the round-trip matrix's models that cross backends
(`CROSSED_BACKENDS` in `tests/round_trip_models.py`); each later step
loads the previous step's files on its own backend, checks the
predictions (the cloze and causal-LM classifiers from raw text, through
their restored templates), loads the adapter into a fresh model on the
same backbone and checks it too, and saves again (all but the last step).
Arguments: DIRECTORY STEP LAST_STEP.
"""

import os
import sys

import keras
import keras_hub
import numpy as np

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PromptTemplate
from keras_ptuning import PTuningMaskedLM
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES
from tests.choice_models import FIELDS
from tests.choice_models import trained_lora_classifier
from tests.round_trip_models import CROSSED_BACKENDS
from tests.round_trip_models import build
from tests.support import bert_tokenizer
from tests.support import make_inputs
from tests.support import run_models_eagerly
from tests.support import served_inputs

SENTENCES = {"sentence": ["the movie was great", "a terrible film"]}


def _outputs(model, inputs):
    outputs = model.predict(inputs, verbose=0)
    return outputs if isinstance(outputs, dict) else {"output": outputs}


def _chain_file(kind, state, step):
    return os.path.join(directory, f"{kind}_{state}_{step}.keras")


directory, step, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
backend = keras.config.backend()
if backend == "tensorflow":
    # As in the suite (conftest.py): tracing a `tf.function` for each of
    # ~20 tiny models costs more than the one batch each predicts.
    run_models_eagerly()
inputs = make_inputs(["token_ids", "padding_mask", "segment_ids"], length=6)
if step == 0:
    keras.utils.set_random_seed(7)
    model = PTuningTextClassifier(
        FAMILIES["bert"](),
        2,
        prompt_config=PromptEncoderConfig(3, encoder_hidden_size=8),
    )
    model.fit(inputs, np.array([0, 1, 1]), epochs=2, verbose=0)
    np.save(
        os.path.join(directory, "expected.npy"),
        model.predict(inputs, verbose=0),
    )
    model.save_adapter(os.path.join(directory, "classifier.adapter.h5"))
    # The base preset a prompt-only preset of the classifier refers to.
    model.backbone.backbone.save_to_preset(os.path.join(directory, "base"))
    cloze = PTuningMaskedLM(
        keras_hub.models.BertMaskedLM(FAMILIES["bert"]()),
        verbalizer={"negative": ["bad"], "positive": ["good", "great"]},
        preprocessor=PromptTemplate(
            "{sentence} [P:2] it was [MASK] .",
            bert_tokenizer(),
            sequence_length=12,
        ),
    )
    cloze.fit(SENTENCES, np.array([1, 0]), epochs=2, verbose=0)
    np.save(
        os.path.join(directory, "cloze_expected.npy"),
        cloze.predict(SENTENCES, verbose=0),
    )
    choices = trained_lora_classifier()
    np.save(
        os.path.join(directory, "choices_expected.npy"),
        choices.predict(FIELDS, verbose=0),
    )
else:
    model = keras.saving.load_model(
        os.path.join(directory, f"model_{step - 1}.keras")
    )
    expected = np.load(os.path.join(directory, "expected.npy"))
    np.testing.assert_allclose(
        model.predict(inputs, verbose=0), expected, atol=1e-5
    )
    assert type(model).__name__ == "PTuningTextClassifier"
    # Saved from JAX, where jit_compile="auto" means XLA; on PyTorch and on a
    # TensorFlow CPU "auto" means no compilation (not torch.compile / XLA).
    assert model.get_compile_config()["jit_compile"] == "auto"
    assert model.jit_compile is False, model.jit_compile
    # The adapter alone, into a fresh model on the same (loaded) backbone.
    fresh = PTuningTextClassifier(
        model.backbone.backbone, 2, prompt_config=model.backbone.prompt_config
    )
    fresh.load_adapter(os.path.join(directory, "classifier.adapter.h5"))
    np.testing.assert_allclose(
        fresh.predict(inputs, verbose=0), expected, atol=1e-5
    )
    # The whole preset and the prompt-only one the last step wrote.
    for preset in ("preset", "prompt_preset"):
        loaded = PTuningTextClassifier.from_preset(
            os.path.join(directory, f"{preset}_{step - 1}")
        )
        np.testing.assert_allclose(
            loaded.predict(inputs, verbose=0), expected, atol=1e-5
        )
    cloze = keras.saving.load_model(
        os.path.join(directory, f"cloze_{step - 1}.keras")
    )
    assert cloze.backbone.placeholder_id == -1
    np.testing.assert_allclose(
        cloze.predict(SENTENCES, verbose=0),
        np.load(os.path.join(directory, "cloze_expected.npy")),
        atol=1e-5,
    )
    choices = keras.saving.load_model(
        os.path.join(directory, f"choices_{step - 1}.keras")
    )
    assert choices.backbone.lora_rank == 2
    np.testing.assert_allclose(
        choices.predict(FIELDS, verbose=0),
        np.load(os.path.join(directory, "choices_expected.npy")),
        atol=1e-5,
    )
for kind, state in CROSSED_BACKENDS:
    name = os.path.join(directory, f"{kind}_{state}")
    if step == 0:
        chained = build(kind, state)
        inputs_ = served_inputs(chained, 3, 6, seed=0)
        np.savez(name + "_inputs.npz", **inputs_)
        np.savez(name + "_expected.npz", **_outputs(chained, inputs_))
        source = chained._ptuning_backbone().prompt_source
        with open(name + "_source.txt", "w") as f:
            f.write(source)
    else:
        chained = keras.saving.load_model(_chain_file(kind, state, step - 1))
        inputs_ = dict(np.load(name + "_inputs.npz"))
        expected_ = np.load(name + "_expected.npz")
        with open(name + "_source.txt") as f:
            assert chained._ptuning_backbone().prompt_source == f.read()
        for key, value in _outputs(chained, inputs_).items():
            np.testing.assert_allclose(
                value, expected_[key], atol=1e-4, err_msg=f"{kind} {state}"
            )
    if step < last:
        chained.save(_chain_file(kind, state, step))
if step < last:
    model.save(os.path.join(directory, f"model_{step}.keras"))
    model.save_to_preset(os.path.join(directory, f"preset_{step}"))
    model.save_to_preset(
        os.path.join(directory, f"prompt_preset_{step}"),
        base_preset=os.path.join(directory, "base"),
    )
    cloze.save(os.path.join(directory, f"cloze_{step}.keras"))
    choices.save(os.path.join(directory, f"choices_{step}.keras"))
print(f"ok {backend}")

import json
import os
import subprocess
import sys

import keras_hub
import numpy as np
import pytest

import keras_ptuning
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningMaskedLM
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES
from tests.support import make_inputs

# Runs in a fresh interpreter where keras, keras_hub and keras_ptuning cannot
# be imported (TensorFlow imports keras when it is installed, so they are
# blocked outright): what TensorFlow Serving would see.
TF_ONLY_CHECK = """
import json, sys
for blocked in ("keras", "keras_hub", "keras_ptuning"):
    sys.modules[blocked] = None
import numpy as np
import tensorflow as tf
path, cases = sys.argv[1], json.loads(sys.argv[2])
served = tf.saved_model.load(path).signatures["serving_default"]
results = {"inputs": sorted(served.structured_input_signature[1]),
           "outputs": sorted(served.structured_outputs)}
for name in cases:
    data = np.load(name)
    inputs = {
        k[3:]: tf.constant(data[k]) for k in data.files if k.startswith("in_")
    }
    outputs = served(**inputs)
    for k in data.files:
        if k.startswith("out_"):
            got = outputs[k[4:]].numpy()
            results[name + ":" + k] = float(np.abs(got - data[k]).max())
results["imported"] = sorted(
    m for m in sys.modules
    if m.startswith(("keras", "keras_hub", "keras_ptuning"))
    and sys.modules[m] is not None
)
print(json.dumps(results))
"""


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _expected_outputs(model, inputs):
    outputs = model.predict(inputs, verbose=0)
    if isinstance(model, PTuningTextClassifier):
        return {"logits": outputs, "probabilities": _softmax(outputs)}
    if isinstance(model, PTuningMaskedLM):
        return {"logits": np.log(outputs), "probabilities": outputs}
    if isinstance(model, PTuningCausalLM):
        return {"logits": outputs}
    if isinstance(outputs, dict):
        return outputs
    return {"sequence_output": outputs}


def _inputs(model, batch, length, seed):
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


def _check_in_tensorflow_only_process(model, path, tmp_path):
    cases = []
    for i, (batch, length) in enumerate([(2, 6), (5, 11)]):
        inputs = _inputs(model, batch, length, seed=i)
        expected = _expected_outputs(model, inputs)
        name = str(tmp_path / f"case{i}.npz")
        np.savez(
            name,
            **{f"in_{k}": v.astype("int32") for k, v in inputs.items()},
            **{f"out_{k}": np.asarray(v) for k, v in expected.items()},
        )
        cases.append(name)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", TF_ONLY_CHECK, path, json.dumps(cases)],
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


def _models():
    return {
        "classifier_bert": lambda: PTuningTextClassifier(
            FAMILIES["bert"](), 3, PromptEncoderConfig(4)
        ),
        "causal_lm_gpt2": lambda: PTuningCausalLM(
            FAMILIES["gpt2"](),
            PromptEncoderConfig(4, encoder_reparameterization_type="LSTM"),
        ),
        "backbone_distil_bert": lambda: PTuningBackbone(
            FAMILIES["distil_bert"](), PromptEncoderConfig(4)
        ),
        "classifier_slots_roberta": lambda: PTuningTextClassifier(
            FAMILIES["roberta"](), 2, PromptEncoderConfig(3), placeholder_id=-1
        ),
        "classifier_multi_task_gpt2": lambda: PTuningTextClassifier(
            FAMILIES["gpt2"](), 2, PromptEncoderConfig(3), task_names=["a", "b"]
        ),
        "masked_lm_slots_bert": lambda: PTuningMaskedLM(
            keras_hub.models.BertMaskedLM(FAMILIES["bert"]()),
            PromptEncoderConfig(3),
            verbalizer=[[5, 6], [7]],
            placeholder_id=-1,
        ),
    }


@pytest.mark.parametrize("kind", sorted(_models()))
def test_export_is_served_by_tensorflow_alone(kind, tmp_path):
    model = _models()[kind]()
    path = str(tmp_path / "exported")
    table_before = np.asarray(model_table(model))
    keras_ptuning.export_saved_model(model, path)
    result = _check_in_tensorflow_only_process(model, path, tmp_path)
    assert result.pop("imported") == []
    assert result.pop("inputs") == sorted(model_input_names(model))
    outputs = result.pop("outputs")
    if kind.startswith(("classifier", "masked_lm")):
        assert outputs == ["logits", "probabilities"]
    elif kind.startswith("causal_lm"):
        assert outputs == ["logits"]
    # Two batch sizes and sequence lengths, each output checked.
    assert len(result) == 2 * len(outputs)
    for name, difference in result.items():
        assert difference < 1e-4, name
    # The model is unchanged: still trains through its encoder.
    ptuning = model._ptuning_backbone()
    assert ptuning.prompt_source == "encoder"
    np.testing.assert_array_equal(np.asarray(model_table(model)), table_before)


def model_table(model):
    from keras import ops

    ptuning = model._ptuning_backbone()
    return ops.convert_to_numpy(ptuning.prompt_injection.prompt_table)


def test_export_holds_the_prompt_table_not_the_encoder(tmp_path):
    # A hidden size of 7 gives encoder shapes no backbone weight has.
    model = PTuningTextClassifier(
        FAMILIES["bert"](), 3, PromptEncoderConfig(4, encoder_hidden_size=7)
    )
    path = str(tmp_path / "exported")
    keras_ptuning.export_saved_model(model, path)
    script = (
        "import sys, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "print(sorted(tuple(v.shape) for v in m.model_variables))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, path], capture_output=True, text=True
    )
    shapes = out.stdout.strip().splitlines()[-1]
    assert "(4, 16)" in shapes  # the prompt table
    assert "7" not in shapes


def test_existing_path_and_bad_arguments(tmp_path):
    model = _models()["backbone_distil_bert"]()
    path = tmp_path / "exported"
    path.mkdir()
    (path / "keep.txt").write_text("old")
    with pytest.raises(ValueError, match="overwrite=True"):
        keras_ptuning.export_saved_model(model, str(path))
    assert (path / "keep.txt").read_text() == "old"
    keras_ptuning.export_saved_model(model, str(path), overwrite=True)
    assert (path / "saved_model.pb").exists()
    assert not (path / "keep.txt").exists()
    with pytest.raises(TypeError, match="PTuningTextClassifier"):
        keras_ptuning.export_saved_model(
            FAMILIES["bert"](), str(tmp_path / "x")
        )
    assert not (tmp_path / "x").exists()


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    from keras_ptuning import export

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(export, "write_saved_model", broken)
    monkeypatch.setattr(export, "_export_in_tensorflow_process", broken)
    model = _models()["backbone_distil_bert"]()
    with pytest.raises(RuntimeError, match="boom"):
        export.export_saved_model(model, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []

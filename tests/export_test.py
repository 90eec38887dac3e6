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
from tests.support import check_in_tensorflow_only_process
from tests.support import model_input_names


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
    result = check_in_tensorflow_only_process(model, path, tmp_path)
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

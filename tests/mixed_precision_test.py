import keras
import numpy as np

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES
from tests.support import backbone_weights
from tests.support import make_inputs
from tests.support import to_numpy


def _float32_twin(model, family):
    """The same classifier (backbone, prompt encoder, head) in float32."""
    keras.config.set_dtype_policy("float32")
    twin = PTuningTextClassifier(
        FAMILIES[family](), 2, prompt_config=PromptEncoderConfig(3)
    )
    keras.config.set_dtype_policy("mixed_bfloat16")
    for a, b in zip(twin.weights, model.weights):
        assert a.path == b.path
        a.assign(to_numpy(b, "float32"))
    return twin


def test_fit_under_mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    for family in ("bert", "llama"):
        backbone = FAMILIES[family]()
        model = PTuningTextClassifier(
            backbone, 2, prompt_config=PromptEncoderConfig(3)
        )
        encoder = model.backbone.prompt_encoder
        assert backbone.compute_dtype == "bfloat16"
        assert encoder.weights and all(
            v.dtype == "float32" for v in encoder.weights
        )
        frozen = backbone_weights(backbone)
        inputs = make_inputs(model.backbone.input_names, batch_size=4, length=5)
        # The bfloat16 model computes what its float32 twin does, to
        # bfloat16's precision (8 bits of mantissa, a few layers deep).
        twin = _float32_twin(model, family)
        expected = twin.predict(inputs, verbose=0)
        logits = model.predict(inputs, verbose=0)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(logits, expected, atol=0.05 * scale)
        assert not np.allclose(logits, expected, atol=1e-6 * scale)
        history = model.fit(inputs, np.array([0, 1, 0, 1]), epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        twin.fit(inputs, np.array([0, 1, 0, 1]), epochs=2, verbose=0)
        np.testing.assert_allclose(
            history.history["loss"][0],
            twin.history.history["loss"][0],
            rtol=0.05,
        )
        assert all(v.dtype == "float32" for v in encoder.weights)
        for before, after in zip(frozen, backbone_weights(backbone)):
            np.testing.assert_array_equal(before, after)

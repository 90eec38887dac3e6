"""What every P-tuning model checks on construction."""

import keras_hub
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningCausalLM
from keras_ptuning import PTuningCausalLMClassifier
from keras_ptuning import PTuningMaskedLM
from keras_ptuning import PTuningNextTokenLM
from keras_ptuning import PTuningTextClassifier
from tests.backbones import FAMILIES

CONFIG = PromptEncoderConfig(2)
BUILDERS = {
    "backbone": lambda **kw: PTuningBackbone(FAMILIES["bert"](), CONFIG, **kw),
    "classifier": lambda **kw: PTuningTextClassifier(
        FAMILIES["bert"](), 2, prompt_config=CONFIG, **kw
    ),
    "causal_lm": lambda **kw: PTuningCausalLM(
        FAMILIES["gpt2"](), prompt_config=CONFIG, **kw
    ),
    "next_token_lm": lambda **kw: PTuningNextTokenLM(
        FAMILIES["gpt2"](), prompt_config=CONFIG, **kw
    ),
    "masked_lm": lambda **kw: PTuningMaskedLM(
        keras_hub.models.BertMaskedLM(FAMILIES["bert"]()), CONFIG, **kw
    ),
    "causal_lm_classifier": lambda **kw: PTuningCausalLMClassifier(
        FAMILIES["gpt2"](), prompt_config=CONFIG, **kw
    ),
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_unknown_keyword_arguments_are_refused(kind):
    """Keras' functional `Model` drops unknown keywords silently: a typo
    (or `task_names` on a task without multi-task prompts) did nothing."""
    with pytest.raises((TypeError, ValueError), match="pooling_mode"):
        BUILDERS[kind](pooling_mode="last")
    model = BUILDERS[kind](name=f"my_{kind}")
    assert model.name == f"my_{kind}"


def _preprocessors():
    from tests.support import bert_tokenizer
    from tests.support import gpt2_tokenizer

    return {
        PTuningTextClassifier: keras_hub.models.BertTextClassifierPreprocessor(
            bert_tokenizer(), sequence_length=8
        ),
        PTuningCausalLM: keras_hub.models.GPT2CausalLMPreprocessor(
            gpt2_tokenizer(), sequence_length=8
        ),
    }


@pytest.mark.parametrize("kind", ["classifier", "causal_lm"])
def test_keras_hub_argument_order_and_the_old_one_with_a_warning(kind):
    """`preprocessor` comes right after the backbone (after `num_classes`
    for a classifier), as in keras-hub; the old order (`prompt_config`
    first) still builds the same model, with a `DeprecationWarning`."""
    import warnings

    cls = PTuningTextClassifier if kind == "classifier" else PTuningCausalLM
    preprocessor = _preprocessors()[cls]
    family = "bert" if kind == "classifier" else "gpt2"
    leading = (2,) if kind == "classifier" else ()

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        model = cls(FAMILIES[family](), *leading, preprocessor, CONFIG)
    assert model.preprocessor is preprocessor
    assert model.backbone.num_virtual_tokens == CONFIG.num_virtual_tokens

    with pytest.warns(DeprecationWarning, match="preprocessor` before"):
        old = cls(FAMILIES[family](), *leading, CONFIG, preprocessor)
    assert old.preprocessor is preprocessor
    assert old.backbone.num_virtual_tokens == CONFIG.num_virtual_tokens
    with pytest.warns(DeprecationWarning, match="preprocessor` before"):
        old = cls(
            FAMILIES[family](), *leading, PromptEncoderConfig(3).to_dict()
        )
    assert old.preprocessor is None
    assert old.backbone.num_virtual_tokens == 3

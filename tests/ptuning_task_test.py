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
        FAMILIES["bert"](), 2, CONFIG, **kw
    ),
    "causal_lm": lambda **kw: PTuningCausalLM(FAMILIES["gpt2"](), CONFIG, **kw),
    "next_token_lm": lambda **kw: PTuningNextTokenLM(
        FAMILIES["gpt2"](), CONFIG, **kw
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

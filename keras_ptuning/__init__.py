"""keras-ptuning: P-tuning for frozen keras-hub backbones, any backend."""

# First, before anything loads TensorFlow (keras-hub does on every backend).
from keras_ptuning import quiet_startup  # noqa: F401

# isort: split

from keras_ptuning import distribution
from keras_ptuning.backbones.ptuning_backbone import PTuningBackbone
from keras_ptuning.compat import keras_hub_fixes
from keras_ptuning.layers.multi_task_prompt_encoder import (
    MultiTaskPromptEncoder,
)
from keras_ptuning.layers.pooling import hf_pooling
from keras_ptuning.layers.prompt_encoder import PromptEncoder
from keras_ptuning.layers.prompt_encoder_config import PromptEncoderConfig
from keras_ptuning.layers.task_heads import TaskHeads
from keras_ptuning.models.ptuning_causal_lm import PTuningCausalLM
from keras_ptuning.models.ptuning_causal_lm_classifier import (
    PTuningCausalLMClassifier,
)
from keras_ptuning.models.ptuning_masked_lm import PTuningMaskedLM
from keras_ptuning.models.ptuning_next_token_lm import PTuningNextTokenLM
from keras_ptuning.models.ptuning_text_classifier import PTuningTextClassifier
from keras_ptuning.placement.prompt_injection import PromptInjection
from keras_ptuning.placement.prompt_placement import DEFAULT_PLACEHOLDER_ID
from keras_ptuning.preprocessing.choice_template import ChoiceTemplate
from keras_ptuning.preprocessing.length_bucketing import LengthBucketedDataset
from keras_ptuning.preprocessing.prompt_template import PromptTemplate
from keras_ptuning.preprocessing.verbalizer import Verbalizer
from keras_ptuning.saving.export import export_saved_model
from keras_ptuning.saving.peft_interop import load_peft_adapter
from keras_ptuning.saving.peft_interop import save_peft_adapter
from keras_ptuning.version import __version__

keras_hub_fixes.apply()

__all__ = [
    "ChoiceTemplate",
    "DEFAULT_PLACEHOLDER_ID",
    "LengthBucketedDataset",
    "MultiTaskPromptEncoder",
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptInjection",
    "PromptTemplate",
    "PTuningBackbone",
    "PTuningCausalLM",
    "PTuningCausalLMClassifier",
    "PTuningMaskedLM",
    "PTuningNextTokenLM",
    "PTuningTextClassifier",
    "TaskHeads",
    "Verbalizer",
    "__version__",
    "distribution",
    "export_saved_model",
    "hf_pooling",
    "load_peft_adapter",
    "save_peft_adapter",
]

"""The causal-LM classifier's test data and models: two fields through a
template with text-started slots, label words or continuations as the
choices, a Gemma-style SentencePiece tokenizer that holds every word.
Shared by `ptuning_causal_lm_classifier_test.py` and the cross-backend
chain (`cross_backend_save.py`)."""

import functools

import keras
import keras_hub
import numpy as np

from keras_ptuning import ChoiceTemplate
from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PromptTemplate
from keras_ptuning import PTuningCausalLMClassifier
from tests.backbones import fresh_backbone
from tests.support import sentencepiece_proto

TEMPLATE = '{premise} [P:"Question:"] {hypothesis} [P:"Answer:"]'
FIELDS = {
    "premise": ["a man plays the guitar", "the cat sat", "it rained"],
    "hypothesis": ["a man", "the sun rose so", "the cat sat because"],
}
LABELS = np.array([0, 1, 1])


def choice_tokenizer():
    """Gemma-style SentencePiece (no dummy prefix): 26 word pieces. A new
    tokenizer each time: a template's packing function owns the
    SentencePiece resource it first traced, so templates do not share."""
    return keras_hub.tokenizers.GemmaTokenizer(proto=_proto())


@functools.cache
def _proto():
    return sentencepiece_proto(
        [
            "a man plays the guitar Question: Answer: yes no",
            "the cat sat because it rained so the sun rose",
            "yes no maybe true false",
        ],
        26,
        bos_piece="<bos>",
        eos_piece="<eos>",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
    )


def choice_template(text_slots="prompt", template=TEMPLATE, length=16):
    """`template` over a new `choice_tokenizer()`, without an end token
    (the choices follow it)."""
    return PromptTemplate(
        template,
        choice_tokenizer(),
        sequence_length=length,
        add_end_token=False,
        text_slots=text_slots,
    )


# One-token label words share a row; per-example, several-token choices
# get one row each.
CHOICES = {
    "label_words": [" yes", " no"],
    "continuations": [" {hypothesis}", " the cat sat"],
}


def trained_lora_classifier():
    """Gemma with LoRA (rank 2) under an LSTM prompt started from text,
    trained for two epochs on `FIELDS`: the model of the causal-LM
    classifier's round trips, and of the cross-backend chain."""
    model = PTuningCausalLMClassifier(
        fresh_backbone("gemma"),
        preprocessor=ChoiceTemplate(choice_template(), CHOICES["label_words"]),
        prompt_config=PromptEncoderConfig(
            2, encoder_reparameterization_type="LSTM", prompt_init="text"
        ),
    )
    model.backbone.enable_lora(2)
    model.compile(optimizer=keras.optimizers.Adam(3e-2))
    model.fit(FIELDS, LABELS, epochs=2, batch_size=3, verbose=0)
    return model

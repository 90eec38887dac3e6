from unittest import mock

import keras
import keras_hub
import numpy as np
import pytest
from keras_hub.src.utils import pipeline_model

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PromptTemplate
from keras_ptuning import PTuningBackbone
from keras_ptuning import PTuningTextClassifier
from keras_ptuning import hf_pooling
from tests.backbones import CAUSAL
from tests.backbones import FAMILIES
from tests.backbones import MAX_SEQUENCE_LENGTH
from tests.support import backbone_weights
from tests.support import bert_tokenizer
from tests.support import everywhere_or_on_tensorflow
from tests.support import make_inputs
from tests.support import to_numpy

NUM_TOKENS = 3
WORDS = ["the", "a", "film", "was", "good", "bad", "great", "dull", "plot"]


# Every family on TensorFlow; JAX and PyTorch train an encoder, one with
# a fused token+position embedding, a learned-position decoder and a RoPE
# one. Where the graph is split is the same whichever backend runs it;
# what an optimizer step updates is the same for every family.
@pytest.mark.parametrize(
    "family",
    everywhere_or_on_tensorflow(
        sorted(FAMILIES),
        {"bert", "distil_bert", "gpt2", "gemma3"},
        "the split is backend-independent; JAX and PyTorch fit bert, "
        "distil_bert, gpt2 and gemma3",
    ),
)
def test_fit_trains_prompt_and_head_only_backbone_bit_identical(family):
    backbone = FAMILIES[family]()
    model = PTuningTextClassifier(
        backbone, num_classes=3, prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    assert isinstance(model.backbone, PTuningBackbone)
    assert isinstance(model, keras_hub.models.TextClassifier)
    trainable = {id(v) for v in model.trainable_variables}
    expected = {
        id(v)
        for v in model.backbone.prompt_encoder.trainable_variables
        + model.output_dense.trainable_variables
    }
    assert trainable == expected
    frozen_before = backbone_weights(backbone)
    prompt_before = to_numpy(model.backbone.prompt_encoder.prompt_table())
    head_before = to_numpy(model.output_dense.kernel)

    inputs = make_inputs(model.backbone.input_names, batch_size=8, length=6)
    labels = np.arange(8) % 3
    model.fit(inputs, labels, batch_size=4, epochs=2, verbose=0)

    for before, after in zip(frozen_before, backbone_weights(backbone)):
        np.testing.assert_array_equal(before, after)
    assert not np.allclose(
        prompt_before, to_numpy(model.backbone.prompt_encoder.prompt_table())
    )
    assert not np.allclose(head_before, to_numpy(model.output_dense.kernel))
    assert model.predict(inputs, verbose=0).shape == (8, 3)


@pytest.mark.parametrize("family", sorted(CAUSAL & {"gpt2", "llama"}))
def test_decoder_head_reads_last_real_token(family):
    model = PTuningTextClassifier(
        FAMILIES[family](),
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        dropout=0.0,
    )
    inputs = make_inputs(model.backbone.input_names, batch_size=4, length=7)
    sequence = to_numpy(model.backbone(inputs))
    last = inputs["padding_mask"].sum(axis=1) - 1
    features = sequence[np.arange(4), last]
    expected = features @ to_numpy(model.output_dense.kernel) + to_numpy(
        model.output_dense.bias
    )
    np.testing.assert_allclose(to_numpy(model(inputs)), expected, atol=1e-5)


def _readout(outputs, inputs, pooling):
    """What the head should read, computed in NumPy from the backbone."""
    if pooling == "pooled":
        return to_numpy(outputs["pooled_output"])
    sequence = to_numpy(
        outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    )
    if pooling == "first":
        return sequence[:, 0]
    mask = inputs["padding_mask"].astype("float32")
    return (sequence * mask[..., None]).sum(axis=1) / mask.sum(axis=1)[:, None]


@pytest.mark.parametrize(
    "family, pooling, reads",
    [
        ("bert", None, "mean"),  # the default for encoders
        ("roberta", None, "mean"),
        ("bert", "pooled", "pooled"),  # what PEFT's HF model reads
        ("distil_bert", "first", "first"),
        ("gpt2", "mean", "mean"),
    ],
)
def test_head_reads_the_chosen_tokens(family, pooling, reads):
    model = PTuningTextClassifier(
        FAMILIES[family](),
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        pooling=pooling,
    )
    assert model.pooling == reads
    assert model.get_config()["pooling"] == reads
    inputs = make_inputs(model.backbone.input_names, batch_size=4, length=7)
    assert inputs["padding_mask"].sum(axis=1).min() < 7  # padded rows
    features = _readout(model.backbone(inputs), inputs, reads)
    expected = features @ to_numpy(model.output_dense.kernel) + to_numpy(
        model.output_dense.bias
    )
    np.testing.assert_allclose(to_numpy(model(inputs)), expected, atol=1e-5)


def test_bad_pooling_names_the_argument_and_the_choices():
    with pytest.raises(ValueError, match="one of .*'mean'.*pooling='max'"):
        PTuningTextClassifier(
            FAMILIES["bert"](),
            2,
            prompt_config=PromptEncoderConfig(2),
            pooling="max",
        )
    with pytest.raises(
        ValueError, match="RobertaBackbone has none.*pooling='pooled'"
    ):
        PTuningTextClassifier(
            FAMILIES["roberta"](),
            2,
            prompt_config=PromptEncoderConfig(2),
            pooling="pooled",
        )


def test_hf_pooling_takes_plain_and_ptuning_backbones():
    expected = {"bert": "pooled", "roberta": "first", "gpt2": "last"}
    for family, reads in expected.items():
        backbone = FAMILIES[family]()
        assert hf_pooling(backbone) == reads, family
        ptuning = PTuningBackbone(backbone, PromptEncoderConfig(2))
        assert hf_pooling(ptuning) == reads, family


@pytest.mark.parametrize(
    "family, reads",
    [("bert", "pooled"), ("roberta", "first"), ("qwen", "last")],
)
def test_config_saved_before_pooling_existed_reads_what_it_read(family, reads):
    """A classifier saved before `pooling` existed read HF's readout; its
    head must keep reading it when loaded, not the new default."""
    model = PTuningTextClassifier(
        FAMILIES[family](),
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        pooling=reads,
    )
    config = model.get_config()
    del config["pooling"]
    loaded = PTuningTextClassifier.from_config(config)
    assert loaded.pooling == reads
    loaded.set_weights(model.get_weights())
    inputs = make_inputs(model.backbone.input_names, batch_size=3, length=6)
    np.testing.assert_allclose(
        to_numpy(loaded(inputs)), to_numpy(model(inputs)), atol=1e-6
    )


def test_model_ready_inputs_skip_keras_hub_pipeline():
    """Without a preprocessor, `fit`/`evaluate`/`predict` hand arrays
    straight to Keras: keras-hub's pipeline would only wrap them in
    `tf.data`, whose threads slow a JAX or PyTorch step (issue 15)."""
    model = PTuningTextClassifier(
        FAMILIES["bert"](), 2, prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    model.compile()
    inputs = make_inputs(model.model_input_names, batch_size=4, length=5)
    labels = np.array([0, 1, 0, 1])
    refused = AssertionError("went through keras-hub's pipeline")
    with (
        mock.patch.object(
            pipeline_model.PipelineModel, "fit", side_effect=refused
        ),
        mock.patch.object(
            pipeline_model.PipelineModel, "evaluate", side_effect=refused
        ),
        mock.patch.object(
            pipeline_model.PipelineModel, "predict", side_effect=refused
        ),
    ):
        history = model.fit(inputs, labels, batch_size=2, verbose=0)
        loss = model.evaluate(inputs, labels, batch_size=2, verbose=0)
        logits = model.predict(inputs, batch_size=2, verbose=0)
    assert model.optimizer.iterations == 2
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(loss[0])
    np.testing.assert_allclose(logits, to_numpy(model(inputs)), atol=1e-5)


@pytest.mark.parametrize("task_names", [None, ["a", "b"]])
def test_head_initialisation_and_dropout_placement(task_names):
    """Pinned defaults (issue 15): the head's kernel starts at
    TruncatedNormal(0.02) with zero bias, as keras-hub's BERT classifier and
    PEFT's HF head; the dropout layer sits between the pooled output and
    the head with rate 0 by default (the frozen backbone keeps its own
    dropout), and a rate given drops in training only. (What the head
    reads by default: `test_head_reads_the_chosen_tokens`.)"""
    model = PTuningTextClassifier(
        FAMILIES["bert"](),
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        pooling="pooled",  # the backbone's output feeds the dropout directly
        task_names=task_names,
    )
    heads = model.output_dense.heads if task_names else [model.output_dense]
    for head in heads:
        config = head.get_config()["kernel_initializer"]
        assert config["class_name"] == "TruncatedNormal", config
        assert config["config"]["stddev"] == 0.02
        kernel = to_numpy(head.kernel)
        assert np.abs(kernel).max() <= 2 * 0.02  # truncated at 2 stddev
        assert kernel.std() < 0.03  # Glorot's would be ~0.24 for 16 -> 2
        np.testing.assert_array_equal(to_numpy(head.bias), 0)
    assert model.output_dropout.rate == 0.0
    # The dropout layer's output is the head's input.
    head_input = model.output_dense._inbound_nodes[0].input_tensors[0]
    assert head_input._keras_history.operation is model.output_dropout
    dropout_input = model.output_dropout._inbound_nodes[0].input_tensors[0]
    assert dropout_input._keras_history.operation is model.backbone
    inputs = make_inputs(model.model_input_names, batch_size=64, length=5)
    if task_names:
        inputs["task_id"] = np.zeros(64, "int32")
    # The tiny backbone has no dropout of its own, so only the head's acts.
    np.testing.assert_array_equal(
        to_numpy(model(inputs, training=True)), to_numpy(model(inputs))
    )
    model = PTuningTextClassifier(
        model.backbone, 2, dropout=0.5, task_names=task_names
    )
    np.testing.assert_array_equal(
        to_numpy(model(inputs)), to_numpy(model(inputs))
    )
    assert not np.allclose(
        to_numpy(model(inputs, training=True)), to_numpy(model(inputs))
    )


def test_built_at_construction():
    model = PTuningTextClassifier(
        FAMILIES["bert"](), 2, prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    assert model.built
    encoder = model.backbone.prompt_encoder.count_params()
    head = 16 * 2 + 2
    table = NUM_TOKENS * 16  # the collapsed-prompt variable, not trainable
    assert (
        model.count_params()
        == model.backbone.backbone.count_params() + encoder + head + table
    )
    assert (
        sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        == encoder + head
    )


def test_compile_defaults():
    model = PTuningTextClassifier(
        FAMILIES["bert"](), 2, prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-3)
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert model.loss.from_logits


def _tiny_preprocessor(sequence_length):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    return keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )


@pytest.mark.compiled  # the traced functions users get
def test_raw_strings_with_preprocessor():
    model = PTuningTextClassifier(
        FAMILIES["bert"](),
        2,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        preprocessor=_tiny_preprocessor(8),
    )
    x = ["the film was good", "the plot was dull", "a great film", "bad plot"]
    y = np.array([1, 0, 1, 0])
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    # The strings give what their token ids give (preprocessed once here).
    token_ids = {
        k: np.asarray(to_numpy(v)) for k, v in model.preprocessor(x).items()
    }
    from_strings = model.predict(x, verbose=0)
    from_ids = model.predict(token_ids, verbose=0)
    assert from_strings.shape == (4, 2)
    np.testing.assert_allclose(from_strings, from_ids, atol=1e-6)
    by_strings = model.evaluate(x, y, verbose=0, return_dict=True)
    by_ids = model.evaluate(token_ids, y, verbose=0, return_dict=True)
    assert by_strings["loss"] == pytest.approx(by_ids["loss"], rel=1e-5)
    assert (
        by_strings["sparse_categorical_accuracy"]
        == (by_ids["sparse_categorical_accuracy"])
    )


def test_preprocessor_must_leave_room_for_virtual_tokens():
    too_long = MAX_SEQUENCE_LENGTH - NUM_TOKENS + 1
    with pytest.raises(ValueError, match=f"sequence_length={too_long}.*<= 29"):
        PTuningTextClassifier(
            FAMILIES["bert"](),
            2,
            prompt_config=PromptEncoderConfig(NUM_TOKENS),
            preprocessor=_tiny_preprocessor(too_long),
        )


def test_bad_arguments():
    with pytest.raises(ValueError, match="prompt_config=None"):
        PTuningTextClassifier(FAMILIES["bert"](), 2)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_classes"):
            PTuningTextClassifier(
                FAMILIES["bert"](), bad, prompt_config=PromptEncoderConfig(2)
            )


def test_accepts_a_ptuning_backbone():
    ptuning = PTuningBackbone(FAMILIES["qwen"](), PromptEncoderConfig(2))
    model = PTuningTextClassifier(ptuning, 2)
    assert model.backbone is ptuning
    config = model.get_config()
    # The task serializes the PTuningBackbone, which owns the prompt.
    assert config["backbone"]["class_name"] == "PTuningBackbone"
    inner = config["backbone"]["config"]
    assert inner["prompt_config"]["num_virtual_tokens"] == 2
    assert inner["backbone"]["class_name"] == "QwenBackbone"
    assert "prompt_config" not in config
    with pytest.raises(ValueError, match="`prompt_config` differs"):
        PTuningTextClassifier(ptuning, 2, prompt_config=PromptEncoderConfig(3))
    with pytest.raises(ValueError, match="`placeholder_id` differs"):
        PTuningTextClassifier(ptuning, 2, placeholder_id=-1)


@pytest.mark.parametrize("family", ["bert", "distil_bert"])
def test_classifier_takes_raw_text_through_the_template(family):
    template = PromptTemplate(
        "[P:2] {sentence} [P] .", bert_tokenizer(), sequence_length=12
    )
    model = PTuningTextClassifier(FAMILIES[family](), 2, preprocessor=template)
    assert model.backbone.placeholder_id == -1
    assert model.backbone.num_virtual_tokens == 3
    assert ("segment_ids" in template.output_names) == (family == "bert")
    sentences = ["the movie was great", "a terrible film"] * 4
    labels = np.array([1, 0] * 4)
    history = model.fit(sentences, labels, batch_size=4, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    probabilities = model.predict(sentences[:2], verbose=0)
    assert probabilities.shape == (2, 2)
    with pytest.raises(ValueError, match="has 3 slots, but .* makes"):
        PTuningTextClassifier(
            FAMILIES[family](),
            2,
            prompt_config=PromptEncoderConfig(4),
            preprocessor=template,
        )
    with pytest.raises(ValueError, match="writes .*mask_positions"):
        PTuningTextClassifier(
            FAMILIES[family](),
            2,
            preprocessor=PromptTemplate(
                "{s} [P] [MASK]", bert_tokenizer(), sequence_length=8
            ),
        )

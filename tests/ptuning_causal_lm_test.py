import keras
import keras_hub
import numpy as np
import pytest

from keras_ptuning import PromptEncoderConfig
from keras_ptuning import PTuningCausalLM
from keras_ptuning.backbones import cached_decoding
from keras_ptuning.backbones.cached_decoding import cache_segment_ends
from tests.backbones import CAUSAL
from tests.backbones import FAMILIES
from tests.backbones import MAX_SEQUENCE_LENGTH
from tests.backbones import VOCABULARY_SIZE
from tests.support import backbone_weights
from tests.support import everywhere_or_on_tensorflow
from tests.support import make_identity_prompt
from tests.support import to_numpy
from tests.support import uncached_greedy
from tests.support import with_real_prompt

NUM_TOKENS = 3
VIRTUAL_IDS = [5, 9, 17]


def _prompts(lengths, buffer_length, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCABULARY_SIZE, (len(lengths), buffer_length))
    mask = np.arange(buffer_length)[None] < np.array(lengths)[:, None]
    return np.where(mask, ids, 0).astype("int32"), mask


def _with_real_prompt(ids, mask):
    return with_real_prompt(
        {"token_ids": ids, "padding_mask": mask}, VIRTUAL_IDS
    )


@pytest.fixture(params=sorted(CAUSAL))
def family(request):
    return request.param


def test_logits_match_keras_hub_causal_lm_on_concatenated_ids(family):
    backbone = FAMILIES[family]()
    lm = PTuningCausalLM(
        backbone, prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    make_identity_prompt(lm.backbone, VIRTUAL_IDS)
    plain = lm.backbone.causal_lm_class(backbone=backbone, preprocessor=None)
    ids, mask = _prompts([6, 4], 6)
    batch = len(ids)
    reference = plain.predict(_with_real_prompt(ids, mask), verbose=0)
    logits = lm.predict({"token_ids": ids, "padding_mask": mask}, verbose=0)
    assert logits.shape == (batch, 6, VOCABULARY_SIZE)
    np.testing.assert_allclose(
        logits, reference[:, NUM_TOKENS:], atol=1e-4, rtol=1e-4
    )


# Every family decodes over a cache grown in segments (the default, and
# each family's cache layout is grown by our code); one cache over the
# whole length (keras-hub's own loop on the same split prefill) for a
# learned-position family and a RoPE one. JAX and PyTorch grow the caches
# of a learned-position family, a Llama and a Gemma one: the growing is
# the same `keras.ops` code for every family, and TensorFlow checks every
# family's layout.
CACHED_GREEDY_CASES = everywhere_or_on_tensorflow(
    [(f, "segments") for f in sorted(CAUSAL)],
    {("gpt2", "segments"), ("gemma3", "segments"), ("llama", "segments")},
    "growing a cache is family-independent keras.ops code; JAX and PyTorch "
    "grow gpt2's, gemma3's and llama's",
) + [
    ("gpt2", "one_segment"),
    ("llama", "one_segment"),
]


@pytest.mark.parametrize(
    "family,cache_segments", CACHED_GREEDY_CASES, indirect=True
)
def test_cached_greedy_equals_uncached_argmax_loop(family, cache_segments):
    """Batched prompts of different lengths, right padded as keras-hub does;
    decoded over one cache, and over a cache grown in segments (the longest
    prompt reaches past the first ones, the shortest into the second)."""
    lm = PTuningCausalLM(
        FAMILIES[family](), prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    lm.compile(sampler="greedy")
    lengths = [4, 2, 6]
    ids, mask = _prompts(lengths, 10)
    generated = lm.generate(
        {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
    )
    np.testing.assert_array_equal(
        to_numpy(generated["token_ids"]), uncached_greedy(lm, ids, lengths)
    )
    assert to_numpy(generated["padding_mask"]).all()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_one_row_is_prefilled_in_one_call(batch_size, monkeypatch):
    """A batch of one row prefills the virtual tokens with its prompt (one
    call); more rows share one computed prefix. Both decode what the
    uncached loop decodes."""
    shared = []
    compute = cached_decoding.CausalLMView.compute_shared_prefix

    def counting_compute(self, token_ids):
        shared.append(token_ids.shape)
        return compute(self, token_ids)

    monkeypatch.setattr(
        cached_decoding.CausalLMView, "compute_shared_prefix", counting_compute
    )
    lm = PTuningCausalLM(
        FAMILIES["llama"](), prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    lm.compile(sampler="greedy")
    lengths = [4, 2, 6][:batch_size]
    ids, mask = _prompts(lengths, 10)
    generated = lm.generate(
        {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
    )
    assert len(shared) == (0 if batch_size == 1 else 1)
    np.testing.assert_array_equal(
        to_numpy(generated["token_ids"]), uncached_greedy(lm, ids, lengths)
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_empty_prompt_continues_from_the_virtual_tokens(family):
    """With the prompt set to real-token embeddings, generating from nothing
    equals keras-hub's own generate from those real tokens."""
    backbone = FAMILIES[family]()
    lm = PTuningCausalLM(
        backbone, prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    make_identity_prompt(lm.backbone, VIRTUAL_IDS)
    lm.compile(sampler="greedy")
    plain = lm.backbone.causal_lm_class(backbone=backbone, preprocessor=None)
    plain.compile(sampler="greedy")
    ids, mask = _prompts([0, 3], 8)
    ours = lm.generate(
        {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
    )
    theirs = plain.generate(_with_real_prompt(ids, mask), stop_token_ids=None)
    np.testing.assert_array_equal(
        to_numpy(ours["token_ids"]),
        to_numpy(theirs["token_ids"])[:, NUM_TOKENS:],
    )


SAMPLERS = {
    # Deterministic ones must equal greedy decoding.
    "top_k_1": lambda: keras_hub.samplers.TopKSampler(k=1),
    "beam_1": lambda: keras_hub.samplers.BeamSampler(num_beams=1),
    "top_p_tiny": lambda: keras_hub.samplers.TopPSampler(p=1e-6),
    # Seeded random ones must draw what keras-hub's own model draws.
    "top_p_seeded": lambda: keras_hub.samplers.TopPSampler(p=0.9, seed=7),
    "top_k_seeded": lambda: keras_hub.samplers.TopKSampler(k=5, seed=7),
    "random_seeded": lambda: keras_hub.samplers.RandomSampler(seed=7),
    "beam_3": lambda: keras_hub.samplers.BeamSampler(num_beams=3),
}


# Plain-loop samplers decode in segments (the default), and two of them
# (a deterministic and a seeded one) also in one cache as keras-hub does;
# beam samplers run their own loop, in one segment whatever the setting.
# `beam_1`, `top_p_tiny` and `top_k_1` in segments run no path of ours
# that `top_k_1` in one cache, greedy decoding in segments
# (`test_cached_greedy_equals_uncached_argmax_loop`) and `beam_3` (our
# cache under a beam search) do not: they run from TensorFlow's suite only.
_SAMPLER_RUNS = [
    (sampler, "segments")
    for sampler in sorted(SAMPLERS)
    if not sampler.startswith("beam")
] + [
    (sampler, "one_segment")
    for sampler in ("beam_1", "beam_3", "top_k_1", "top_k_seeded")
]
_TENSORFLOW_ONLY_RUNS = {
    ("beam_1", "one_segment"),
    ("top_p_tiny", "segments"),
    ("top_k_1", "segments"),
}
SAMPLER_CASES = everywhere_or_on_tensorflow(
    _SAMPLER_RUNS,
    set(_SAMPLER_RUNS) - _TENSORFLOW_ONLY_RUNS,
    "another deterministic sampler (top_k_1 in one cache, greedy in "
    "segments) and beam_3 run the same paths",
)


@pytest.mark.parametrize(
    "sampler,cache_segments", SAMPLER_CASES, indirect=["cache_segments"]
)
def test_keras_hub_samplers_decode_what_keras_hub_decodes(
    sampler, cache_segments
):
    """With the prompt set to real-token embeddings, every sampler decodes
    exactly what keras-hub's own model decodes from those real tokens (the
    same seeded draws); the deterministic ones also equal greedy."""
    backbone = FAMILIES["gpt2"]()
    lm = PTuningCausalLM(
        backbone, prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    make_identity_prompt(lm.backbone, VIRTUAL_IDS)
    plain = lm.backbone.causal_lm_class(backbone=backbone, preprocessor=None)
    ids, mask = _prompts([2, 3], 9)
    inputs = {"token_ids": ids, "padding_mask": mask}
    lm.compile(sampler=SAMPLERS[sampler]())
    ours = to_numpy(lm.generate(inputs, stop_token_ids=None)["token_ids"])
    plain.compile(sampler=SAMPLERS[sampler]())
    theirs = plain.generate(_with_real_prompt(ids, mask), stop_token_ids=None)
    np.testing.assert_array_equal(
        ours, to_numpy(theirs["token_ids"])[:, NUM_TOKENS:]
    )
    np.testing.assert_array_equal(ours[:, :2], ids[:, :2])
    if not sampler.endswith("seeded") and sampler != "beam_3":
        lm.compile(sampler="greedy")
        greedy = lm.generate(inputs, stop_token_ids=None)["token_ids"]
        np.testing.assert_array_equal(ours, to_numpy(greedy))


def test_stop_token_ids_end_generation(cache_segments):
    lm = PTuningCausalLM(
        FAMILIES["gpt2"](), prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    lm.compile(sampler="greedy")
    ids, mask = _prompts([3], 9)
    free = to_numpy(
        lm.generate(
            {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
        )["token_ids"]
    )
    stop = int(free[0, 4])
    out = lm.generate(
        {"token_ids": ids, "padding_mask": mask}, stop_token_ids=[stop]
    )
    mask_out = to_numpy(out["padding_mask"])[0]
    first_stop = 3 + list(free[0, 3:]).index(stop)
    assert (
        mask_out[: first_stop + 1].all()
        and not mask_out[first_stop + 1 :].any()
    )


def test_cache_segment_ends():
    assert cache_segment_ends(100, 32) == [32, 55, 77, 100]
    assert cache_segment_ends(1024, 32) == [32, 363, 693, 1024]
    # Too short to grow by MIN_SEGMENT_GROWTH (16) slots: one segment.
    assert cache_segment_ends(47, 32) == [47]
    assert cache_segment_ends(48, 32) == [32, 48]
    assert cache_segment_ends(64, 32) == [32, 48, 64]


@pytest.mark.parametrize("sampler", ["greedy", "beam"])
def test_plain_loop_samplers_decode_in_segments(sampler, monkeypatch):
    """keras-hub's plain-loop samplers grow the cache segment by segment;
    beam search has its own loop and decodes in one, as keras-hub does."""
    monkeypatch.setattr(cached_decoding, "FIRST_SEGMENT_LENGTH", 4)
    monkeypatch.setattr(cached_decoding, "MIN_SEGMENT_GROWTH", 3)
    grown = []
    grow = cached_decoding.SegmentedSampler.grow

    def counting_grow(self, cache, token_ids, *args):
        grown.append(token_ids.shape[1])
        return grow(self, cache, token_ids, *args)

    monkeypatch.setattr(cached_decoding.SegmentedSampler, "grow", counting_grow)
    lm = PTuningCausalLM(
        FAMILIES["gpt2"](), prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    lm.compile(sampler=sampler)
    ids, mask = _prompts([2, 3], 13)
    lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    # 16 positions with the 3 virtual tokens; the first segment holds them
    # and 4 real slots: [7, 10, 13, 16].
    assert grown == ([10, 13, 16] if sampler == "greedy" else [])


def test_max_length_overflowing_positions_is_refused():
    lm = PTuningCausalLM(
        FAMILIES["gpt2"](), prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    ids, mask = _prompts([2], MAX_SEQUENCE_LENGTH - 1)
    with pytest.raises(
        ValueError, match="3 \\+ 31 = 34 exceeds.*maximum of 32"
    ):
        lm.generate(
            {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
        )


def _tiny_gpt2_preprocessor(sequence_length):
    merges = [
        "a i",
        "ai r",
        "p l",
        "pl a",
        "n e",
        "pla ne",
        "Ġ a",
        "Ġa t",
        "Ġa i",
        "Ġai r",
        "p o",
        "r t",
        "po rt",
    ]
    vocabulary = [
        "<|endoftext|>",
        "!",
        "Ġ",
        "a",
        "i",
        "r",
        "p",
        "l",
        "n",
        "e",
        "t",
        "o",
    ] + [merge.replace(" ", "") for merge in merges]
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={token: i for i, token in enumerate(vocabulary)},
        merges=merges,
    )
    return keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=sequence_length
    )


@pytest.mark.compiled  # the traced functions users get
def test_fit_and_generate_strings_with_preprocessor():
    backbone = FAMILIES["gpt2"]()
    lm = PTuningCausalLM(
        backbone,
        prompt_config=PromptEncoderConfig(NUM_TOKENS),
        preprocessor=_tiny_gpt2_preprocessor(8),
    )
    encoder_ids = {
        id(v) for v in lm.backbone.prompt_encoder.trainable_variables
    }
    assert {id(v) for v in lm.trainable_variables} == encoder_ids
    frozen = backbone_weights(backbone)
    prompt_before = to_numpy(lm.backbone.prompt_encoder.prompt_table())
    x = ["airplane at airport", " air!", "airport airplane", " at air"]
    history = lm.fit(x, batch_size=2, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for before, after in zip(frozen, backbone_weights(backbone)):
        np.testing.assert_array_equal(before, after)
    assert not np.allclose(
        prompt_before, to_numpy(lm.backbone.prompt_encoder.prompt_table())
    )
    lm.compile(sampler="greedy")
    text = lm.generate(["airplane at", "air"], max_length=8)
    assert len(text) == 2 and text[0].startswith("airplane at")
    with pytest.raises(ValueError, match="sequence_length=30"):
        PTuningCausalLM(
            backbone,
            prompt_config=PromptEncoderConfig(NUM_TOKENS),
            preprocessor=_tiny_gpt2_preprocessor(30),
        )


def test_loss_ignores_padding_and_virtual_tokens():
    """evaluate() equals a masked cross-entropy computed here from logits."""
    preprocessor = _tiny_gpt2_preprocessor(8)
    lm = PTuningCausalLM(
        FAMILIES["gpt2"](), prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    x, y, weights = preprocessor(["airplane at airport", " air!"])
    x = {k: to_numpy(v) for k, v in x.items()}
    y, weights = to_numpy(y), to_numpy(weights).astype("float32")
    logits = to_numpy(lm(x)).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    expected = -(picked * weights).sum() / weights.size
    loss = lm.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)
    assert loss["loss"] == pytest.approx(expected, rel=1e-4)


def test_encoder_backbone_is_refused():
    with pytest.raises(ValueError, match="BertBackbone"):
        PTuningCausalLM(
            FAMILIES["bert"](), prompt_config=PromptEncoderConfig(2)
        )
    with pytest.raises(ValueError, match="prompt_config=None"):
        PTuningCausalLM(FAMILIES["gpt2"]())


def test_keras_round_trip(tmp_path):
    lm = PTuningCausalLM(
        FAMILIES["qwen"](), prompt_config=PromptEncoderConfig(NUM_TOKENS)
    )
    lm.compile(sampler="greedy")
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, PTuningCausalLM)
    ids, mask = _prompts([3, 2], 6)
    inputs = {"token_ids": ids, "padding_mask": mask}
    np.testing.assert_array_equal(
        loaded.predict(inputs, verbose=0), lm.predict(inputs, verbose=0)
    )
    np.testing.assert_array_equal(
        to_numpy(loaded.generate(inputs, stop_token_ids=None)["token_ids"]),
        to_numpy(lm.generate(inputs, stop_token_ids=None)["token_ids"]),
    )

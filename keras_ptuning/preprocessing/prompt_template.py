"""`PromptTemplate`: templates with virtual-token slots and anchor tokens."""

import functools
import re

import keras
import keras_hub
import numpy as np

from keras_ptuning.input_validation import check_placeholder_counts
from keras_ptuning.layers.prompt_encoder_config import PromptEncoderConfig
from keras_ptuning.placement.prompt_placement import DEFAULT_PLACEHOLDER_ID
from keras_ptuning.placement.prompt_placement import TASK_ID
from keras_ptuning.placement.prompt_placement import check_placeholder_id
from keras_ptuning.preprocessing.vocabulary import check_known
from keras_ptuning.preprocessing.vocabulary import spaces_word_starts

try:
    import tensorflow as tf
    import tensorflow_text as tf_text
except ImportError:  # pragma: no cover - keras-hub installs both.
    tf = None
    tf_text = None

TRUNCATE_MODES = ("round_robin", "waterfall")
TEXT_SLOT_MODES = ("prompt", "text")
_PART = re.compile(r'\[P(?::(\d+)|:"([^"\]]*)")?\]|\[MASK\]|\{(\w+)\}')


def _parse(template):
    """Splits a template into `(kind, value, space_before)` pieces.

    Kinds: `"slots"` (value: count), `"text_slots"` (value: the text its
    virtual tokens start from, stripped), `"mask"`, `"field"` (value:
    name) and `"text"` (value: the anchor text, stripped).
    """
    if not isinstance(template, str) or not template.strip():
        raise ValueError(
            f"`template` must be a non-empty string. Received: "
            f"template={template!r}"
        )
    pieces = []
    position = 0

    def add_text(text, start):
        if text.strip():
            space_before = start > 0 and text[0].isspace()
            pieces.append(("text", text.strip(), space_before))

    for match in _PART.finditer(template):
        add_text(template[position : match.start()], position)
        space_before = match.start() > 0 and template[match.start() - 1] in (
            " \t\n"
        )
        token = match.group(0)
        if token == "[MASK]":
            pieces.append(("mask", None, space_before))
        elif match.group(3) is not None:
            pieces.append(("field", match.group(3), space_before))
        elif match.group(2) is not None:
            if not match.group(2).strip():
                raise ValueError(
                    f"A text slot needs text to start from. Received: "
                    f"{token} in template={template!r}"
                )
            pieces.append(("text_slots", match.group(2).strip(), space_before))
        else:
            count = int(match.group(1)) if match.group(1) else 1
            if count < 1:
                raise ValueError(
                    f"Prompt slots must number at least 1. Received: {token} "
                    f"in template={template!r}"
                )
            pieces.append(("slots", count, space_before))
        position = match.end()
    add_text(template[position:], position)
    fields = [value for kind, value, _ in pieces if kind == "field"]
    if not fields:
        raise ValueError(
            "`template` must hold at least one `{field}` for the input text. "
            f"Received: template={template!r}"
        )
    if len(set(fields)) != len(fields):
        raise ValueError(
            f"Each `{{field}}` may appear once in `template`. Received: "
            f"template={template!r}"
        )
    kinds = {kind for kind, _, _ in pieces}
    if not kinds & {"slots", "text_slots"}:
        raise ValueError(
            "`template` must hold at least one prompt slot `[P]`, `[P:n]` or "
            f'`[P:"text"]`. Received: template={template!r}'
        )
    if {"slots", "text_slots"} <= kinds:
        raise ValueError(
            'A template\'s slots must all start from text (`[P:"text"]`) '
            "or all be counted (`[P]`, `[P:n]`): a text-started prompt "
            "starts exactly at its text, which counted slots have none of. "
            f"Received: template={template!r}"
        )
    return pieces


def _short_repr(value, limit=200):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_bool(value, name, kind="a bool"):
    """`value` as a Python bool, or a TypeError naming `name`."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(
        f"`{name}` must be {kind}. Received: {name}={_short_repr(value)}"
    )


def _is_text(value):
    return isinstance(value, (str, bytes))


def _check_field_values(name, value):
    """Raises a TypeError naming field `name` unless `value` is text: a
    string, a (nested) list or tuple or array of strings, or a `tf.string`
    tensor."""
    if _is_text(value):
        return
    if tf is not None and isinstance(value, tf.Tensor):
        if value.dtype == tf.string:
            return
        problem = f"a {value.dtype.name} tensor"
    elif isinstance(value, (list, tuple, np.ndarray)):
        if isinstance(value, np.ndarray) and value.dtype.kind in "US":
            return
        if isinstance(value, np.ndarray) and value.dtype != object:
            problem = f"an array of dtype {value.dtype}"
        else:
            try:
                values = np.asarray(value, dtype=object)
            except ValueError:  # Sequences numpy cannot lay out.
                values = None
            if values is None or not values.size:
                problem = "no strings"
            else:
                others = [v for v in values.reshape(-1) if not _is_text(v)]
                if not others:
                    return
                problem = f"a value of type {type(others[0]).__name__}"
    else:
        problem = f"a value of type {type(value).__name__}"
    raise TypeError(
        f"Field {name!r} must be a string, a non-empty list or array of "
        f"strings, or a tf.string tensor; it holds {problem}. Received: "
        f"{name}={_short_repr(value)}"
    )


def _field_sizes(sizes):
    return ", ".join(
        f"field {k!r} has {'an unknown number of' if n is None else n} rows"
        for k, n in sizes.items()
    )


def _has_vocabulary(tokenizer):
    try:
        return bool(tokenizer.vocabulary_size())
    except Exception:  # Tokenizers without a vocabulary raise or return 0.
        return False


@keras.saving.register_keras_serializable(package="keras_ptuning")
class PromptTemplate(keras_hub.models.Preprocessor):
    """Turns a P-tuning template and input text into model inputs.

    A template is a string of four kinds of parts:

    - `[P]` or `[P:n]`: one or `n` virtual-token slots, written as
      `placeholder_id` in `token_ids`; the model puts its k-th virtual token
      at the k-th slot of each row.
    - `[P:"text"]`: virtual-token slots that *start from* `text`: one
      slot per token of `text` (tokenized as anchor text would be), and
      the model's prompt starts at those tokens' embeddings
      (`prompt_init="text"`, see `prompt_init_ids`), so before training
      the model reads exactly the text; `as_text_prompt()` is the same
      template with the text written as anchors (the zero-shot prompt).
      A template's slots are all of this kind or all counted.
    - `{name}`: the text of input field `name`, tokenized and truncated to
      fit `sequence_length`. Only field text is ever truncated.
    - `[MASK]`: the tokenizer's mask token (cloze tasks); its position is
      output as `mask_positions`.
    - Anything else: *anchor* text, tokenized as ordinary tokens and kept
      whole.

    For example `"[P:3] {premise} [P:3] {hypothesis} ? [P:3] [MASK]"` has
    nine slots, two fields, the anchor `?` and a mask.

    The output is a dict of `token_ids`, `padding_mask` (true on every
    token, slots included), `segment_ids` (zeros; see `segment_ids`) and,
    when the template has a `[MASK]`, `mask_positions` `(batch, num_masks)`;
    `token_ids` start with the tokenizer's start token and end with its end
    token (`[CLS]`/`[SEP]`, `<s>`/`</s>`, `<bos>`/`<eos>`, ...) and are
    padded with its pad token to `sequence_length`. Labels and sample
    weights pass through, as in keras-hub preprocessors, so the template is
    a task model's `preprocessor`. It runs in `tf.data` pipelines and
    eagerly (eager calls return backend tensors).

    Tokenization treats each part on its own: where words carry the space
    before them (byte-level BPE such as GPT-2, RoBERTa and Llama 3, and
    SentencePiece without a dummy prefix such as Gemma's), a part preceded
    by a space in the template is tokenized with a leading space, as it
    would be inside a sentence; WordPiece and other SentencePiece models
    need nothing of the kind. Empty field text gives no tokens.

    A multi-task model's `task_id` passes through: given in a dict input
    beside the fields, it is output unchanged.

    Args:
        template: str. The template.
        tokenizer: a keras-hub tokenizer (WordPiece, byte-pair or
            SentencePiece).
        sequence_length: int. The padded output length. The template's fixed
            part (special tokens, slots, anchors, masks) must leave at least
            one token per field.
        placeholder_id: int. The id written at slots. Defaults to `-1`,
            which no vocabulary uses. Any other id must not be one of the
            tokenizer's special tokens; if field text tokenizes to it, the
            row has too many placeholders and the template raises (in
            `tf.data` too).
        add_start_token: bool. Whether to start with the tokenizer's start
            token (if it has one). Defaults to `True`.
        add_end_token: bool. Whether to end with the tokenizer's end token
            (if it has one). Defaults to `True`.
        truncate: `"round_robin"` (default: trim the longest field first, as
            keras-hub's `MultiSegmentPacker`) or `"waterfall"` (trim the
            last fields first).
        text_slots: `"prompt"` (default: `[P:"text"]` parts are slots) or
            `"text"` (they are anchor text; see `as_text_prompt`).
        segment_ids: bool or `None`. Whether to output `segment_ids` (all
            zeros). `None` (default): a model given this template as its
            preprocessor decides by its inputs; alone, the template outputs
            them when the tokenizer has a separator token (BERT-style).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    from keras_ptuning.presets import minilm_preset_dir

    tokenizer = keras_hub.tokenizers.BertTokenizer.from_preset(
        minilm_preset_dir()
    )
    template = keras_ptuning.PromptTemplate(
        "{sentence} [P:4] It was [MASK] .", tokenizer, sequence_length=64
    )
    inputs = template({"sentence": ["A gripping, funny film."]})
    template.num_virtual_tokens  # 4
    template.prompt_config(encoder_hidden_size=128)
    ```
    """

    def __init__(
        self,
        template,
        tokenizer,
        sequence_length=128,
        placeholder_id=DEFAULT_PLACEHOLDER_ID,
        add_start_token=True,
        add_end_token=True,
        truncate="round_robin",
        segment_ids=None,
        text_slots="prompt",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(tokenizer, keras_hub.tokenizers.Tokenizer):
            raise TypeError(
                "`tokenizer` must be a keras-hub tokenizer. Received: "
                f"tokenizer of type {type(tokenizer).__name__}"
            )
        if isinstance(sequence_length, bool) or not isinstance(
            sequence_length, int
        ):
            raise TypeError(
                "`sequence_length` must be an int. Received: "
                f"sequence_length={sequence_length!r}"
            )
        check_placeholder_id(placeholder_id)
        if placeholder_id is None:
            raise TypeError(
                "`placeholder_id` must be an int. Received: placeholder_id=None"
            )
        # Types first: an array's `in` or truth value would be ambiguous.
        if not isinstance(truncate, str) or truncate not in TRUNCATE_MODES:
            raise ValueError(
                f"`truncate` must be one of {TRUNCATE_MODES}. Received: "
                f"truncate={_short_repr(truncate)}"
            )
        if not isinstance(text_slots, str) or text_slots not in (
            TEXT_SLOT_MODES
        ):
            raise ValueError(
                f"`text_slots` must be one of {TEXT_SLOT_MODES}. Received: "
                f"text_slots={_short_repr(text_slots)}"
            )
        add_start_token = _check_bool(add_start_token, "add_start_token")
        add_end_token = _check_bool(add_end_token, "add_end_token")
        if segment_ids is not None:
            segment_ids = _check_bool(
                segment_ids, "segment_ids", "a bool or None"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.sequence_length = sequence_length
        self.placeholder_id = int(placeholder_id)
        self.add_start_token = add_start_token
        self.add_end_token = add_end_token
        self.truncate = truncate
        self.segment_ids = segment_ids
        self.text_slots = text_slots
        self._pieces = _parse(template)
        if text_slots == "text":
            self._pieces = [
                ("text" if kind == "text_slots" else kind, value, space)
                for kind, value, space in self._pieces
            ]
        self.field_names = [v for k, v, _ in self._pieces if k == "field"]
        self._constant_ids = None
        self._packing_function = None
        # A tokenizer being deserialized gets its vocabulary later (from the
        # `.keras` file's assets): then the checks run at the first call.
        if _has_vocabulary(tokenizer):
            self._prepare()
        # No state to build: without this, Keras traces `call` symbolically
        # before the first call (a second trace of the packing function,
        # most of a long template's first call).
        self.built = True

    def _prepare(self):
        """Tokenizes the fixed parts and checks they fit; once."""
        if self._constant_ids is not None:
            return
        tokenizer = self.tokenizer
        # Eagerly, even when first called while tracing a tf.data pipeline
        # (a deserialized template gets its vocabulary late).
        with tf.init_scope():
            self._spaced = spaces_word_starts(tokenizer)
        self._start_id = self._special_id(
            "start_token_id", self.add_start_token
        )
        self._end_id = self._special_id("end_token_id", self.add_end_token)
        self._pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        self._mask_id = None
        if self.num_masks:
            self._mask_id = getattr(tokenizer, "mask_token_id", None)
            if self._mask_id is None:
                raise ValueError(
                    f"`template` has [MASK], but {type(tokenizer).__name__} "
                    f"has no mask token. Received: template={self.template!r}"
                )
        self._check_placeholder_collisions()
        # Text parts, tokenized once: `None` marks a field, an int a count
        # of slots (expanded only once they are known to fit).
        constant_ids = []
        prompt_init_ids = []
        for kind, value, space_before in self._pieces:
            if kind == "slots":
                ids = value
            elif kind == "text_slots":
                text_ids = self._tokenize_constant(value, space_before)
                prompt_init_ids.extend(text_ids)
                ids = len(text_ids)
            elif kind == "mask":
                ids = [self._mask_id]
            elif kind == "text":
                ids = self._tokenize_constant(value, space_before)
            else:
                ids = None
            constant_ids.append(ids)
        fixed = sum(
            ids if isinstance(ids, int) else len(ids)
            for ids in constant_ids
            if ids is not None
        )
        fixed += (self._start_id is not None) + (self._end_id is not None)
        budget = self.sequence_length - fixed
        if budget < len(self.field_names):
            raise ValueError(
                f"sequence_length={self.sequence_length} is too short for "
                f"`template`: its special tokens, slots, anchors and masks "
                f"take {fixed} tokens, leaving {budget} for "
                f"{len(self.field_names)} field(s). Use sequence_length >= "
                f"{fixed + len(self.field_names)}."
            )
        self._prompt_init_ids = prompt_init_ids
        self._field_budget = budget
        self._constant_ids = [
            [self.placeholder_id] * ids if isinstance(ids, int) else ids
            for ids in constant_ids
        ]

    def _special_id(self, attribute, wanted):
        if not wanted:
            return None
        return getattr(self.tokenizer, attribute, None)

    def _check_placeholder_collisions(self):
        special = {
            name: getattr(self.tokenizer, name, None)
            for name in (
                "start_token_id",
                "end_token_id",
                "pad_token_id",
                "mask_token_id",
            )
        }
        for name, value in special.items():
            if value is not None and value == self.placeholder_id:
                raise ValueError(
                    f"`placeholder_id`={self.placeholder_id} collides with "
                    f"the tokenizer's {name}. Use an id no text tokenizes to, "
                    f"such as the default {DEFAULT_PLACEHOLDER_ID}."
                )

    def _tokenize_constant(self, text, space_before):
        if self._spaced and space_before:
            text = " " + text
        # Eagerly, even when first called while tracing a tf.data pipeline.
        with tf.init_scope():
            ids = np.asarray(self.tokenizer(text)).reshape(-1)
        ids = [int(i) for i in ids]
        check_known(ids, text.strip(), "anchor text", self.tokenizer)
        if self.placeholder_id in ids:
            raise ValueError(
                f"The anchor text {text!r} tokenizes to placeholder_id="
                f"{self.placeholder_id}, a real token of this tokenizer. Use "
                f"another placeholder_id, such as {DEFAULT_PLACEHOLDER_ID}."
            )
        return ids

    @property
    def has_text_slots(self):
        """Whether the template's slots start from text (`[P:"text"]`)."""
        return any(kind == "text_slots" for kind, _, _ in self._pieces)

    def _prepared(self):
        if self._constant_ids is None and _has_vocabulary(self.tokenizer):
            self._prepare()
        return self._constant_ids is not None

    @property
    def num_virtual_tokens(self):
        """The number of prompt slots in the template.

        Text slots count their text's tokens, so before a deserialized
        tokenizer has its vocabulary the count is `None`.
        """
        counted = sum(v for kind, v, _ in self._pieces if kind == "slots")
        if not self.has_text_slots:
            return counted
        if not self._prepared():
            return None
        return len(self._prompt_init_ids)

    @property
    def prompt_init_ids(self):
        """The token ids the virtual tokens start from, in slot order, or
        `None` for counted slots (or `text_slots="text"`)."""
        if not self.has_text_slots or not self._prepared():
            return None
        return list(self._prompt_init_ids)

    def as_text_prompt(self):
        """This template with its `[P:"text"]` slots written as anchor text.

        The tokens are exactly the ones the slots start from, so the frozen
        model reading this template is what a `prompt_init="text"` model
        predicts before training (the zero-shot prompt). The copy has no
        virtual tokens: it is a preprocessor for a plain keras-hub
        backbone.
        """
        if not self.has_text_slots:
            raise ValueError(
                '`as_text_prompt` needs `[P:"text"]` slots. Received: '
                f"template={self.template!r}"
            )
        config = self.get_config()
        config.pop("tokenizer", None)
        config.pop("name", None)
        config["text_slots"] = "text"
        return type(self)(tokenizer=self.tokenizer, **config)

    @property
    def num_masks(self):
        return sum(1 for kind, _, _ in self._pieces if kind == "mask")

    def prompt_config(self, **kwargs):
        """A `PromptEncoderConfig` with one virtual token per slot.

        Text slots set `prompt_init="text"`. Keyword arguments set the
        config's other fields.
        """
        if self.has_text_slots:
            kwargs.setdefault("prompt_init", "text")
            if self.num_virtual_tokens is None:
                raise ValueError(
                    "The template's text slots are counted in tokens, but "
                    "its tokenizer has no vocabulary yet."
                )
        return PromptEncoderConfig(
            num_virtual_tokens=self.num_virtual_tokens, **kwargs
        )

    @property
    def output_names(self):
        """The keys of the model inputs the template writes."""
        names = ["token_ids", "padding_mask"]
        if self._emits_segment_ids():
            names.append("segment_ids")
        if self.num_masks:
            names.append("mask_positions")
        return names

    def _emits_segment_ids(self):
        if self.segment_ids is None:
            return getattr(self.tokenizer, "sep_token_id", None) is not None
        return self.segment_ids

    def match_inputs(self, input_names):
        """Sets `segment_ids` for a model with `input_names`, or raises.

        Called by the models this template preprocesses for. A template
        left to choose (`segment_ids=None`) writes `segment_ids` exactly
        when the model takes them.
        """
        if self.segment_ids is None:
            self.segment_ids = "segment_ids" in input_names
        # `task_id` is not written: it passes through from the input.
        input_names = [name for name in input_names if name != TASK_ID]
        missing = sorted(set(input_names) - set(self.output_names))
        extra = sorted(set(self.output_names) - set(input_names))
        if missing or extra:
            raise ValueError(
                f"The PromptTemplate writes {sorted(self.output_names)}, but "
                f"the model takes {sorted(input_names)}. Missing: {missing}; "
                f"unexpected: {extra}. (`[MASK]` in the template writes "
                "`mask_positions`; `segment_ids=` sets the segment ids.)"
            )

    # === Packing (TensorFlow, in tf.data or eagerly) ===

    def _standardize(self, x):
        if isinstance(x, dict):
            missing = [name for name in self.field_names if name not in x]
            if missing:
                raise ValueError(
                    f"The template's fields are {self.field_names}; the "
                    f"input lacks {missing}. Received keys: {sorted(x)}"
                )
            return {name: x[name] for name in self.field_names}
        if len(self.field_names) != 1:
            raise ValueError(
                f"The template has fields {self.field_names}: pass a dict "
                f"with those keys. Received: {type(x).__name__}"
            )
        return {self.field_names[0]: x}

    def _trimmer(self):
        if self.truncate == "round_robin":
            return tf_text.RoundRobinTrimmer(self._field_budget)
        return tf_text.WaterfallTrimmer(self._field_budget)

    def _pack(self, fields, assert_counts=True):
        """Packs a dict of `(batch,)` string tensors; TensorFlow ops only."""
        self._prepare()
        texts = []
        spaces = {v: s for k, v, s in self._pieces if k == "field"}
        names = self.field_names
        fields = {name: tf.convert_to_tensor(fields[name]) for name in names}
        if len(names) > 1:
            static = {
                name: value.shape[0] if value.shape.rank else None
                for name, value in fields.items()
            }
            known = {n for n in static.values() if n is not None}
            if len(known) > 1:
                raise ValueError(
                    "The template's fields must have the same number of "
                    f"rows. Received: {_field_sizes(static)}"
                )
            # At run time too, before any op reads the rows (rows past a
            # shorter field's end would be read, or the process aborted).
            first = names[0]
            rows = tf.shape(fields[first], out_type="int64")[0]
            checks = [
                tf.debugging.assert_equal(
                    tf.shape(fields[name], out_type="int64")[0],
                    rows,
                    message=(
                        f"The template's fields must have the same number "
                        f"of rows: field {name!r} has a different number "
                        f"than field {first!r}."
                    ),
                )
                for name in names[1:]
            ]
            with tf.control_dependencies(checks):
                fields = {k: tf.identity(v) for k, v in fields.items()}
        for name in names:
            text = fields[name]
            if self._spaced and spaces[name]:
                # Empty text stays empty: a lone space would be a token.
                text = tf.where(
                    tf.strings.length(text) > 0,
                    tf.strings.join([" ", text]),
                    text,
                )
            texts.append(text)
        # Every field's rows in one tokenizer call (each row is tokenized
        # on its own either way): a tokenizer's graph is most of a trace.
        rows = tf.shape(texts[0], out_type="int64")[0]
        tokens = self.tokenizer(
            tf.concat(texts, 0) if len(names) > 1 else texts[0]
        )
        if not isinstance(tokens, tf.RaggedTensor):
            tokens = tf.RaggedTensor.from_tensor(tokens)
        tokens = tf.cast(tokens, "int32")
        texts = [tokens[i * rows : (i + 1) * rows] for i in range(len(names))]
        texts = dict(zip(names, self._trimmer().trim(texts)))
        batch_size = texts[self.field_names[0]].nrows()

        def constant(ids):
            ids = tf.constant(ids, "int32", shape=(len(ids),))
            tiled = tf.tile(ids[None], [batch_size, 1])
            return tf.RaggedTensor.from_tensor(
                tiled,
                row_splits_dtype=texts[self.field_names[0]].row_splits.dtype,
            )

        parts, mask_positions = [], []
        if self._start_id is not None:
            parts.append(constant([self._start_id]))
        for (kind, value, _), ids in zip(self._pieces, self._constant_ids):
            if kind == "mask":
                offset = (
                    tf.add_n([p.row_lengths() for p in parts]) if parts else 0
                )
                mask_positions.append(tf.cast(offset, "int32"))
            parts.append(texts[value] if ids is None else constant(ids))
        if self._end_id is not None:
            parts.append(constant([self._end_id]))
        ragged = tf.concat(parts, axis=1)
        length = self.sequence_length
        token_ids = ragged.to_tensor(
            default_value=self._pad_id, shape=[None, length]
        )
        outputs = {
            "token_ids": token_ids,
            "padding_mask": tf.sequence_mask(ragged.row_lengths(), length),
        }
        if self.placeholder_id >= 0 and assert_counts:
            counts = tf.reduce_sum(
                tf.cast(tf.equal(token_ids, self.placeholder_id), "int32"), 1
            )
            with tf.control_dependencies(
                [
                    tf.debugging.assert_equal(
                        counts,
                        self.num_virtual_tokens,
                        message=(
                            f"Field text tokenized to placeholder_id="
                            f"{self.placeholder_id}: rows must hold exactly "
                            f"{self.num_virtual_tokens} placeholders."
                        ),
                    )
                ]
            ):
                outputs["token_ids"] = tf.identity(token_ids)
        if self._emits_segment_ids():
            outputs["segment_ids"] = tf.zeros_like(token_ids)
        if mask_positions:
            outputs["mask_positions"] = tf.stack(mask_positions, axis=1)
        return outputs

    def _pack_any_rank(self, fields):
        scalar = fields[self.field_names[0]].shape.rank == 0
        if scalar:
            fields = {k: tf.reshape(v, [1]) for k, v in fields.items()}
        outputs = self._pack(fields)
        if scalar:
            outputs = {k: v[0] for k, v in outputs.items()}
        return outputs

    def call(self, x, y=None, sample_weight=None):
        outputs = self._call(x)
        if isinstance(x, dict) and TASK_ID in x:
            outputs[TASK_ID] = x[TASK_ID]
        return keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)

    def _call(self, x):
        fields = self._standardize(x)
        if tf.inside_function():
            fields = {k: tf.convert_to_tensor(v) for k, v in fields.items()}
            for name, value in fields.items():
                _check_field_values(name, value)
            outputs = self._pack_any_rank(fields)
        else:
            for name, value in fields.items():
                _check_field_values(name, value)
            fields = {
                k: v if isinstance(v, tf.Tensor) else tf.constant(v)
                for k, v in fields.items()
            }
            scalar = fields[self.field_names[0]].shape.rank == 0
            fields = {k: tf.reshape(v, [-1]) for k, v in fields.items()}
            sizes = {k: int(v.shape[0]) for k, v in fields.items()}
            if len(set(sizes.values())) > 1:
                raise ValueError(
                    "The template's fields must have the same number of "
                    f"rows. Received: {_field_sizes(sizes)}"
                )
            outputs = {k: v.numpy() for k, v in self._packed(fields).items()}
            if self.placeholder_id >= 0:
                check_placeholder_counts(
                    outputs["token_ids"],
                    self.placeholder_id,
                    self.num_virtual_tokens,
                )
            outputs = {
                k: keras.ops.convert_to_tensor(v[0] if scalar else v)
                for k, v in outputs.items()
            }
        return outputs

    def _packed(self, fields, remade=False):
        """`_pack` in a `tf.function` (keras-hub tokenizers run their
        TensorFlow path in graphs)."""
        if self._packing_function is None:
            # One trace for every number of rows.
            signature = {
                name: tf.TensorSpec([None], tf.string)
                for name in self.field_names
            }
            self._packing_function = tf.function(
                functools.partial(self._pack, assert_counts=False),
                input_signature=[signature],
            )
        try:
            return self._packing_function(fields)
        except tf.errors.NotFoundError as error:
            # `keras.utils.set_random_seed` (TensorFlow's `set_seed`) drops
            # the SentencePiece op's resource that the tokenizer made
            # eagerly, and every graph then fails to find it: remake it
            # from the tokenizer's own proto and trace again, once.
            if (
                remade
                or "Sentencepiece" not in str(error)
                or not _remake_sentencepiece(self.tokenizer)
            ):
                raise
            self._packing_function = None
            return self._packed(fields, remade=True)

    @classmethod
    def from_preset(
        cls,
        preset,
        template=None,
        config_file="preprocessor.json",
        **kwargs,
    ):
        """A template from a keras-hub preset, as keras-hub's
        `Preprocessor.from_preset`: the `PromptTemplate` a preset holds
        (one written by a p-tuned task's `save_to_preset`) loads back whole;
        with `template=`, a new template over the preset's tokenizer.

        Args:
            preset: a keras-hub preset name, `hf://`/`kaggle://` handle or
                local preset directory.
            template: `None` (load the preset's own template) or str, a new
                template (slots, fields, anchors) over the preset's
                tokenizer.
            config_file: the preprocessor's file in the preset.
            **kwargs: constructor arguments (`sequence_length`, ...),
                overriding the saved ones.
        """
        from keras_ptuning.compat import keras_internals

        if template is not None:
            if not isinstance(template, str):
                raise TypeError(
                    "`template` must be a str or None. Received: template "
                    f"of type {type(template).__name__}"
                )
            tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
            return cls(template, tokenizer, **kwargs)
        saved = keras_internals.preset_config_class(preset, config_file)
        if saved is None or not issubclass(saved, cls):
            found = "none" if saved is None else saved.__name__
            raise ValueError(
                f"{preset!r} holds no PromptTemplate in {config_file!r} "
                f"(found: {found}): pass `template=` to build one over its "
                "tokenizer. Received: template=None"
            )
        return keras_internals.preset_loader(preset).load_preprocessor(
            cls, config_file, **kwargs
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "template": self.template,
                "sequence_length": self.sequence_length,
                "placeholder_id": self.placeholder_id,
                "add_start_token": self.add_start_token,
                "add_end_token": self.add_end_token,
                "truncate": self.truncate,
                "segment_ids": self.segment_ids,
                "text_slots": self.text_slots,
            }
        )
        return config


def _remake_sentencepiece(tokenizer):
    """Rebuilds a keras-hub SentencePiece tokenizer's TensorFlow op from its
    proto; whether it could."""
    proto = getattr(tokenizer, "proto", None)
    if proto is None or not hasattr(tokenizer, "set_proto"):
        return False
    tokenizer.set_proto(proto)
    return True

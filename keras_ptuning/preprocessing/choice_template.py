"""`ChoiceTemplate`: a prompt template followed by candidate continuations."""

import re
import string

import keras
import keras_hub
import numpy as np

from keras_ptuning.input_validation import check_positive_int
from keras_ptuning.preprocessing.prompt_template import PromptTemplate

CHOICE_INPUTS = ("choice_positions", "choice_ids", "choice_mask")


# A choice's `{field}`s: an identifier, an optional conversion and a format
# spec (for strings) without fields of its own.
CONVERSIONS = (None, "r", "s", "a")
_SPEC_NUMBER = re.compile(r"\d+")
_MAX_SPEC_DIGITS = 4  # Widths up to 9999 characters.


def _choice_problem(choice):
    """Why `choice` is not a string of plain `{field}`s, or `None`."""
    try:
        parsed = list(string.Formatter().parse(choice))
    except ValueError as error:
        return f"{error}; write a literal brace as '{{{{' or '}}}}'"
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        field = "{" + name + "}"
        if not name.isidentifier():
            return (
                f"{field} is not a field name (fields are named by "
                "identifiers, not by position, index or attribute)"
            )
        if conversion not in CONVERSIONS:
            return f"!{conversion} is not a conversion (use !r, !s or !a)"
        if "{" in spec or "}" in spec:
            return f"the format spec {spec!r} of {field} holds a field"
        numbers = _SPEC_NUMBER.findall(spec)
        if any(len(number) > _MAX_SPEC_DIGITS for number in numbers):
            return f"the format spec {spec!r} of {field} is too wide"
        try:
            format("", spec)  # Field values are strings.
        except ValueError as error:
            return f"the format spec {spec!r} of {field}: {error}"
    return None


def _choice_fields(choice):
    return [name for _, name, _, _ in string.Formatter().parse(choice) if name]


def _as_strings(values):
    values = np.asarray(values, dtype=object).reshape(-1)
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


@keras.saving.register_keras_serializable(package="keras_ptuning")
class ChoiceTemplate(keras_hub.models.Preprocessor):
    """Model inputs that score candidate continuations of a prompt.

    Classification and multiple choice with a causal LM read the same way:
    each class is a *choice*, a continuation of the prompt, and the model
    scores it by its log-likelihood after the prompt. A choice is a string:
    a label word (`" yes"`, `" no"`: the verbalizer of PET-style patterns;
    one token or several), or a continuation built from the example's
    fields (`" {choice1}"`, COPA). Strings are tokenized as written, so a
    word that follows a space carries it (`" yes"`).

    The context is a `keras_ptuning.PromptTemplate` (virtual-token slots,
    anchors, fields; `add_end_token=False`, no `[MASK]`). When every choice
    is a fixed string of one token, all choices are read from one row (the
    logits after the prompt); otherwise each choice gets its own row, the
    prompt followed by the choice's tokens. The output is a dict:

    - `token_ids`, `padding_mask`: `(batch, rows, length)`, right-padded;
      `rows` is 1 or the number of choices, `length` the template's
      `sequence_length` (plus `max_choice_length` when each choice has a
      row).
    - `choice_positions`: `(batch, num_choices, max_choice_length)`, for
      each choice token the position (in the example's rows laid end to
      end, `row * length + position`) whose next-token logits predict it.
    - `choice_ids`, `choice_mask`: the choice tokens and which are real.

    It runs eagerly on NumPy (not inside `tf.data`): the task models call
    it once on raw text before `fit`, `evaluate` and `predict`.

    Args:
        template: a `keras_ptuning.PromptTemplate` (or its config).
        choices: a list of strings, one per class (class index order), or a
            dict of class name to string. Strings may hold `{field}`s of
            the input. A single choice is scored alone: its likelihood as
            the continuation (e.g. a candidate referent, called right above
            a threshold); its labels are 1 (right) or 0 (wrong).
        max_choice_length: int >= 1. Choices are cut to this many tokens.
            Defaults to 16.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    from keras_ptuning.presets import smollm2_preset_dir

    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(smollm2_preset_dir())
    template = keras_ptuning.PromptTemplate(
        '{premise} [P:"Question:"] {hypothesis}? [P:"Answer:"]',
        tokenizer,
        sequence_length=128,
        add_end_token=False,
    )
    rte = keras_ptuning.ChoiceTemplate(
        template, {"entailment": " yes", "not_entailment": " no"}
    )
    inputs = rte({"premise": ["A man sleeps."], "hypothesis": ["A man."]})
    ```
    """

    def __init__(self, template, choices, max_choice_length=16, **kwargs):
        kwargs.pop("tokenizer", None)
        super().__init__(**kwargs)
        if isinstance(template, dict):
            template = keras.saving.deserialize_keras_object(template)
        if not isinstance(template, PromptTemplate):
            raise TypeError(
                "`template` must be a keras_ptuning.PromptTemplate. "
                f"Received: template of type {type(template).__name__}"
            )
        if template.num_masks or template.add_end_token:
            raise ValueError(
                "A choice follows the template's last token: build the "
                "PromptTemplate with add_end_token=False and without "
                f"[MASK]. Received: template={template.template!r}, "
                f"add_end_token={template.add_end_token}"
            )
        if isinstance(choices, dict):
            names, texts = list(choices), list(choices.values())
        elif isinstance(choices, (list, tuple)):
            names, texts = None, list(choices)
        else:
            raise TypeError(
                "`choices` must be a list of strings or a dict of class name "
                f"to string. Received: choices={choices!r}"
            )
        if not texts or not all(
            isinstance(t, str) and t.strip() for t in texts
        ):
            raise ValueError(
                "`choices` must hold at least 1 non-empty string. Received: "
                f"choices={choices!r}"
            )
        for text in texts:
            problem = _choice_problem(text)
            if problem is not None:
                raise ValueError(
                    f"Invalid choice {text!r} in `choices`: {problem}. A "
                    "choice's fields are `{name}`s of the input. Received: "
                    f"choices={choices!r}"
                )
        check_positive_int("max_choice_length", max_choice_length)
        self.template = template
        self.tokenizer = template.tokenizer
        self.choices = dict(choices) if names else texts
        self.class_names = names
        self.choice_texts = texts
        self.max_choice_length = max_choice_length
        self.choice_fields = sorted(
            {name for text in texts for name in _choice_fields(text)}
        )
        self._fixed_ids = None
        self.built = True  # No state; see `PromptTemplate`.

    @property
    def num_choices(self):
        return len(self.choice_texts)

    @property
    def field_names(self):
        """The input fields: the template's, then the choices' own."""
        names = list(self.template.field_names)
        return names + [n for n in self.choice_fields if n not in names]

    @property
    def shares_one_row(self):
        """Whether all choices are read from one row (fixed one-token
        choices: the logits after the prompt score them all)."""
        fixed = self._fixed_choice_ids()
        return fixed is not None and all(len(ids) == 1 for ids in fixed)

    @property
    def output_names(self):
        return ["token_ids", "padding_mask"] + list(CHOICE_INPUTS)

    def _tokenize(self, texts):
        ids = self.tokenizer(texts)
        if hasattr(ids, "to_list"):  # A tf.RaggedTensor.
            ids = ids.to_list()
        elif not isinstance(ids, list):
            ids = list(keras.ops.convert_to_numpy(ids))
        return [[int(i) for i in np.asarray(row).reshape(-1)] for row in ids]

    def _fixed_choice_ids(self):
        if self.choice_fields:
            return None
        if self._fixed_ids is None:
            self._fixed_ids = [
                ids[: self.max_choice_length]
                for ids in self._tokenize(self.choice_texts)
            ]
        return self._fixed_ids

    def label_ids(self, labels):
        """Class indices of `labels` (class names of a dict `choices`, or
        ints), as an int32 array."""
        labels = np.asarray(labels, dtype=object).reshape(-1)
        out = []
        for label in labels:
            if isinstance(label, (bytes, str)) and self.class_names:
                label = label.decode() if isinstance(label, bytes) else label
                if label not in self.class_names:
                    raise ValueError(
                        f"Unknown label {label!r}: the classes are "
                        f"{self.class_names}."
                    )
                out.append(self.class_names.index(label))
                continue
            if isinstance(label, (bool, np.bool_)) or not isinstance(
                label, (int, np.integer)
            ):
                raise ValueError(
                    f"Labels must be class indices or class names. Received:"
                    f" {label!r}"
                )
            # One choice: 1 where it is right, 0 where it is not.
            limit = max(self.num_choices, 2)
            if not 0 <= int(label) < limit:
                raise ValueError(f"Label {int(label)} is outside [0, {limit}).")
            out.append(int(label))
        return np.asarray(out, "int32")

    def _fields(self, x):
        if not isinstance(x, dict):
            if len(self.field_names) != 1:
                raise ValueError(
                    f"The template and choices read fields "
                    f"{self.field_names}: pass a dict with those keys. "
                    f"Received: {type(x).__name__}"
                )
            x = {self.field_names[0]: x}
        missing = [name for name in self.field_names if name not in x]
        if missing:
            raise ValueError(
                f"The template and choices read fields {self.field_names}; "
                f"the input lacks {missing}. Received keys: {sorted(x)}"
            )
        fields = {name: _as_strings(x[name]) for name in self.field_names}
        sizes = {name: len(values) for name, values in fields.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                "The template's and choices' fields must have the same "
                "number of rows. Received: "
                + ", ".join(
                    f"field {k!r} has {n} rows" for k, n in sizes.items()
                )
            )
        return fields

    def _choice_ids(self, fields, batch_size):
        """`[choice][row]` token-id lists."""
        fixed = self._fixed_choice_ids()
        if fixed is not None:
            return [[ids] * batch_size for ids in fixed]
        out = []
        for text in self.choice_texts:
            texts = [
                text.format(**{n: fields[n][b] for n in self.choice_fields})
                for b in range(batch_size)
            ]
            out.append(
                [ids[: self.max_choice_length] for ids in self._tokenize(texts)]
            )
        return out

    def call(self, x, y=None, sample_weight=None):
        import tensorflow as tf

        if tf.inside_function():
            raise TypeError(
                "ChoiceTemplate runs eagerly on NumPy, not inside tf.data or "
                "tf.function: pass raw text (lists or arrays of strings) to "
                "the model's fit, evaluate and predict."
            )
        fields = self._fields(x)
        context = self.template(
            {name: fields[name] for name in self.template.field_names}
        )
        context_ids = keras.ops.convert_to_numpy(context["token_ids"])
        context_mask = keras.ops.convert_to_numpy(context["padding_mask"])
        batch_size, context_length = context_ids.shape
        lengths = context_mask.astype(bool).sum(axis=1)
        choice_ids = self._choice_ids(fields, batch_size)
        for c, rows in enumerate(choice_ids):
            for b, ids in enumerate(rows):
                if not ids:
                    raise ValueError(
                        f"Choice {c} of row {b} tokenizes to no tokens: "
                        f"{self.choice_texts[c]!r}"
                    )
        shared = self.shares_one_row
        num_rows = 1 if shared else self.num_choices
        length = context_length + (0 if shared else self.max_choice_length)
        pad = self.template._pad_id
        token_ids = np.full((batch_size, num_rows, length), pad, "int32")
        padding_mask = np.zeros((batch_size, num_rows, length), "int32")
        width = self.max_choice_length
        positions = np.zeros((batch_size, self.num_choices, width), "int32")
        ids_out = np.zeros((batch_size, self.num_choices, width), "int32")
        mask_out = np.zeros((batch_size, self.num_choices, width), "int32")
        for b in range(batch_size):
            n = int(lengths[b])
            for r in range(num_rows):
                token_ids[b, r, :n] = context_ids[b, :n]
                padding_mask[b, r, :n] = 1
            for c in range(self.num_choices):
                ids = choice_ids[c][b]
                k = len(ids)
                ids_out[b, c, :k] = ids
                mask_out[b, c, :k] = 1
                if shared:
                    positions[b, c, 0] = n - 1
                    continue
                # Row c: the prompt, then the choice; token j of the choice
                # is predicted at the position before it.
                token_ids[b, c, n : n + k] = ids
                padding_mask[b, c, n : n + k] = 1
                positions[b, c, :k] = c * length + n - 1 + np.arange(k)
        outputs = {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "choice_positions": positions,
            "choice_ids": ids_out,
            "choice_mask": mask_out,
        }
        if y is not None:
            y = self.label_ids(y)
        return keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.pop("tokenizer", None)
        config.update(
            {
                "template": keras.saving.serialize_keras_object(self.template),
                "choices": self.choices,
                "max_choice_length": self.max_choice_length,
            }
        )
        return config

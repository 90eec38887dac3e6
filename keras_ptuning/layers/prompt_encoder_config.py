"""`PromptEncoderConfig`: the hyperparameters of a P-tuning prompt encoder."""

import dataclasses
import numbers

REPARAMETERIZATION_TYPES = ("MLP", "LSTM")
PROMPT_INITS = ("random", "text")


def _check_int(name, value, minimum, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"`{name}` must be an integer"
            f"{' or None' if allow_none else ''}. Received: {name}={value!r}"
        )
    if value < minimum:
        raise ValueError(
            f"`{name}` must be >= {minimum}. Received: {name}={value!r}"
        )


@dataclasses.dataclass(frozen=True)
class PromptEncoderConfig:
    """Configuration of a P-tuning prompt encoder.

    The field names and meanings follow HuggingFace PEFT's
    `PromptEncoderConfig`, so a PEFT user can carry their settings over.
    Unlike PEFT, `encoder_num_layers` is honoured for the MLP encoder too.

    Args:
        num_virtual_tokens: int >= 1. The number of virtual tokens.
        token_dim: int or `None`. The embedding size of the virtual tokens;
            `None` takes the backbone's hidden size when the config is used
            with a backbone.
        encoder_reparameterization_type: `"MLP"` (default) or `"LSTM"`,
            case-insensitive. `"MLP"` maps each virtual-token embedding
            through an MLP; `"LSTM"` runs bidirectional LSTMs over the
            virtual-token sequence followed by a two-layer MLP head.
        encoder_hidden_size: int or `None`. The hidden width of the encoder;
            `None` means `token_dim`.
        encoder_num_layers: int >= 1, defaults to 2. For `"LSTM"`, the number
            of stacked bidirectional LSTM layers. For `"MLP"`, the number of
            hidden `Dense` + ReLU layers, so the default 2 gives PEFT's MLP
            `Dense(h) ReLU Dense(h) ReLU Dense(token_dim)`.
        encoder_dropout: float in `[0, 1)`, defaults to 0. For `"LSTM"`, the
            dropout between stacked LSTM layers (as in PEFT); for `"MLP"`,
            the dropout after each hidden activation.
        prompt_init: `"random"` (default: PEFT's encoder, a random start) or
            `"text"`: the virtual tokens start as the token embeddings of a
            text (set with `PTuningBackbone.init_prompt_from_token_ids`, or
            by a `PromptTemplate` with `[P:"text"]` slots), so that before
            training the model reads exactly that text. The encoder then
            adds its output to that fixed start, and its output layer
            starts at zero (PEFT has no such option for P-tuning; its prompt
            tuning's `prompt_tuning_init="TEXT"` is the same idea).

    Example:
    ```python
    config = keras_ptuning.PromptEncoderConfig(
        num_virtual_tokens=20, encoder_hidden_size=128
    )
    config.to_dict()
    keras_ptuning.PromptEncoderConfig.from_dict(config.to_dict()) == config
    ```
    """

    num_virtual_tokens: int
    token_dim: int | None = None
    encoder_reparameterization_type: str = "MLP"
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0
    prompt_init: str = "random"

    def __post_init__(self):
        _check_int("num_virtual_tokens", self.num_virtual_tokens, 1)
        _check_int("token_dim", self.token_dim, 1, allow_none=True)
        _check_int(
            "encoder_hidden_size", self.encoder_hidden_size, 1, allow_none=True
        )
        _check_int("encoder_num_layers", self.encoder_num_layers, 1)
        kind = self.encoder_reparameterization_type
        # PEFT passes an enum whose value is the string; accept its `.value`.
        kind = getattr(kind, "value", kind)
        if not isinstance(kind, str) or kind.upper() not in (
            REPARAMETERIZATION_TYPES
        ):
            raise ValueError(
                "`encoder_reparameterization_type` must be one of "
                f"{REPARAMETERIZATION_TYPES} (case-insensitive). Received: "
                f"encoder_reparameterization_type={kind!r}"
            )
        object.__setattr__(
            self, "encoder_reparameterization_type", kind.upper()
        )
        dropout = self.encoder_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise ValueError(
                "`encoder_dropout` must be a float in [0, 1). Received: "
                f"encoder_dropout={dropout!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                "`encoder_dropout` must be in [0, 1). Received: "
                f"encoder_dropout={dropout!r}"
            )
        object.__setattr__(self, "encoder_dropout", float(dropout))
        if (
            not isinstance(self.prompt_init, str)
            or self.prompt_init not in PROMPT_INITS
        ):
            raise ValueError(
                f"`prompt_init` must be one of {PROMPT_INITS}. Received: "
                f"prompt_init={self.prompt_init!r}"
            )
        for name in ("num_virtual_tokens", "token_dim", "encoder_hidden_size"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))
        object.__setattr__(
            self, "encoder_num_layers", int(self.encoder_num_layers)
        )

    @property
    def hidden_size(self):
        """The encoder's hidden width: `encoder_hidden_size` or `token_dim`."""
        if self.encoder_hidden_size is not None:
            return self.encoder_hidden_size
        return self.token_dim

    def with_token_dim(self, token_dim):
        """Returns this config with `token_dim` filled in or checked.

        A config whose `token_dim` is `None` takes `token_dim`; one that
        names a different size raises a `ValueError`.
        """
        if self.token_dim is None:
            return dataclasses.replace(self, token_dim=token_dim)
        if self.token_dim != token_dim:
            raise ValueError(
                f"`token_dim` must equal the backbone's hidden size "
                f"({token_dim}) or be None. Received: "
                f"token_dim={self.token_dim}"
            )
        return self

    def to_dict(self):
        """Returns the config as a JSON-serializable dict.

        `prompt_init` is written only when it is not the default, so the
        dict of a PEFT-style config has PEFT's fields alone (and files
        written before the field existed compare equal).
        """
        config = dataclasses.asdict(self)
        if config["prompt_init"] == "random":
            del config["prompt_init"]
        return config

    @classmethod
    def from_dict(cls, config):
        """Creates a config from a dict written by `to_dict()`."""
        if isinstance(config, cls):
            return config
        if not isinstance(config, dict):
            raise TypeError(
                "`config` must be a dict or a `PromptEncoderConfig`. "
                f"Received: config={config!r} of type {type(config).__name__}"
            )
        fields = {field.name for field in dataclasses.fields(cls)}
        # `repr`: keys of mixed types (1 and "a") do not sort by value.
        unknown = sorted(set(config) - fields, key=repr)
        if unknown:
            raise ValueError(
                f"Unknown `PromptEncoderConfig` fields: {unknown}. "
                f"Expected fields: {sorted(fields)}"
            )
        return cls(**config)

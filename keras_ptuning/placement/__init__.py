"""Where virtual tokens go (prepended or at slots) and where they come from
(the encoder or a collapsed table), composed by `PromptInjection`."""

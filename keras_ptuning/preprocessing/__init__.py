"""Raw text to model inputs: prompt templates, choice templates, verbalizers,
vocabulary helpers and length bucketing."""

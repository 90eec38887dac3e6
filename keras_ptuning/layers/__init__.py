"""Prompt layers: the prompt encoder and its config, multi-task tables, task
heads and pooling."""

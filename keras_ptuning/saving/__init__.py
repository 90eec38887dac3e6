"""Adapters (this library's and PEFT's), SavedModel export and prompt-only
presets."""

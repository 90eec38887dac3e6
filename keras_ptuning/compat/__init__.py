"""Compatibility with Keras and keras-hub internals: every private API relied
on, and fixes to keras-hub."""

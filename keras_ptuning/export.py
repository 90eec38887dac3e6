"""`python -m keras_ptuning.export`: the SavedModel export command line.

The code is `keras_ptuning.saving.export`; this module keeps the command
(and `keras_ptuning.export.export_saved_model`) where they were.
"""

import runpy

from keras_ptuning.saving.export import export_saved_model

__all__ = ["export_saved_model"]

if __name__ == "__main__":
    runpy.run_module("keras_ptuning.saving.export", run_name="__main__")

"""What a p-tuned preset costs on disk: whole, prompt-only, and prompt-only
with the encoder.

Builds a `PTuningTextClassifier` on all-MiniLM-L6-v2 (20 virtual tokens, the
default MLP encoder, 2 classes), writes it with `save_to_preset` the three
ways and prints every file's size.

    python benchmarks/preset_sizes.py
"""

import os
import tempfile

import keras_ptuning
from keras_ptuning.presets import minilm_preset_dir


def _sizes(directory):
    return {
        os.path.relpath(os.path.join(root, name), directory): os.path.getsize(
            os.path.join(root, name)
        )
        for root, _, names in os.walk(directory)
        for name in names
    }


def main():
    base = minilm_preset_dir()
    model = keras_ptuning.PTuningTextClassifier.from_preset(
        base, num_classes=2, num_virtual_tokens=20
    )
    work = tempfile.mkdtemp()
    variants = {
        "whole": {},
        "prompt-only": {"base_preset": base},
        "prompt-only, with the encoder": {
            "base_preset": base,
            "include_encoder": True,
        },
    }
    for name, kwargs in variants.items():
        directory = os.path.join(work, name.replace(" ", "_"))
        model.save_to_preset(directory, **kwargs)
        sizes = _sizes(directory)
        files = ", ".join(f"{k} {v:,}" for k, v in sorted(sizes.items()))
        print(f"{name}: {sum(sizes.values()):,} bytes ({files})")


if __name__ == "__main__":
    main()

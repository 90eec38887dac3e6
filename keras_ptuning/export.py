"""TensorFlow SavedModel export of P-tuning models, from any backend.

The one backend-specific module of the package. Keras' own
`model.export(format="tf_saved_model")` cannot export these models from JAX
(jax2tf fails on keras-hub's position-embedding slice with a symbolic
sequence length) or from PyTorch (it needs `torch_xla`). So the export is
always traced by TensorFlow: in this process on the TensorFlow backend,
otherwise in a child process that rebuilds the model under the TensorFlow
backend from a `.keras` file written here. The prompt encoder is collapsed
first (unless the model already runs on its collapsed table): the
SavedModel holds the `(num_virtual_tokens, token_dim)` prompt table, not
the MLP/LSTM.

    python -m keras_ptuning.export MODEL.keras OUTPUT_DIR [MODEL OUTPUT ...]
"""

import os
import shutil
import subprocess
import sys
import tempfile

import keras

from keras_ptuning.ptuning_backbone import TASK_ID
from keras_ptuning.ptuning_backbone import PTuningBackbone
from keras_ptuning.ptuning_causal_lm import PTuningCausalLM
from keras_ptuning.ptuning_masked_lm import PTuningMaskedLM
from keras_ptuning.ptuning_next_token_lm import PTuningNextTokenLM
from keras_ptuning.ptuning_text_classifier import PTuningTextClassifier

EXPORTABLE = (
    PTuningTextClassifier,
    PTuningCausalLM,
    PTuningMaskedLM,
    PTuningNextTokenLM,
    PTuningBackbone,
)


def export_saved_model(model, path, overwrite=False):
    """Exports a P-tuning model as a TensorFlow SavedModel.

    Works on the TensorFlow, JAX and PyTorch backends. The SavedModel has one
    signature, `serving_default`, whose inputs are the model's input names
    (`token_ids`, `padding_mask`, `segment_ids` where the backbone has it,
    and `mask_positions` for a `PTuningMaskedLM`), int32 of shape
    `(batch, sequence)` with both dimensions dynamic (sequence up to the
    backbone's limit, minus the virtual tokens when they are prepended), and
    whose outputs are named: `logits` and `probabilities` for a
    `PTuningTextClassifier` and for a `PTuningMaskedLM` with a verbalizer
    (class scores), `logits` for a `PTuningCausalLM` (the forward pass;
    generation is not exported) and for a `PTuningMaskedLM` without one
    (vocabulary logits at the masks), `logits` and `probabilities` of
    the next token for a `PTuningNextTokenLM`, and the backbone's outputs
    (`sequence_output`, and `pooled_output` where it has one) for a
    `PTuningBackbone`. With prompt slots, `token_ids` carry the placeholder
    id and the graph substitutes the prompt itself. A multi-task model also
    takes `task_id`, int32 of shape `(batch,)`, and keeps its per-task
    prompt encoders in the graph (a single-task model's is collapsed).
    TensorFlow Serving can serve it.

    Args:
        model: a built `PTuningTextClassifier`, `PTuningCausalLM`,
            `PTuningMaskedLM`, `PTuningNextTokenLM` or `PTuningBackbone`.
        path: str. The SavedModel directory to write.
        overwrite: bool. Replace `path` if it exists. Defaults to `False`.

    The model itself is not changed. Nothing is left at `path` if the export
    fails: it is written to a sibling temporary directory and moved into
    place at the end.

    Example:
    ```python
    keras_ptuning.export_saved_model(classifier, "exported/sst2")
    served = tf.saved_model.load("exported/sst2").signatures["serving_default"]
    served(token_ids=..., segment_ids=..., padding_mask=...)["probabilities"]
    ```
    """
    if not isinstance(model, EXPORTABLE):
        raise TypeError(
            "`model` must be a PTuningTextClassifier, PTuningCausalLM, "
            "PTuningMaskedLM, PTuningNextTokenLM or PTuningBackbone. "
            "Received: model of type "
            f"{type(model).__name__}"
        )
    if not model.built:
        raise ValueError(f"`model` must be built. Received: {model.name}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"`path` must be a directory path. Received: {path!r}")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"`path` exists; pass overwrite=True to replace it. Received: "
            f"path={path!r}"
        )
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        output = os.path.join(staging, "saved_model")
        if keras.config.backend() == "tensorflow":
            write_saved_model(model, output)
        else:
            _export_in_tensorflow_process(model, staging, output)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(output, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _export_in_tensorflow_process(model, staging, output):
    keras_file = os.path.join(staging, "model.keras")
    model.save(keras_file)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    result = subprocess.run(
        [sys.executable, "-m", "keras_ptuning.export", keras_file, output],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            "SavedModel export failed in the TensorFlow process:\n"
            + result.stderr[-4000:]
        )


def _serving_outputs(model, outputs):
    from keras import ops

    classes = isinstance(model, PTuningTextClassifier) or (
        isinstance(model, PTuningMaskedLM) and model.verbalizer is not None
    )
    if classes:
        activation = model.activation
        if activation is keras.activations.softmax:
            return {"logits": ops.log(outputs), "probabilities": outputs}
        return {"logits": outputs, "probabilities": ops.softmax(outputs)}
    if isinstance(model, PTuningNextTokenLM):
        return {"logits": outputs, "probabilities": ops.softmax(outputs)}
    if isinstance(model, (PTuningCausalLM, PTuningMaskedLM)):
        return {"logits": outputs}
    if isinstance(outputs, dict):
        return dict(outputs)
    return {"sequence_output": outputs}


def write_saved_model(model, output):
    """Traces `model` with TensorFlow and writes the SavedModel (TF only)."""
    import tensorflow as tf

    if keras.config.backend() != "tensorflow":
        raise RuntimeError("write_saved_model needs the TensorFlow backend.")
    ptuning = model._ptuning_backbone()
    injection = ptuning.prompt_injection
    source = injection.prompt_source
    saved_table = keras.ops.convert_to_numpy(injection.prompt_table)
    # A single prompt goes in as a table: a model that already runs on one
    # keeps it (never re-collapsed from an idle encoder). A multi-task
    # prompt keeps its encoders (one per task) in the graph.
    collapse = source == "encoder" and not ptuning.is_multi_task
    encoder_ids = (
        set()
        if ptuning.is_multi_task
        else {id(v) for v in ptuning.prompt_encoder.weights}
    )
    try:
        if collapse:
            ptuning.collapse_prompt()
        input_names = getattr(model, "model_input_names", ptuning.input_names)
        signature = {
            name: tf.TensorSpec(
                [None] if name == TASK_ID else [None, None], tf.int32, name=name
            )
            for name in input_names
        }

        @tf.function(input_signature=[signature])
        def serve(inputs):
            return _serving_outputs(model, model(inputs, training=False))

        module = tf.Module()
        module.model_variables = [
            v.value for v in model.variables if id(v) not in encoder_ids
        ]
        module.serve = serve
        tf.saved_model.save(
            module, output, signatures={"serving_default": serve}
        )
    finally:
        if collapse:
            injection.prompt_table.assign(saved_table)
            injection.set_prompt_source(source)


if __name__ == "__main__":
    # Pairs of `.keras` file and output directory: one TensorFlow process
    # (its start-up costs seconds) exports any number of models.
    paths = sys.argv[1:]
    if not paths or len(paths) % 2:
        sys.exit("usage: python -m keras_ptuning.export MODEL OUTPUT ...")
    for keras_file, output in zip(paths[::2], paths[1::2]):
        write_saved_model(keras.saving.load_model(keras_file), output)

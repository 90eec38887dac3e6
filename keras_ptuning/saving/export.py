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

    python -m keras_ptuning.export [--include-preprocessing]
        [--max-length N] MODEL.keras OUTPUT_DIR [MODEL OUTPUT ...]

(`--max-length` is the `generate` signature's, for the causal LMs among
the models.)
"""

import os
import shutil
import subprocess
import sys
import tempfile

import keras

from keras_ptuning.backbones.ptuning_backbone import TASK_ID
from keras_ptuning.backbones.ptuning_backbone import PTuningBackbone
from keras_ptuning.input_validation import directories_to_create
from keras_ptuning.input_validation import remove_created_directories
from keras_ptuning.models.ptuning_causal_lm import PTuningCausalLM
from keras_ptuning.models.ptuning_masked_lm import PTuningMaskedLM
from keras_ptuning.models.ptuning_next_token_lm import PTuningNextTokenLM
from keras_ptuning.models.ptuning_text_classifier import PTuningTextClassifier

EXPORTABLE = (
    PTuningTextClassifier,
    PTuningCausalLM,
    PTuningMaskedLM,
    PTuningNextTokenLM,
    PTuningBackbone,
)


def export_saved_model(
    model, path, overwrite=False, include_preprocessing=False, max_length=None
):
    """Exports a P-tuning model as a TensorFlow SavedModel.

    Works on the TensorFlow, JAX and PyTorch backends. The SavedModel has one
    signature, `serving_default`, whose inputs are the model's input names
    (`token_ids`, `padding_mask`, `segment_ids` where the backbone has it,
    and `mask_positions` for a `PTuningMaskedLM`), int32 of shape
    `(batch, sequence)` with both dimensions dynamic (sequence up to the
    backbone's limit, minus the virtual tokens when they are prepended), and
    whose outputs are named: `logits` and `probabilities` for a
    `PTuningTextClassifier` and for a `PTuningMaskedLM` with a verbalizer
    (class scores; under an activation other than a softmax or none, such
    as `"sigmoid"`, `scores`: the outputs as `predict` returns them),
    `logits` for a `PTuningCausalLM` (the forward pass;
    see below for generation) and for a `PTuningMaskedLM` without one
    (vocabulary logits at the masks), `logits` and `probabilities` of
    the next token for a `PTuningNextTokenLM`, and the backbone's outputs
    (`sequence_output`, and `pooled_output` where it has one) for a
    `PTuningBackbone`. With prompt slots, `token_ids` carry the placeholder
    id and the graph substitutes the prompt itself. A multi-task model also
    takes `task_id`, int32 of shape `(batch,)`, and keeps its per-task
    prompt encoders in the graph (a single-task model's is collapsed).
    TensorFlow Serving can serve it.

    With `include_preprocessing=True` the model's preprocessor is in the
    graph too, and a server needs no Python tokenizer: `serving_default`
    takes the raw text, `tf.string` of shape `(batch,)`, named `text` for a
    keras-hub preprocessor or a `PromptTemplate` with one field, and after
    the template's fields for one with several (plus `task_id` for a
    multi-task model), and returns what `model.predict` on those strings
    returns (the outputs above, and `label`, the argmax as int32, for a
    classifier or a masked LM with a verbalizer). The token-id signature
    is then `serve_token_ids`. A `PTuningCausalLM` also gets `generate`:
    `prompts` (`tf.string`, `(batch,)`) in, `outputs` (the prompts and
    their continuations, as `model.generate(prompts, max_length)` returns
    them with the greedy sampler) out, with the virtual tokens' keys and
    values computed at export time and kept in the SavedModel. Loading it
    needs `import tensorflow_text` (the tokenizers' ops).

    Args:
        model: a built `PTuningTextClassifier`, `PTuningCausalLM`,
            `PTuningMaskedLM`, `PTuningNextTokenLM` or `PTuningBackbone`.
        path: str. The SavedModel directory to write.
        overwrite: bool. Replace `path` (a directory) if it exists.
            Defaults to `False`.
        include_preprocessing: bool. Whether the signatures take raw text
            through the model's preprocessor (see above). Defaults to
            `False`: token ids.
        max_length: `None` or int. The `generate` signature's `max_length`
            (prompt and new tokens, as in `model.generate`), fixed in the
            SavedModel. Only for a `PTuningCausalLM` exported with
            `include_preprocessing=True`; `None` is its preprocessor's
            `sequence_length`.

    The model itself is not changed. Nothing is left at `path` if the export
    fails: it is written to a sibling temporary directory and moved into
    place at the end (parent directories the call created are removed
    again).

    Example:
    ```python
    import tensorflow as tf

    classifier = keras_ptuning.PTuningTextClassifier.from_preset(
        "bert_base_en_uncased", num_classes=2, num_virtual_tokens=20
    )
    keras_ptuning.export_saved_model(classifier, "exported/sst2")
    served = tf.saved_model.load("exported/sst2").signatures["serving_default"]
    inputs = classifier.preprocessor(["A gripping, funny film."])
    inputs = {name: tf.cast(x, "int32") for name, x in inputs.items()}
    served(**inputs)["probabilities"]  # (1, 2)
    ```
    """
    path = _checked_export_arguments(model, path, overwrite)
    max_length = check_text_export(model, include_preprocessing, max_length)
    _check_export_target(path, overwrite)
    parent = os.path.dirname(path)
    missing = directories_to_create(parent, "path", path)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    except BaseException:
        remove_created_directories(missing)
        raise
    exported = False
    try:
        output = os.path.join(staging, "saved_model")
        if keras.config.backend() == "tensorflow":
            write_saved_model(model, output, include_preprocessing, max_length)
        else:
            _export_in_tensorflow_process(
                model, staging, output, include_preprocessing, max_length
            )
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(output, path)
        exported = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not exported:
            remove_created_directories(missing)
    return path


def _checked_export_arguments(model, path, overwrite):
    """Refuses a model that cannot be exported and a malformed `path` or
    `overwrite`; returns `path`, absolute."""
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
    if not isinstance(overwrite, bool):
        raise TypeError(
            f"`overwrite` must be a bool. Received: overwrite={overwrite!r}"
        )
    return path


def _check_export_target(path, overwrite):
    """Refuses a `path` that is a file, or an existing one without
    `overwrite`."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(
            "`path` exists and is not a directory; a SavedModel is a "
            f"directory. Received: path={path!r}"
        )
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"`path` exists; pass overwrite=True to replace it. Received: "
            f"path={path!r}"
        )


def check_text_export(model, include_preprocessing, max_length):
    """Raises if `model` cannot be exported with these text options;
    returns the `generate` signature's `max_length` (`None` without one)."""
    if not isinstance(include_preprocessing, bool):
        raise TypeError(
            "`include_preprocessing` must be a bool. Received: "
            f"include_preprocessing={include_preprocessing!r}"
        )
    generates = include_preprocessing and isinstance(model, PTuningCausalLM)
    if max_length is not None and not generates:
        raise ValueError(
            "`max_length` is for the `generate` signature of a "
            "PTuningCausalLM exported with include_preprocessing=True. "
            f"Received: max_length={max_length!r} for a "
            f"{type(model).__name__} with include_preprocessing="
            f"{include_preprocessing}"
        )
    if not include_preprocessing:
        return None
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None:
        raise ValueError(
            "A model exported with include_preprocessing=True must have a "
            "preprocessor to turn text into token ids; this "
            f"{type(model).__name__} has none. Attach one (e.g. "
            "`preprocessor=` when building it) or export token ids with "
            "include_preprocessing=False."
        )
    ptuning = model._ptuning_backbone()
    if isinstance(model, PTuningCausalLM) and ptuning.uses_slots:
        raise ValueError(
            "A PTuningCausalLM with prompt slots (placeholder_id="
            f"{ptuning.placeholder_id}) cannot be exported with text inputs: "
            "its keras-hub CausalLMPreprocessor cannot write the "
            "placeholders. Export token ids (include_preprocessing=False)."
        )
    if not generates:
        return None
    limit = ptuning.max_sequence_length  # `None`: no position limit.
    if max_length is None:
        max_length = preprocessor.sequence_length
    if (
        isinstance(max_length, bool)
        or not isinstance(max_length, int)
        or max_length < 1
        or (limit is not None and max_length > limit)
    ):
        bound = (
            "a positive int" if limit is None else f"an int from 1 to {limit}"
        )
        raise ValueError(
            f"`max_length` must be {bound} (prompt and new tokens; the "
            "backbone's positions also hold the virtual tokens). Received: "
            f"max_length={max_length!r}"
        )
    return max_length


def _export_in_tensorflow_process(
    model, staging, output, include_preprocessing=False, max_length=None
):
    keras_file = os.path.join(staging, "model.keras")
    model.save(keras_file)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    options = []
    if include_preprocessing:
        options.append("--include-preprocessing")
    if max_length is not None:
        options.append(f"--max-length={max_length}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_ptuning.saving.export",
            *options,
            keras_file,
            output,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            "SavedModel export failed in the TensorFlow process:\n"
            + result.stderr[-4000:]
        )


def _predicts_classes(model):
    """Whether `model` scores classes: a classifier, or a masked LM with a
    verbalizer."""
    return isinstance(model, PTuningTextClassifier) or (
        isinstance(model, PTuningMaskedLM) and model.verbalizer is not None
    )


def _serving_outputs(model, outputs, with_label=False):
    """The named outputs a SavedModel serves for `model`'s `outputs`.

    A class-scoring model (see `_predicts_classes`) serves `logits` and
    `probabilities` where its activation is a softmax (the outputs are the
    probabilities) or none (the outputs are the logits); under any other
    activation (`"sigmoid"`, ...) it serves its outputs as `scores`, as
    `predict` returns them, since neither name would be true. `label`
    (with `with_label`) is the argmax of the outputs.
    """
    from keras import ops

    if _predicts_classes(model):
        activation = model.activation
        if activation is keras.activations.softmax:
            served = {"logits": ops.log(outputs), "probabilities": outputs}
        elif activation in (None, keras.activations.linear):
            served = {"logits": outputs, "probabilities": ops.softmax(outputs)}
        else:
            served = {"scores": outputs}
        if with_label:
            served["label"] = ops.cast(ops.argmax(outputs, axis=-1), "int32")
        return served
    if isinstance(model, PTuningNextTokenLM):
        return {"logits": outputs, "probabilities": ops.softmax(outputs)}
    if isinstance(model, (PTuningCausalLM, PTuningMaskedLM)):
        return {"logits": outputs}
    if isinstance(outputs, dict):
        return dict(outputs)
    return {"sequence_output": outputs}


def write_saved_model(
    model, output, include_preprocessing=False, max_length=None
):
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
        signatures = {"serving_default": serve}
        if include_preprocessing:
            # The tokenizer's lookup tables are resources the graph uses.
            module.preprocessor = model.preprocessor
            signatures = {
                "serving_default": _text_signature(model),
                "serve_token_ids": serve,
            }
            if isinstance(model, PTuningCausalLM):
                signatures["generate"], module.shared_prefix = (
                    _generate_signature(model, max_length)
                )
        tf.saved_model.save(module, output, signatures=signatures)
    finally:
        if collapse:
            injection.prompt_table.assign(saved_table)
            injection.set_prompt_source(source)


def text_input_names(model):
    """The text inputs of `model`'s preprocessor, as the text signatures
    name them: `text` for one field, a template's field names for more."""
    fields = getattr(model.preprocessor, "field_names", None) or ["text"]
    return ["text"] if len(fields) == 1 else list(fields)


def _preprocess(model, inputs):
    """Model inputs from the text signature's inputs, as `predict` makes
    them from the same strings."""
    preprocessor = model.preprocessor
    texts = {k: v for k, v in inputs.items() if k != TASK_ID}
    if list(texts) == ["text"]:
        texts = texts["text"]
    import tensorflow as tf

    x, _, _ = keras.utils.unpack_x_y_sample_weight(preprocessor(texts))
    # The sequence length is left dynamic, as in the token-id signature:
    # traced with the preprocessor's static length, the forward pass ran
    # 25-30% slower at batch 32 on CPU (`benchmarks/serving.py`).
    x = {
        name: tf.reshape(value, tf.stack([tf.shape(value)[0], -1]))
        if value.shape.rank == 2
        else value
        for name, value in x.items()
    }
    if TASK_ID in inputs:
        x[TASK_ID] = inputs[TASK_ID]
    return x


def _text_signature(model):
    import tensorflow as tf

    signature = {
        name: tf.TensorSpec([None], tf.string, name=name)
        for name in text_input_names(model)
    }
    if model._ptuning_backbone().is_multi_task:
        signature[TASK_ID] = tf.TensorSpec([None], tf.int32, name=TASK_ID)

    @tf.function(input_signature=[signature])
    def serve_text(inputs):
        x = _preprocess(model, inputs)
        return _serving_outputs(
            model, model(x, training=False), with_label=True
        )

    return serve_text


def _generate_signature(model, max_length):
    """The `generate` signature (greedy, `max_length` fixed) and the
    variables holding the virtual tokens' shared keys and values."""
    import keras_hub
    import tensorflow as tf

    preprocessor = model.preprocessor
    if max_length is None:
        max_length = preprocessor.sequence_length
    tokenizer = preprocessor.tokenizer
    stop_token_ids = [tokenizer.end_token_id]
    # As keras-hub's `generate(stop_token_ids="auto")`.
    if hasattr(tokenizer, "end_token2_id"):
        stop_token_ids.append(tokenizer.end_token2_id)
    special_ids = tf.constant(tokenizer.special_token_ids, tf.int32)
    sampler = model.sampler
    model.sampler = keras_hub.samplers.GreedySampler()
    try:
        prefix = model.shared_prefix(max_length)
        if prefix is not None:
            prefix = keras.tree.map_structure(
                lambda x: tf.Variable(x, trainable=False), prefix
            )
        signature = {"prompts": tf.TensorSpec([None], tf.string, "prompts")}
        if model._ptuning_backbone().is_multi_task:
            signature[TASK_ID] = tf.TensorSpec([None], tf.int32, name=TASK_ID)

        @tf.function(input_signature=[signature])
        def generate(inputs):
            x = preprocessor.generate_preprocess(
                inputs["prompts"], sequence_length=max_length
            )
            if TASK_ID in inputs:
                x[TASK_ID] = inputs[TASK_ID]
            x = model.generate_step(x, stop_token_ids, shared_prefix=prefix)
            # As keras-hub's `generate_postprocess`: real tokens only, no
            # special ones, detokenized.
            token_ids = tf.cast(x["token_ids"], tf.int32)
            keep = tf.logical_and(
                tf.cast(x["padding_mask"], tf.bool),
                tf.reduce_all(
                    tf.not_equal(token_ids[..., None], special_ids), -1
                ),
            )
            ragged = tf.ragged.boolean_mask(token_ids, keep)
            return {"outputs": tokenizer.detokenize(ragged)}

        generate = generate.get_concrete_function()
    finally:
        model.sampler = sampler
    return generate, [] if prefix is None else keras.tree.flatten(prefix)


if __name__ == "__main__":
    # Pairs of `.keras` file and output directory: one TensorFlow process
    # (its start-up costs seconds) exports any number of models, with the
    # text options given before them.
    import argparse

    parser = argparse.ArgumentParser(prog="python -m keras_ptuning.export")
    parser.add_argument("--include-preprocessing", action="store_true")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("paths", nargs="+", metavar="MODEL OUTPUT")
    args = parser.parse_args()
    if len(args.paths) % 2:
        parser.error("give pairs of MODEL.keras OUTPUT_DIR")
    for keras_file, output in zip(args.paths[::2], args.paths[1::2]):
        write_saved_model(
            keras.saving.load_model(keras_file),
            output,
            args.include_preprocessing,
            args.max_length,
        )

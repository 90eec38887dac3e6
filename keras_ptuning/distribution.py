"""Layouts for training P-tuned models with `keras.distribution`."""

import inspect
import math
import re

import keras

# Paths of the variables that P-tuning adds; they are never sharded.
_PTUNING_PATHS = r"(?!prompt_encoder/|prompt_injection/)"


def _keras_hub_backbone(model):
    """The frozen keras-hub backbone (or its class) inside `model`."""
    # Task -> `PTuningBackbone` -> keras-hub backbone: follow `.backbone`.
    while not inspect.isclass(model) and hasattr(model, "backbone"):
        model = model.backbone
    return model


def _axis_size(device_mesh, axis):
    if axis is None:
        return 1
    names = axis if isinstance(axis, (tuple, list)) else (axis,)
    sizes = dict(zip(device_mesh.axis_names, device_mesh.shape))
    return math.prod(sizes[name] for name in names)


def _family_layout_map(cls, device_mesh, model_dim_name, data_dim_name):
    get_layout_map = getattr(cls, "get_layout_map", None)
    if get_layout_map is None:
        return None
    return get_layout_map(
        device_mesh,
        model_parallel_dim_name=model_dim_name,
        data_parallel_dim_name=data_dim_name,
    )


def _fit_axes(axes, shape, device_mesh):
    """`axes` for `shape`, without the mesh axes that do not divide it."""
    axes = list(axes)[: len(shape)]
    axes += [None] * (len(shape) - len(axes))
    return tuple(
        axis if size % _axis_size(device_mesh, axis) == 0 else None
        for axis, size in zip(axes, shape)
    )


def layout_map(
    backbone, device_mesh, model_dim_name="model", data_dim_name="batch"
):
    """A `keras.distribution.LayoutMap` for a P-tuned model.

    It shards the frozen backbone's kernels and embedding tables over the
    `model_dim_name` axis of `device_mesh` and leaves everything else
    replicated: the prompt encoder and a task's head, which train, and the
    backbone's 1-D weights (norm scales, most biases). So
    `keras.distribution.ModelParallel(layout_map=...)` drives `fit`,
    `evaluate` and `predict` of any keras-ptuning model unchanged (JAX
    backend). Variables take their layout when they are created: build the
    model inside the distribution's scope.

    - With a built backbone or model, the layout is read from its variables
      (exact paths and shapes): the family's own layout from keras-hub's
      `get_layout_map()` (Gemma, Llama, Qwen, ...) where it has one, else
      the largest dimension of every weight of rank >= 2 that the model axis
      divides. A mesh axis that does not divide a dimension is dropped from
      that dimension, so every layout fits its variable.
    - With a keras-hub backbone class (before anything is built, as for a
      model too large for one device), it is the family's
      `get_layout_map()`, restricted to backbone variables. Families without
      one need a built backbone.

    Args:
        backbone: a keras-hub backbone, a `keras_ptuning.PTuningBackbone` or
            a keras-ptuning task model (the frozen keras-hub backbone inside
            is used), or a keras-hub backbone class.
        device_mesh: a `keras.distribution.DeviceMesh`.
        model_dim_name: str. The mesh axis to shard weights over. Defaults
            to `"model"`.
        data_dim_name: str. The mesh axis of the batch, which keras-hub
            family layouts also shard some weights over. Defaults to
            `"batch"`. Both names must be axes of `device_mesh`.

    Returns:
        A `keras.distribution.LayoutMap` on `device_mesh`.

    Example:
    ```python
    devices = keras.distribution.list_devices()
    model_shards = 4 if len(devices) % 4 == 0 else 1
    shape = (len(devices) // model_shards, model_shards)  # 8 devices: (2, 4)
    mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)
    layout_map = keras_ptuning.distribution.layout_map(
        keras_hub.models.GemmaBackbone, mesh
    )
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        )
    )
    model = keras_ptuning.PTuningTextClassifier(
        keras_hub.models.GemmaBackbone.from_preset("gemma_2b_en"),
        num_classes=2,
        prompt_config=keras_ptuning.PromptEncoderConfig(20),
    )
    x = {  # token ids, e.g. from `keras_hub.models.GemmaTokenizer`
        "token_ids": np.random.randint(1, 1000, (64, 128)),
        "padding_mask": np.ones((64, 128), "int32"),
    }
    y = np.random.randint(0, 2, (64,))
    model.fit(x, y, batch_size=32)  # batch over "batch", weights over "model"
    ```
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(
            "`device_mesh` must be a `keras.distribution.DeviceMesh`. "
            f"Received: device_mesh={device_mesh!r}"
        )
    for name in (model_dim_name, data_dim_name):
        if name not in device_mesh.axis_names:
            raise ValueError(
                f"The device mesh has no axis {name!r}; its axes are "
                f"{list(device_mesh.axis_names)}."
            )
    backbone = _keras_hub_backbone(backbone)
    cls = backbone if inspect.isclass(backbone) else type(backbone)
    family = _family_layout_map(cls, device_mesh, model_dim_name, data_dim_name)
    result = keras.distribution.LayoutMap(device_mesh)
    if inspect.isclass(backbone):
        if family is None:
            raise ValueError(
                f"{cls.__name__} has no `get_layout_map()`. Pass a built "
                "backbone (or model) instead, so its variables' shapes are "
                "known."
            )
        for pattern, layout in family.items():
            key = f"{_PTUNING_PATHS}(?:{pattern})"
            result[key] = tuple(layout.axes)
        return result

    model_size = _axis_size(device_mesh, model_dim_name)
    for variable in backbone.weights:
        shape = tuple(variable.shape)
        layout = family[variable.path] if family is not None else None
        if layout is not None:
            axes = _fit_axes(layout.axes, shape, device_mesh)
        elif len(shape) >= 2:
            divisible = [i for i, n in enumerate(shape) if n % model_size == 0]
            if not divisible:
                continue
            dim = max(divisible, key=lambda i: shape[i])
            axes = tuple(
                model_dim_name if i == dim else None for i in range(len(shape))
            )
        else:
            continue
        if any(axis is not None for axis in axes):
            result[re.escape(variable.path)] = axes
    return result

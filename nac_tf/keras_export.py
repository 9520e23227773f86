"""A Keras-native model of an export: the encoder, its input preprocessing and the projection
head's codes as a `.keras` file of built-in Keras layers only, so that
`keras.saving.load_model(path)` opens it without nac_tf (and without custom objects or
`safe_mode=False`):

    images uint8 [N, H, W, 3], any H x W
      -> "rescale" Rescaling(1/255) -> "resize" Resizing(S, S, bilinear, antialias)
      -> "clip" ReLU(max_value=1)                      the SavedModel's preprocessing
      -> <encoder> (a nested functional model, e.g. "encoder")  -> {"features": h}
      -> <head> (a nested Sequential, e.g. "projection_head") -> tanh -> {"codes": z}

The outputs equal the SavedModel's `features` and `codes` signatures (`nac_tf.export`) up to
float rounding: x * (1/255) instead of x / 255, and the resize runs also at the training
size S, where it is the identity. A method without a head (AMDIM, `codes_from` "features")
gets z = tanh(h). Both outputs are float32 also for a mixed-precision encoder.

nac_tf's custom layers are rebuilt from built-in ones with the trained weights:
- `ProjectionHead`: Dense [-> BatchNormalization] -> ReLU -> Dense [-> Rescaling(1/sqrt(D))];
- vgg16's `ReverseChannels` (RGB -> BGR): folded into the convolution that reads it (its
  kernel's input channels reversed), so that convolution reads RGB;
- AMDIM's `ChannelZeroPadding`: Reshape -> ZeroPadding3D -> Reshape;
- AMDIM's `ReflectionPadding2D`: rows and columns cut out (Cropping2D) and concatenated in
  mirror order.
An encoder with any other custom layer is refused (ValueError naming it).

BatchNormalization is copied with its moving statistics: the model runs in inference mode
when called or predicted with; `fit` trains it like any Keras model (set `trainable = False`
on the nested encoder to keep it fixed). Keras casts whatever array it is given to the uint8
input, so float images in [0, 1] would become zeros: pass uint8 pixels.

Importing this module imports no TensorFlow (`nac-export` checks the path with
`check_keras_path` before it loads anything); the builders import Keras when called.
"""
import functools
import logging
import math
import os
import tempfile

from nac_tf.config import ConfigError
from nac_tf.errors import cannot_write, failure_cause, write_problem

KERAS_SUFFIX = ".keras"
OUTPUTS = ("features", "codes")  # the output dict's keys, as the SavedModel's signatures
MODEL_NAME = "nac_tf_encoder"

logger = logging.getLogger(__name__)


def check_keras_path(path, overwrite=False, field="path"):
    """ConfigError(`field`) unless a model file can be written at `path`: it ends in .keras
    (Keras 3 saves no other format), is not a directory, does not exist unless `overwrite`,
    and its directory can be created or written. Nothing is written."""
    path = os.fspath(path)
    if not path:
        raise ConfigError(field, f"is empty; give a file name ending in {KERAS_SUFFIX}")
    if not path.endswith(KERAS_SUFFIX):
        raise ConfigError(field, f"{path!r} does not end in {KERAS_SUFFIX} (the Keras 3 model "
                                 "file format)")
    if os.path.isdir(path):
        raise ConfigError(field, f"{path!r} is a directory")
    if os.path.lexists(path) and not overwrite:
        raise ConfigError(field, f"{path!r} exists; set overwrite to replace it")
    problem = write_problem(path)
    if problem:
        raise ConfigError(field, problem)


# ------------------------------------------------------------------ built-in replacements
def _is_builtin(layer):
    return type(layer).__module__.startswith("keras.")


def _reversed_channel_readers(encoder, reverse_class):
    """Names of the layers that read the output of a `reverse_class` layer: the layers whose
    kernel takes the channel reversal. ValueError for a reader that is no Conv2D."""
    import keras

    reversed_outputs = {id(layer.output) for layer in encoder.layers
                        if isinstance(layer, reverse_class)}
    readers = set()
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if any(id(tensor) in reversed_outputs for tensor in keras.tree.flatten(layer.input)):
            if type(layer) is not keras.layers.Conv2D or layer.data_format != "channels_last":
                raise ValueError(f"encoder {encoder.name!r}: the channel reversal feeds layer "
                                 f"{layer.name!r} ({type(layer).__name__}); only a Conv2D "
                                 "can take it into its kernel")
            readers.add(layer.name)
    return readers


def _reverse_channels(layer, x):
    """`ReverseChannels`: nothing here, the convolution that reads it takes it."""
    return x


def _channel_zero_padding(layer, x):
    """`ChannelZeroPadding`: [N, H, W, C] -> [N, H, W, C + k] by ZeroPadding3D on C."""
    import keras

    height, width, channels = x.shape[1:]
    x = keras.layers.Reshape((height, width, channels, 1), name=f"{layer.name}_expand")(x)
    x = keras.layers.ZeroPadding3D(((0, 0), (0, 0), (0, layer.channels)),
                                   data_format="channels_last", name=layer.name)(x)
    return keras.layers.Reshape((height, width, channels + layer.channels),
                                name=f"{layer.name}_squeeze")(x)


def _mirrored(x, axis, padding, name, label):
    """`x` with `padding` rows (axis 1) or columns (axis 2) mirrored onto each side, as
    PyTorch's "reflect" (the edge is not repeated): lines p..1 before, n-2..n-1-p after,
    each cut out by a Cropping2D, then concatenated."""
    import keras

    size = x.shape[axis]
    if size is None or size <= padding:
        raise ValueError(f"layer {name!r}: reflection padding of {padding} needs more than "
                         f"{padding} {label} of known size; got {size}")
    lines = {}  # index -> that line; a small input mirrors some lines twice

    def line(i):
        if i not in lines:
            crop = ((i, size - 1 - i), (0, 0))
            lines[i] = keras.layers.Cropping2D(crop if axis == 1 else crop[::-1],
                                               name=f"{name}_{label}{i}")(x)
        return lines[i]

    before = [line(i) for i in range(padding, 0, -1)]
    after = [line(size - 1 - i) for i in range(1, padding + 1)]
    concatenated = name if label == "columns" else f"{name}_{label}"
    return keras.layers.Concatenate(axis=axis, name=concatenated)(before + [x] + after)


def _reflection_padding(layer, x):
    """`ReflectionPadding2D`: the rows mirrored, then the columns (`_mirrored`)."""
    x = _mirrored(x, 1, layer.padding, layer.name, "rows")
    return _mirrored(x, 2, layer.padding, layer.name, "columns")


def _fresh_copy(layer):
    """A new, unbuilt built-in layer with `layer`'s configuration; BatchNormalization
    unsynchronised (synchronising is for training under tf.distribute)."""
    import keras

    config = layer.get_config()
    if isinstance(layer, keras.layers.BatchNormalization):
        config["synchronized"] = False
    return type(layer).from_config(config)


def builtin_encoder(encoder):
    """A copy of the functional `encoder` made of built-in Keras layers only, with its
    weights (module docstring)."""
    import keras

    from nac_tf.models.amdim import ChannelZeroPadding, ReflectionPadding2D
    from nac_tf.models.vgg import ReverseChannels

    replacements = {ReverseChannels: _reverse_channels, ChannelZeroPadding: _channel_zero_padding,
                    ReflectionPadding2D: _reflection_padding}
    reversed_readers = _reversed_channel_readers(encoder, ReverseChannels)
    copies = []  # (original, copy) of every built-in layer

    def clone(layer):
        if type(layer) in replacements:  # called in its place: (layer, inputs) -> outputs
            return functools.partial(replacements[type(layer)], layer)
        if not _is_builtin(layer):
            raise ValueError(f"encoder {encoder.name!r}: layer {layer.name!r} is a "
                             f"{type(layer).__name__}, which has no built-in Keras "
                             "equivalent in nac_tf.keras_export")
        copies.append((layer, _fresh_copy(layer)))
        return copies[-1][1]

    model = keras.models.clone_model(encoder, clone_function=clone)
    for original, copy in copies:
        weights = original.get_weights()
        if original.name in reversed_readers:
            weights[0] = weights[0][:, :, ::-1, :]  # kernel [h, w, in, out]: RGB order
        copy.set_weights(weights)
    return model


def builtin_projection_head(head, feature_dim):
    """`head` (a ProjectionHead) as a keras.Sequential of built-in layers with its weights:
    hidden_dense [-> hidden_bn] -> hidden_relu -> output_dense [-> scale_by_sqrt_dim]."""
    import keras

    copies = [(layer, _fresh_copy(layer)) for layer in
              (head.hidden_dense, head.hidden_bn, head.output_dense) if layer is not None]
    layers = [keras.Input((feature_dim,), name="h"), *[copy for _, copy in copies[:-1]],
              keras.layers.ReLU(name="hidden_relu", dtype=head.dtype_policy), copies[-1][1]]
    if head.scale_by_sqrt_dim:
        layers.append(keras.layers.Rescaling(1.0 / math.sqrt(head.output_dim),
                                             name="scale_by_sqrt_dim",
                                             dtype=head.dtype_policy))
    model = keras.Sequential(layers, name=head.name)
    for original, copy in copies:
        copy.set_weights(original.get_weights())
    return model


# ------------------------------------------------------------------------------- the model
def keras_model_of_export(export):
    """The keras.Model (module docstring) serving what `export` serves: an in-memory
    ExportModule, or an ExportedModel wrapping one (`ExportedModel.from_method`).
    ValueError for a loaded SavedModel (its networks are no Keras layers)."""
    import keras

    from nac_tf.export import ExportedModel, ExportModule

    module = export.module if isinstance(export, ExportedModel) else export
    if not isinstance(module, ExportModule):
        raise ValueError("export: needs a model built in memory (ExportedModel.from_method), "
                         "not a loaded SavedModel; for a run directory use export_keras_model")
    size = module.metadata["image_size"]
    images = keras.Input((None, None, 3), dtype="uint8", name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale", dtype="float32")(images)
    # training=False: a Resizing layer's call defaults to training=True, which a call of the
    # model without `training` would hand on to the layers after it (BatchNorm included).
    x = keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True,
                              name="resize", dtype="float32")(x, training=False)
    x = keras.layers.ReLU(max_value=1.0, name="clip", dtype="float32")(x)
    h = builtin_encoder(module.encoder)(x)
    a = h
    if module.projection_head is not None:
        a = builtin_projection_head(module.projection_head, int(h.shape[-1]))(h)
    features = keras.layers.Activation("linear", name="features", dtype="float32")(h)
    codes = keras.layers.Activation("tanh", name="codes", dtype="float32")(a)
    return keras.Model(images, dict(zip(OUTPUTS, (features, codes))), name=MODEL_NAME)


def keras_encoder_model(method, image_size=None):
    """The keras.Model (module docstring) of `method`'s online encoder and projection head
    (as `nac_tf.export.build_export_module` picks them), e.g. a model trained in memory
    (`nac_tf.method_for_run`); a copy, which later training of `method` leaves as it is.
    `image_size`: the training size (default: the encoder's input size)."""
    from nac_tf.export import build_export_module

    image_size = image_size or method.encoder.input_shape[1]
    return keras_model_of_export(build_export_module(method, image_size))


def save_keras_model(model, path, overwrite=False):
    """Writes `model` to `path` (a .keras file, `check_keras_path`) through a temporary file
    beside it, so a failure leaves no half-written file. ConfigError("path") when it cannot
    be written. Returns the absolute path."""
    path = os.path.abspath(path)
    check_keras_path(path, overwrite)
    directory = os.path.dirname(path)
    staging = None
    try:
        os.makedirs(directory, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=".keras-export-", suffix=KERAS_SUFFIX,
                                           dir=directory)
        os.close(handle)
        model.save(staging)
        os.replace(staging, path)
    except OSError as error:  # a full disk, a directory made read-only since the check
        raise ConfigError("path", cannot_write(path, failure_cause(error))) from None
    finally:
        if staging is not None and os.path.exists(staging):
            os.remove(staging)
    return path


def export_keras_model(model_dir, path, checkpoint=None, overwrite=False):
    """Writes the run in `model_dir` (its newest intact checkpoint, or the given one:
    `nac_tf.run_directory.restore_run`) as a .keras file at `path`; returns its absolute
    path. ConfigError("path") when it cannot be written (checked before the restore),
    ConfigError("checkpoint") for a checkpoint that does not fit the run."""
    from nac_tf.export import build_export_module
    from nac_tf.run_directory import restore_run

    check_keras_path(os.path.abspath(path), overwrite)
    _, statistics, method, checkpoint = restore_run(model_dir, checkpoint)
    module = build_export_module(method, statistics["image_size"], statistics)
    path = save_keras_model(keras_model_of_export(module), path, overwrite)
    metadata = module.metadata
    logger.info("Exported %s from %s as a Keras model (training image size %d, %d-bit codes)",
                metadata["method"], os.path.abspath(checkpoint), metadata["image_size"],
                metadata["code_dim"])
    return path

"""Building blocks shared by the encoders: input normalisation, convolutions, BatchNorm.

Naming convention (the LARS weight-decay exclusion relies on it, see nac_tf/models/__init__.py):
every BatchNormalization layer's name is "bn", "bn<k>", or ends in "_bn" / "_bn<k>"
(e.g. "stage1_block0_bn1"), so its variables' paths match `BATCH_NORM_PATH_PATTERN`;
no other layer name ends that way. Model names (the first path segment) must not end that way
either, which `check_model_name` enforces.
"""
import re

import keras

from nac_tf.run_settings import ENCODER_STEMS

# PyTorch's BatchNorm defaults (momentum 0.1 there = 0.9 here, eps 1e-5), as in the authors'
# code. Keras' own default momentum (0.99) averages over ~100 steps and lags behind on short
# CPU runs. Keras updates moving = momentum * moving + (1 - momentum) * batch_statistic.
DEFAULT_BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5

# The layer segment directly before the variable's leaf name decides, so a model or outer
# scope named e.g. "vgg16_bn" cannot make its convolution kernels look like BatchNorm.
BATCH_NORM_PATH_PATTERN = (
    r"(^|/)([^/]*_)?bn\d*/(gamma|beta|moving_mean|moving_variance)$")
_BATCH_NORM_LIKE_NAME = re.compile(r"(^|_)bn\d*$|batch_norm")


def check_model_name(name):
    """Rejects model names that would read as BatchNorm in a variable path's prefix."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string; got {name!r}")
    if _BATCH_NORM_LIKE_NAME.search(name):
        raise ValueError(
            f"name={name!r} ends in 'bn'/'_bn<k>' or contains 'batch_norm'; it is the prefix "
            "of every variable path, so path-based BatchNorm exclusion (LARS) would match all "
            "weights. Choose another model name, e.g. 'encoder'.")


def check_stem(stem, accept_none=False):
    if stem is None and accept_none:
        return
    if stem not in ENCODER_STEMS:
        raise ValueError(f"stem={stem!r} is not one of the accepted values: "
                         f"{', '.join(ENCODER_STEMS)}")


def check_input_shape(input_shape):
    """(H, W, C) with C a positive int; H and W positive ints or None (any size)."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be (height, width, channels); got {input_shape!r}")
    if len(shape) != 3 or not isinstance(shape[2], int) or shape[2] < 1 or any(
            d is not None and (not isinstance(d, int) or d < 1) for d in shape[:2]):
        raise ValueError(
            f"input_shape must be (height, width, channels) with positive ints (height and "
            f"width may be None); got {input_shape!r}")
    return shape


def check_batch_norm_momentum(momentum):
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"batch_norm_momentum must be in [0, 1); got {momentum}")


def batch_norm(name, momentum, synchronized, zero_gamma=False):
    """BatchNormalization named `name` (must follow the "_bn" convention above).

    `synchronized=True` makes the TensorFlow backend all-reduce the batch statistics across
    the replicas of a tf.distribute strategy (global-batch BN, as the paper's multi-GPU runs).
    `zero_gamma` starts the layer as a zero map (zero-init of the last BN of a residual block).
    """
    return keras.layers.BatchNormalization(
        momentum=momentum, epsilon=BATCH_NORM_EPSILON, synchronized=synchronized,
        gamma_initializer="zeros" if zero_gamma else "ones", name=name)


def conv(x, filters, kernel_size, strides, name, use_bias=False):
    """kxk convolution, He-normal initialised, with PyTorch's symmetric k//2 zero padding.

    For stride 1 and odd k, Keras' "same" padding is already symmetric. For stride 2, "same"
    pads only bottom/right on even inputs, which shifts the sampling grid by one pixel
    relative to PyTorch (the authors' framework); padding explicitly keeps the two identical
    (and ported torchvision weights give the same outputs).
    """
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                               use_bias=use_bias, kernel_initializer="he_normal", name=name)(x)


def max_pool_3x3_stride_2(x, name):
    """3x3 max-pool, stride 2, padding 1 on each side (PyTorch's ImageNet ResNet stem).

    Zero padding equals PyTorch's -inf padding here because the input comes after a ReLU.
    """
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(x)


def _per_channel(values, channels, argument):
    values = [float(v) for v in values] if hasattr(values, "__len__") else [float(values)]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{argument} must be a scalar or have one value per input channel "
                         f"({channels}); got {len(values)} values")
    return values


def input_normalization(x, mean, std, name="input_normalization"):
    """(x - mean) / std per channel; identity when both are None.

    Lives inside the model so that exported SavedModels take the raw pixel range. The layer
    holds constants, not variables, so it does not change the weight list.
    """
    if mean is None and std is None:
        return x
    channels = x.shape[-1]
    mean = _per_channel(0.0 if mean is None else mean, channels, "mean")
    std = _per_channel(1.0 if std is None else std, channels, "std")
    if any(s <= 0.0 for s in std):
        raise ValueError(f"std must be positive in every channel; got {std}")
    return keras.layers.Normalization(
        mean=mean, variance=[s * s for s in std], name=name)(x)


def check_encoder_arguments(input_shape, stem, name, batch_norm_momentum, accept_no_stem=False):
    """The checks every encoder builder runs first; returns the validated input shape."""
    check_stem(stem, accept_none=accept_no_stem)
    check_model_name(name)
    check_batch_norm_momentum(batch_norm_momentum)
    return check_input_shape(input_shape)


def encoder_input(input_shape, mean, std):
    """(image input, normalised images): an encoder's first two layers. Call it inside the
    model's name scope so the layers get the model's path prefix."""
    inputs = keras.Input(shape=input_shape, name="images")
    return inputs, input_normalization(inputs, mean, std)

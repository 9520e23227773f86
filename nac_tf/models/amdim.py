"""The AMDIM encoder (Bachman et al., 2019, Sec. 3.6 and Fig. 1c) and its embedding networks
phi_5 / phi_7 (`AMDIMEmbedding`), as in the authors' code (Philip-Bachman/amdim-public).

The encoder is a ResNet without padding: every residual unit ("ConvResNxN") computes

    out = conv1x1(ReLU([BN](conv_wxw_stride_s(x)))) + shortcut(x),
    shortcut(x) = mean_pool_wxw_stride_s(x), zero-padded in channels when they grow,

so the mean pool, not padding, keeps the two branches the same size (Sec. 3.6: padding would
make the feature distribution depend on the position). A block is one such unit with the
block's width w and stride s followed by (ndepth - 1) 1x1 units, which add depth without
growing the receptive field. There is no ReLU after the sum. One layout per input size
(the authors' `encoder_size`, chosen from the input here):

    32 px (CIFAR):    conv3x3 + ReLU (30) -> 1x1 unit -> block(2ndf, 4, 2) (14)
                      -> block(4ndf, 2, 2) (7) -> [BN] = f7 -> block(4ndf, 3, 1) (5) = f5
                      -> block(4ndf, 3, 1) (3) -> unit(nrkhs, 3, 1) (1) -> BN = f1
    64 px (STL10):    conv3x3 + ReLU (62) -> block(2ndf, 4, 2) (30) -> block(4ndf, 4, 2) (14)
                      -> block(8ndf, 2, 2) (7) -> [BN] = f7 -> block(8ndf, 3, 1) (5) = f5
                      -> block(8ndf, 3, 1) (3) -> unit(nrkhs, 3, 1) (1) -> BN = f1
    128 px (ImageNet): reflection pad 2 + conv5x5 stride 2 + ReLU (64), then the 64 px layout.

The encoder's output h is f1 flattened, [B, nrkhs]: the global feature the authors' linear
and MLP evaluation read. `amdim_feature_maps` adds f5 and f7 (the last layers of spatial
size 5 and 7, the authors' `dim2layer`) for the multiscale objective.

BatchNorm: `use_batch_norm` (the authors' `use_bn`, default off) adds BN after the first
convolution of every unit and on f7; the BN on f1 is always there (BN is also always on
the output of phi_5 / phi_7). The stem convolutions have a bias and no BN, as theirs.

Initialisation, as the authors' `init_weights` ("fixup-like"): the first convolution of every
residual branch is PyTorch's default kaiming_uniform(a=sqrt(5)), U(-1/sqrt(fan_in),
1/sqrt(fan_in)), times `init_scale`; the second is zero, so every unit starts as its
shortcut. The stem keeps PyTorch's default (kernel and bias from that interval).

Layer names: "stem_conv<k>", "stem_relu<k>" ("stem_pad" at 128 px); units
"block<b>_unit<u>_conv1" / "_bn1" / "_relu1" / "_conv2" / "_shortcut_pool" /
"_shortcut_pad" / "_add"; "f7_bn" (with use_batch_norm), "f7", "f5", "f1_bn", and "f1" (the
flatten that gives h).

Model sizes (ndf, nrkhs, ndepth) in the registry: `amdim_small` (128, 1024, 10) and
`amdim_large` (256, 2048, 10), the paper's CIFAR models, and `amdim_xs` for CPU runs.
"""
import math

import keras
import numpy as np

from nac_tf.models.layers import (
    DEFAULT_BATCH_NORM_MOMENTUM, batch_norm, check_encoder_arguments, encoder_input)

ENCODER_SIZES = (32, 64, 128)  # the authors' encoder_size: CIFAR, STL10, ImageNet
FEATURE_LAYERS = ("f1", "f5", "f7")  # h (flattened 1x1 map), the 5x5 and the 7x7 maps

# (ndf, nrkhs, ndepth) of the registered encoders.
# amdim_large: the paper's CIFAR text gives (320, 1280, 10), the caption of its Table 2
# (256, 2048, 10). We take the caption: every other configuration in the paper and in the
# authors' README has nrkhs = 8 ndf ((128, 1024), (192, 1536), their released ImageNet
# checkpoints amdim_ndf256_rkhs2048_rd10 and amdim_ndf320_rkhs2560_rd10), and 320 / 1280
# reads like a mix of the two rows; the authors' code fixes no CIFAR size (its defaults are
# ndf=128, n_rkhs=1024, n_depth=3).
# amdim_xs: one CPU training step at batch 256 on 32 px costs about as much as
# resnet_tiny's (measured, forward + backward; see the project report).
AMDIM_SIZES = {
    "amdim_small": (128, 1024, 10),
    "amdim_large": (256, 2048, 10),
    "amdim_xs": (32, 256, 2),
}


def _torch_kernel_init(scale=1.0):
    """PyTorch's default conv kernel init, kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), times `scale` (VarianceScaling's limit is sqrt(3 * s / fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=scale * scale / 3.0, mode="fan_in", distribution="uniform")


def _torch_bias_init(fan_in):
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit)


@keras.saving.register_keras_serializable(package="nac_tf")
class ChannelZeroPadding(keras.layers.Layer):
    """Appends `channels` zero channels (the shortcut of a unit whose width grows)."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def call(self, inputs):
        return keras.ops.pad(inputs, [[0, 0]] * (len(inputs.shape) - 1) + [[0, self.channels]])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] + self.channels,)

    def get_config(self):
        return dict(super().get_config(), channels=self.channels)


@keras.saving.register_keras_serializable(package="nac_tf")
class ReflectionPadding2D(keras.layers.Layer):
    """Reflection padding of `padding` pixels on each side of H and W (PyTorch's "reflect":
    the edge pixel is not repeated), the 128 px stem's padding."""

    def __init__(self, padding, **kwargs):
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, inputs):
        p = self.padding
        return keras.ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        grow = lambda d: None if d is None else d + 2 * self.padding  # noqa: E731
        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return dict(super().get_config(), padding=self.padding)


def _check_positive_int(argument, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument} must be a positive integer; got {value!r}")


def build_amdim(input_shape, *, ndf, nrkhs, ndepth, use_batch_norm=False, init_scale=1.0,
                stem=None, mean=None, std=None, synchronized_batch_norm=False,
                batch_norm_momentum=DEFAULT_BATCH_NORM_MOMENTUM, name="amdim"):
    """The AMDIM encoder: images [B, S, S, C] -> h = f1 [B, nrkhs], S in `ENCODER_SIZES`.

    Args:
      input_shape: (S, S, C); S (32, 64 or 128) selects the layout (module docstring).
      ndf: base width (the 7x7 and 5x5 maps have 4 ndf channels at 32 px, 8 ndf above).
      nrkhs: width of f1, hence of h; at least the width of the 3x3 map it is computed from.
      ndepth: residual units per block.
      use_batch_norm: the authors' use_bn (BN after each unit's first conv and on f7).
      init_scale: factor on the first convolution of every residual branch (positive).
      stem: no effect (the layout follows the input size); accepted, if valid or None, so
        that every encoder takes the same arguments.
      mean, std, synchronized_batch_norm, batch_norm_momentum, name: as in
        `nac_tf.models.resnet.build_resnet`.
    """
    input_shape = check_encoder_arguments(input_shape, stem, name, batch_norm_momentum,
                                          accept_no_stem=True)
    size = input_shape[0]
    if size not in ENCODER_SIZES or input_shape[1] != size:
        raise ValueError(
            f"input_shape={input_shape!r}: the AMDIM encoder takes square images of one of "
            f"the sizes {', '.join(map(str, ENCODER_SIZES))} (its layers have no padding, "
            "so each size has its own layout)")
    for argument, value in (("ndf", ndf), ("nrkhs", nrkhs), ("ndepth", ndepth)):
        _check_positive_int(argument, value)
    top = 4 * ndf if size == 32 else 8 * ndf  # channels of the 7x7, 5x5 and 3x3 maps
    if nrkhs < top:
        raise ValueError(f"nrkhs={nrkhs} must be at least the width of the 3x3 map "
                         f"({top} = {top // ndf} ndf at {size} px): residual units only widen")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be positive; got {init_scale!r}")

    def bn(layer_name):
        return batch_norm(layer_name, batch_norm_momentum, synchronized_batch_norm)

    def stem_conv(x, filters, width, stride, index):
        fan_in = width * width * x.shape[-1]
        x = keras.layers.Conv2D(
            filters, width, strides=stride, padding="valid", use_bias=True,
            kernel_initializer=_torch_kernel_init(), bias_initializer=_torch_bias_init(fan_in),
            name=f"stem_conv{index}")(x)
        return keras.layers.ReLU(name=f"stem_relu{index}")(x)

    def unit(x, filters, width, stride, prefix):
        """ConvResNxN: conv(width, stride) -> [BN] -> ReLU -> conv1x1, plus the mean-pooled
        input, zero-padded in channels."""
        grow = filters - x.shape[-1]
        y = keras.layers.Conv2D(filters, width, strides=stride, padding="valid",
                                use_bias=False, kernel_initializer=_torch_kernel_init(init_scale),
                                name=f"{prefix}_conv1")(x)
        if use_batch_norm:
            y = bn(f"{prefix}_bn1")(y)
        y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
        # Zero-initialised, so the unit starts as its shortcut.
        y = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="zeros",
                                name=f"{prefix}_conv2")(y)
        shortcut = x
        if (width, stride) != (1, 1):  # a 1x1 stride-1 mean pool is the identity
            shortcut = keras.layers.AveragePooling2D(
                width, strides=stride, padding="valid", name=f"{prefix}_shortcut_pool")(x)
        if grow > 0:
            shortcut = ChannelZeroPadding(grow, name=f"{prefix}_shortcut_pad")(shortcut)
        return keras.layers.Add(name=f"{prefix}_add")([y, shortcut])

    def block(x, index, filters, width, stride, depth=ndepth):
        for u in range(depth):
            x = unit(x, filters, width if u == 0 else 1, stride if u == 0 else 1,
                     f"block{index}_unit{u}")
        return x

    # Blocks down to 7x7: (channels as a multiple of ndf, width, stride).
    if size == 32:
        down = ((2, 4, 2), (4, 2, 2))
    else:
        down = ((2, 4, 2), (4, 4, 2), (8, 2, 2))
    with keras.name_scope(name):
        inputs, x = encoder_input(input_shape, mean, std)
        index = 0
        if size == 128:
            x = ReflectionPadding2D(2, name="stem_pad")(x)
            x = stem_conv(x, ndf, 5, 2, 1)
            x = stem_conv(x, ndf, 3, 1, 2)
        else:
            x = stem_conv(x, ndf, 3, 1, 1)
        if size == 32:
            x = block(x, index, ndf, 1, 1, depth=1)
        for multiple, width, stride in down:
            index += 1
            x = block(x, index, multiple * ndf, width, stride)
        if use_batch_norm:
            x = bn("f7_bn")(x)
        x = keras.layers.Identity(name="f7")(x)
        x = keras.layers.Identity(name="f5")(block(x, index + 1, top, 3, 1))
        x = block(x, index + 2, top, 3, 1)
        x = block(x, index + 3, nrkhs, 3, 1, depth=1)
        x = bn("f1_bn")(x)
        h = keras.layers.Flatten(name="f1")(x)
        return keras.Model(inputs, h, name=name)


def _registered(model_size):
    ndf, nrkhs, ndepth = AMDIM_SIZES[model_size]

    def builder(input_shape, *, name=model_size, **kwargs):
        return build_amdim(input_shape, ndf=ndf, nrkhs=nrkhs, ndepth=ndepth, name=name,
                           **kwargs)

    builder.__name__ = model_size
    builder.__doc__ = (f"AMDIM encoder with ndf={ndf}, nrkhs={nrkhs}, ndepth={ndepth} -> "
                       f"{nrkhs}-d h. See `build_amdim`.")
    return builder


amdim_small = _registered("amdim_small")
amdim_large = _registered("amdim_large")
amdim_xs = _registered("amdim_xs")


def _check_amdim(encoder):
    names = {layer.name for layer in encoder.layers}
    if not set(FEATURE_LAYERS) <= names:
        raise ValueError(f"encoder {encoder.name!r} is not an AMDIM encoder (it has no layers "
                         f"{', '.join(FEATURE_LAYERS)})")


def amdim_feature_maps(encoder):
    """A keras.Model sharing `encoder`'s weights: images -> (f1 [B, nrkhs],
    f5 [B, 5, 5, C5], f7 [B, 7, 7, C7]), f1 being the encoder's output h."""
    _check_amdim(encoder)
    return keras.Model(encoder.input, [encoder.get_layer(n).output for n in FEATURE_LAYERS],
                       name=f"{encoder.name}_feature_maps")


def amdim_feature_channels(encoder):
    """(C1, C5, C7): channels of f1 (= nrkhs), f5 and f7 of an AMDIM encoder."""
    _check_amdim(encoder)
    return tuple(int(encoder.get_layer(n).output.shape[-1]) for n in FEATURE_LAYERS)


@keras.saving.register_keras_serializable(package="nac_tf")
class AMDIMEmbedding(keras.layers.Layer):
    """phi_5 / phi_7 (Sec. 3.6): a residual MLP applied by 1x1 convolutions to [B, H, W, C]
    maps (the authors' FakeRKHSConvNet):

        BN_out(conv1x1(ReLU([BN](conv1x1(x)))) + shortcut_conv1x1(x)) -> [B, H, W, output_dim].

    The second convolution starts at zero, so phi starts as its shortcut; the shortcut
    (with bias) starts near the identity when output_dim >= C: U(-0.01, 0.01) with ones on
    the diagonal. Otherwise, and for the first convolution (times `init_scale`) and the
    shortcut bias, PyTorch's default U(-1/sqrt(C), 1/sqrt(C)).
    `use_batch_norm` is the authors' use_bn (BN on the hidden layer); BN on the output is
    always there. Sublayers: "hidden_conv", "hidden_bn", "output_conv", "shortcut_conv",
    "output_bn" under the layer's name.
    """

    def __init__(self, output_dim, use_batch_norm=False, synchronized_batch_norm=False,
                 batch_norm_momentum=DEFAULT_BATCH_NORM_MOMENTUM, init_scale=1.0, name=None,
                 **kwargs):
        super().__init__(name=name, **kwargs)
        _check_positive_int("output_dim", output_dim)
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive; got {init_scale!r}")
        self.output_dim = output_dim
        self.use_batch_norm = bool(use_batch_norm)
        self.synchronized_batch_norm = bool(synchronized_batch_norm)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.init_scale = float(init_scale)

        def bn(layer_name):
            return batch_norm(layer_name, self.batch_norm_momentum,
                              self.synchronized_batch_norm)

        self.hidden_conv = keras.layers.Conv2D(
            output_dim, 1, use_bias=False, kernel_initializer=_torch_kernel_init(init_scale),
            name="hidden_conv")
        self.hidden_bn = bn("hidden_bn") if self.use_batch_norm else None
        self.output_conv = keras.layers.Conv2D(output_dim, 1, use_bias=False,
                                               kernel_initializer="zeros", name="output_conv")
        self.shortcut_conv = None  # its initialiser depends on the input width (build)
        self.output_bn = bn("output_bn")

    def build(self, input_shape):
        channels = input_shape[-1]
        identity_like = self.output_dim >= channels
        self.shortcut_conv = keras.layers.Conv2D(
            self.output_dim, 1, use_bias=True,
            kernel_initializer=(keras.initializers.RandomUniform(-0.01, 0.01) if identity_like
                                else _torch_kernel_init()),
            bias_initializer=_torch_bias_init(channels), name="shortcut_conv")
        hidden_shape = tuple(input_shape[:-1]) + (self.output_dim,)
        # Built here, inside the layer's name scope: paths "<name>/hidden_conv/kernel", ...
        self.hidden_conv.build(input_shape)
        if self.hidden_bn is not None:
            self.hidden_bn.build(hidden_shape)
        self.output_conv.build(hidden_shape)
        self.shortcut_conv.build(input_shape)
        if identity_like:
            eye = np.eye(channels, self.output_dim, dtype=bool)[None, None]
            kernel = self.shortcut_conv.kernel
            kernel.assign(keras.ops.where(eye, keras.ops.ones_like(kernel), kernel))
        self.output_bn.build(hidden_shape)

    def call(self, x, training=None):
        y = self.hidden_conv(x)
        if self.hidden_bn is not None:
            y = self.hidden_bn(y, training=training)
        y = self.output_conv(keras.ops.relu(y))
        return self.output_bn(y + self.shortcut_conv(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        return dict(super().get_config(), output_dim=self.output_dim,
                    use_batch_norm=self.use_batch_norm,
                    synchronized_batch_norm=self.synchronized_batch_norm,
                    batch_norm_momentum=self.batch_norm_momentum, init_scale=self.init_scale)

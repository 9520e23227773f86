"""VGG16 (Simonyan & Zisserman, 2015), the encoder of the hashing experiments (paper Sec. 4.3,
Tables 3 and 4), in two forms:

- `vgg16_bn`: 13 conv3x3-BN-ReLU layers and 5 max-pools, trained from scratch (Table 3). As
  in torchvision's vgg16_bn, the convolutions keep their bias (redundant before BN, but it
  makes the parameter count, 14,723,136, and ported weights match).
- `vgg16`: the plain VGG16 of `keras.applications.VGG16(include_top=False)`, layer for layer
  (names, weight shapes, in-layer ReLU), so that its ImageNet weights file loads as is
  (`init_weights`, nac_tf/models/weights_file.py): the ImageNet-pretrained encoder that
  Table 4 fine-tunes on FLICKR-25K. It takes keras' VGG16 preprocessing (below), 14,714,688
  parameters.

Both end in global average pooling to a 512-d h. The fully connected layers are left out:
the paper's hash codes come from the projection head on h.

Layer names: "block<b>_conv<k>", "block<b>_bn<k>" (vgg16_bn), "block<b>_pool"; "avg_pool"
gives h.
"""
import keras

from nac_tf.models.layers import (
    DEFAULT_BATCH_NORM_MOMENTUM, batch_norm, check_encoder_arguments, conv, encoder_input)
from nac_tf.specs.encoders import VGG16_MEAN, VGG16_STD  # the vgg16 spec's input statistics

# Filters of each 3x3 conv; "M" is a 2x2 max-pool with stride 2.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")


def _vgg16_layers(x, conv_layer):
    """The VGG16 layout on `x`: `conv_layer(x, filters, block, index)` for every 3x3
    convolution of VGG16_CONFIG, a 2x2 max-pool "block<b>_pool" for every "M"."""
    block, index = 1, 1
    for item in VGG16_CONFIG:
        if item == "M":
            x = keras.layers.MaxPooling2D(2, strides=2, padding="same",
                                          name=f"block{block}_pool")(x)
            block, index = block + 1, 1
        else:
            x = conv_layer(x, item, block, index)
            index += 1
    return x


def vgg16_bn(input_shape, *, stem=None, mean=None, std=None, synchronized_batch_norm=False,
             batch_norm_momentum=DEFAULT_BATCH_NORM_MOMENTUM, name="vgg16"):
    """VGG16-BN encoder: images [N, H, W, C] -> h [N, 512].

    `stem` has no effect (VGG has a single form); a valid value or None is accepted so that
    every encoder takes the same arguments. Max-pools pad odd sizes ("same"), so any input
    from 1x1 up works (32x32 ends at 1x1). The default name avoids a trailing "_bn", which
    would make every variable path look like BatchNorm (see nac_tf/models/__init__.py).
    Other arguments as in `nac_tf.models.resnet.build_resnet`.
    """
    input_shape = check_encoder_arguments(input_shape, stem, name, batch_norm_momentum,
                                          accept_no_stem=True)
    with keras.name_scope(name):
        inputs, x = encoder_input(input_shape, mean, std)
        def conv_bn_relu(x, filters, block, index):
            x = conv(x, filters, 3, 1, f"block{block}_conv{index}", use_bias=True)
            x = batch_norm(f"block{block}_bn{index}", batch_norm_momentum,
                           synchronized_batch_norm)(x)
            return keras.layers.ReLU(name=f"block{block}_relu{index}")(x)

        x = _vgg16_layers(x, conv_bn_relu)
        h = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.Model(inputs, h, name=name)




@keras.saving.register_keras_serializable(package="nac_tf")
class ReverseChannels(keras.layers.Layer):
    """RGB -> BGR (the last axis reversed): the channel order of the Caffe-trained VGG16
    weights. No weights, so the weight list stays keras.applications' own."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def _check_vgg16_statistics(mean, std):
    """None (keras' VGG16 preprocessing) or the same values, e.g. read back from a run's
    input_statistics.json; anything else would feed the ImageNet weights other inputs."""
    for argument, given, expected in (("mean", mean, VGG16_MEAN), ("std", std, VGG16_STD)):
        if given is None:
            continue
        values = list(given) if hasattr(given, "__len__") else [given] * 3
        if len(values) != 3 or any(abs(float(v) - e) > 1e-6 * e
                                   for v, e in zip(values, expected)):
            raise ValueError(
                f"{argument}={given!r}: the vgg16 encoder takes keras' VGG16 preprocessing "
                f"(keras.applications.vgg16.preprocess_input), {argument}={expected} on "
                "[0, 1] RGB pixels, then RGB -> BGR; pass None or these values")


def vgg16(input_shape, *, stem=None, mean=None, std=None, synchronized_batch_norm=False,
          batch_norm_momentum=DEFAULT_BATCH_NORM_MOMENTUM, name="vgg16"):
    """VGG16 without BatchNorm: [0, 1] RGB images [N, H, W, 3] -> h [N, 512].

    The layers of `keras.applications.VGG16(include_top=False)` with the same names and
    weight shapes (conv3x3 + ReLU in one layer, "same" padding, biases), after keras' VGG16
    preprocessing (`VGG16_MEAN`, `VGG16_STD`, `ReverseChannels`), so for the same image it
    computes keras' model on `preprocess_input(255 * image)`, followed by the average pool.
    `mean`/`std` must be None or those statistics. `stem`, `synchronized_batch_norm` and
    `batch_norm_momentum` have no effect (no BatchNorm, one form) and are accepted so that
    every encoder takes the same arguments.

    Two choices differ from keras' model without touching its weights: convolutions are
    He-normal initialised (keras: Glorot uniform), the better start for 13 ReLU layers
    without BatchNorm when training from scratch; and the max-pools pad odd sizes ("same")
    instead of dropping the last row and column, so inputs smaller than 32 px or not a
    multiple of 32 work (as in vgg16_bn). On multiples of 32 (the paper's 224 px, CIFAR's
    32 px) both pools are the same.
    """
    input_shape = check_encoder_arguments(input_shape, stem, name, batch_norm_momentum,
                                          accept_no_stem=True)
    if input_shape[2] != 3:
        raise ValueError(f"input_shape={input_shape!r}: the vgg16 encoder takes RGB images "
                         "(3 channels), as keras' VGG16 weights")
    _check_vgg16_statistics(mean, std)
    with keras.name_scope(name):
        inputs, x = encoder_input(input_shape, VGG16_MEAN, VGG16_STD)
        x = ReverseChannels(name="rgb_to_bgr")(x)
        x = _vgg16_layers(x, lambda x, filters, block, index: keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", kernel_initializer="he_normal",
            name=f"block{block}_conv{index}")(x))
        h = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.Model(inputs, h, name=name)

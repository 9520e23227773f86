"""VGG16 with BatchNorm (Simonyan & Zisserman, 2015): the encoder of the hashing experiments.

13 conv3x3-BN-ReLU layers and 5 max-pools, then global average pooling to a 512-d h. The fully
connected layers are left out: the paper's hash codes come from the projection head on h.
As in torchvision's vgg16_bn, the convolutions keep their bias (redundant before BN, but it
makes the parameter count, 14,723,136, and ported weights match).

Layer names: "block<b>_conv<k>", "block<b>_bn<k>", "block<b>_pool"; "avg_pool" gives h.
"""
import keras

from nac_tf.models.layers import (
    DEFAULT_BATCH_NORM_MOMENTUM, batch_norm, check_encoder_arguments, conv, encoder_input)

# Filters of each 3x3 conv; "M" is a 2x2 max-pool with stride 2.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")


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
        block, index = 1, 1
        for item in VGG16_CONFIG:
            if item == "M":
                x = keras.layers.MaxPooling2D(2, strides=2, padding="same",
                                              name=f"block{block}_pool")(x)
                block, index = block + 1, 1
                continue
            x = conv(x, item, 3, 1, f"block{block}_conv{index}", use_bias=True)
            x = batch_norm(f"block{block}_bn{index}", batch_norm_momentum,
                           synchronized_batch_norm)(x)
            x = keras.layers.ReLU(name=f"block{block}_relu{index}")(x)
            index += 1
        h = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.Model(inputs, h, name=name)

"""A small CNN encoder for CPU runs (the quickstart on scikit-learn's digits): 128-d h.

conv3x3(32) -> conv3x3(64, stride 2) -> conv3x3(128, stride 2), each followed by BN and
ReLU, then global average pooling. 8x8 inputs end at 2x2, 16x16 at 4x4.
Layer names: "conv<k>", "conv<k>_bn", "conv<k>_relu"; "avg_pool" gives h.
"""
import keras

from nac_tf.models.layers import (
    DEFAULT_BATCH_NORM_MOMENTUM, batch_norm, check_encoder_arguments, conv, encoder_input)

# (filters, stride) of each conv-BN-ReLU layer.
SMALL_CNN_LAYERS = ((32, 1), (64, 2), (128, 2))


def small_cnn(input_shape, *, stem=None, mean=None, std=None, synchronized_batch_norm=False,
              batch_norm_momentum=DEFAULT_BATCH_NORM_MOMENTUM, name="small_cnn"):
    """Small CNN encoder: images [N, H, W, C] -> h [N, 128].

    `stem` has no effect (accepted, if valid or None, so all encoders share arguments).
    Other arguments as in `nac_tf.models.resnet.build_resnet`.
    """
    input_shape = check_encoder_arguments(input_shape, stem, name, batch_norm_momentum,
                                          accept_no_stem=True)
    with keras.name_scope(name):
        inputs, x = encoder_input(input_shape, mean, std)
        for index, (filters, strides) in enumerate(SMALL_CNN_LAYERS, start=1):
            x = conv(x, filters, 3, strides, f"conv{index}")
            x = batch_norm(f"conv{index}_bn", batch_norm_momentum, synchronized_batch_norm)(x)
            x = keras.layers.ReLU(name=f"conv{index}_relu")(x)
        h = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.Model(inputs, h, name=name)

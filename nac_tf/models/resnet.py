"""ResNet-18/34/50 encoders (He et al., 2016), v1.5, with a CIFAR or an ImageNet stem.

v1.5 (torchvision's ResNet): a downsampling bottleneck strides in its 3x3 convolution, not in
the first 1x1. The encoder's output is the global-average-pooled representation h (512-d for
BasicBlock networks, 2048-d for ResNet-50, 128-d for `resnet_tiny`); there is no classifier.
The paper's CIFAR-10 runs use ResNet-50 with the CIFAR stem (docs/protocols.md section 1).

Layer names: "stem_conv", "stem_bn", "stem_pool"; blocks "stage<s>_block<b>_conv<k>" /
"_bn<k>", the projection shortcut "_shortcut_conv" / "_shortcut_bn"; "avg_pool" gives h.
"""
import keras

from nac_tf.models.layers import (
    DEFAULT_BATCH_NORM_MOMENTUM, batch_norm, check_encoder_arguments, conv, encoder_input,
    max_pool_3x3_stride_2)

BLOCK_TYPES = ("basic", "bottleneck")
# Output channels of a block relative to its width.
EXPANSION = {"basic": 1, "bottleneck": 4}


def _shortcut(x, out_filters, strides, prefix, bn):
    """Identity, or a 1x1 projection + BN when the shape changes (He et al.'s option B)."""
    if strides == 1 and x.shape[-1] == out_filters:
        return x
    shortcut = conv(x, out_filters, 1, strides, f"{prefix}_shortcut_conv")
    return bn(f"{prefix}_shortcut_bn")(shortcut)


def _basic_block(x, width, strides, prefix, bn, zero_init_residual):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""
    shortcut = _shortcut(x, width, strides, prefix, bn)
    y = conv(x, width, 3, strides, f"{prefix}_conv1")
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(bn(f"{prefix}_bn1")(y))
    y = conv(y, width, 3, 1, f"{prefix}_conv2")
    y = bn(f"{prefix}_bn2", zero_gamma=zero_init_residual)(y)
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(y)


def _bottleneck_block(x, width, strides, prefix, bn, zero_init_residual):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4*width)-BN, plus shortcut, ReLU."""
    out_filters = EXPANSION["bottleneck"] * width
    shortcut = _shortcut(x, out_filters, strides, prefix, bn)
    y = conv(x, width, 1, 1, f"{prefix}_conv1")
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(bn(f"{prefix}_bn1")(y))
    y = conv(y, width, 3, strides, f"{prefix}_conv2")
    y = keras.layers.ReLU(name=f"{prefix}_relu2")(bn(f"{prefix}_bn2")(y))
    y = conv(y, out_filters, 1, 1, f"{prefix}_conv3")
    y = bn(f"{prefix}_bn3", zero_gamma=zero_init_residual)(y)
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(y)


def build_resnet(block_type, blocks_per_stage, widths, input_shape, *, stem="cifar", mean=None,
                 std=None, synchronized_batch_norm=False,
                 batch_norm_momentum=DEFAULT_BATCH_NORM_MOMENTUM, zero_init_residual=False,
                 name="resnet"):
    """A ResNet encoder as a functional keras.Model: images [N, H, W, C] -> h [N, F].

    Args:
      block_type: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50, 4x expansion).
      blocks_per_stage, widths: blocks and base width of each stage; stage s > 1 starts
        with a stride-2 block. The stem has widths[0] filters.
      stem: "cifar" (3x3 conv stride 1, no max-pool: 32x32 stays 32x32 through stage 1) or
        "imagenet" (7x7 conv stride 2 and 3x3 max-pool stride 2: 4x smaller).
      mean, std: per-channel input normalisation inside the model; None = identity.
      synchronized_batch_norm: all-reduce BN statistics across replicas.
      batch_norm_momentum: Keras momentum of the moving statistics (0.9 = PyTorch's 0.1).
      zero_init_residual: start the last BN of every block with gamma = 0, so each block
        starts as its shortcut (Goyal et al., 2017).
      name: model name, also the first segment of every variable path.
    """
    if block_type not in BLOCK_TYPES:
        raise ValueError(f"block_type={block_type!r} is not one of: {', '.join(BLOCK_TYPES)}")
    if len(blocks_per_stage) != len(widths) or not widths:
        raise ValueError(f"blocks_per_stage and widths need one entry per stage; got "
                         f"{blocks_per_stage} and {widths}")
    input_shape = check_encoder_arguments(input_shape, stem, name, batch_norm_momentum)
    block_fn = _basic_block if block_type == "basic" else _bottleneck_block

    def bn(layer_name, zero_gamma=False):
        return batch_norm(layer_name, batch_norm_momentum, synchronized_batch_norm, zero_gamma)

    # The name scope puts the model name in front of every variable path
    # ("encoder/stage1_block0_bn1/gamma"), so online and momentum copies stay distinguishable.
    with keras.name_scope(name):
        inputs, x = encoder_input(input_shape, mean, std)
        if stem == "cifar":
            x = conv(x, widths[0], 3, 1, "stem_conv")
            x = keras.layers.ReLU(name="stem_relu")(bn("stem_bn")(x))
        else:
            x = conv(x, widths[0], 7, 2, "stem_conv")
            x = keras.layers.ReLU(name="stem_relu")(bn("stem_bn")(x))
            x = max_pool_3x3_stride_2(x, "stem_pool")
        for stage, (num_blocks, width) in enumerate(zip(blocks_per_stage, widths), start=1):
            for index in range(num_blocks):
                strides = 2 if stage > 1 and index == 0 else 1
                x = block_fn(x, width, strides, f"stage{stage}_block{index}", bn,
                             zero_init_residual)
        h = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.Model(inputs, h, name=name)


def resnet18(input_shape, *, name="resnet18", **kwargs):
    """ResNet-18 encoder (BasicBlock, [2, 2, 2, 2]) -> 512-d h. See `build_resnet`."""
    return build_resnet("basic", [2, 2, 2, 2], [64, 128, 256, 512], input_shape, name=name,
                        **kwargs)


def resnet34(input_shape, *, name="resnet34", **kwargs):
    """ResNet-34 encoder (BasicBlock, [3, 4, 6, 3]) -> 512-d h. See `build_resnet`."""
    return build_resnet("basic", [3, 4, 6, 3], [64, 128, 256, 512], input_shape, name=name,
                        **kwargs)


def resnet50(input_shape, *, name="resnet50", **kwargs):
    """ResNet-50 encoder (Bottleneck, [3, 4, 6, 3]) -> 2048-d h. See `build_resnet`."""
    return build_resnet("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512], input_shape,
                        name=name, **kwargs)


def resnet_tiny(input_shape, *, name="resnet_tiny", **kwargs):
    """One BasicBlock per stage, widths 16-128 -> 128-d h: for quick CPU benchmarks."""
    return build_resnet("basic", [1, 1, 1, 1], [16, 32, 64, 128], input_shape, name=name,
                        **kwargs)

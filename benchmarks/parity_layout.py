"""How a weight of the authors' PyTorch `Model` maps onto nac_tf's Keras variables: names and
array layouts, in NumPy only (no torch), for benchmarks/authors_parity.py and
benchmarks/torch_models.py.

A mapping is a list of `Pair(torch_name, keras_path, layout)`:
- `torch_name`: the parameter or buffer name in their `Model.state_dict()`
  ("encoder.3.0.conv1.weight", "head.0.bias", "encoder.1.running_mean");
- `keras_path`: the variable's path in nac_tf's method without the network prefix
  ("stage1_block0_conv1/kernel", "hidden_dense/bias"), joined to the network's name by
  `keras_variable_path`;
- `layout`: "conv" (torch OIHW <-> Keras HWIO), "dense" (torch [out, in] <-> Keras
  [in, out]) or "vector" (biases, BatchNorm gamma/beta/moving statistics: unchanged).

Images are NCHW in torch and NHWC in Keras (`images_to_torch`); the encoders end in global
average pooling, so h is [N, C] on both sides and no dense layer sees a spatial layout.
"""
import collections
import re

import numpy as np

Pair = collections.namedtuple("Pair", "torch_name keras_path layout")

LAYOUTS = ("conv", "dense", "vector")
# The networks compared: their architecture name (their model.py; "resnet_tiny" is their
# Model around benchmarks/torch_models.resnet_tiny), nac_tf's encoder (the ResNets with the
# CIFAR stem) and the width of h.
ARCHITECTURES = {
    "resnet_tiny": ("resnet_tiny", 128),
    "vgg16": ("vgg16_bn", 512),
    "resnet50": ("resnet50", 2048),
}

# Their Model's heads (model.py): head = [Linear, ReLU], linear = [Linear], prediction =
# [Linear, ReLU, Linear]; nac_tf's ProjectionHead: hidden_dense -> ReLU -> output_dense.
HEAD_LAYERS = {
    "head.0": ("projection_head", "hidden_dense"),
    "linear.0": ("projection_head", "output_dense"),
    "prediction.0": ("inference_network", "hidden_dense"),
    "prediction.2": ("inference_network", "output_dense"),
}
_BATCH_NORM_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                      "running_var": "moving_variance"}
_CONV_LEAVES = {"weight": "kernel", "bias": "bias"}


def to_keras(array, layout):
    """A torch array in nac_tf's layout (a NumPy copy)."""
    array = np.asarray(array)
    if layout == "conv":
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if layout == "dense":
        return np.ascontiguousarray(array.T)
    if layout == "vector":
        return array.copy()
    raise ValueError(f"layout={layout!r} is not one of: {', '.join(LAYOUTS)}")


def to_torch(array, layout):
    """A Keras array in torch's layout (the inverse of `to_keras`)."""
    array = np.asarray(array)
    if layout == "conv":
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
    return to_keras(array, layout)


def images_to_torch(images):
    """NHWC -> NCHW."""
    return np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))


def _leaf(kind, leaf):
    table = _BATCH_NORM_LEAVES if kind == "bn" else _CONV_LEAVES
    return table[leaf]


def resnet_keras_layer(module_path):
    """nac_tf's layer name and the module kind ("conv" / "bn") of a module of their ResNet
    encoder (an nn.Sequential of torchvision's children: 0 conv1, 1 bn1, 2 relu, 3..6
    layer1..layer4, 7 avgpool; `benchmarks.torch_models.resnet_tiny` has the same layout).

    "0" -> stem_conv; "1" -> stem_bn; "4.0.conv2" -> stage2_block0_conv2;
    "4.0.downsample.0" -> stage2_block0_shortcut_conv; ".1" of it -> ..._shortcut_bn.
    """
    if module_path == "0":
        return "stem_conv", "conv"
    if module_path == "1":
        return "stem_bn", "bn"
    match = re.fullmatch(r"([3-6])\.(\d+)\.(conv\d|bn\d|downsample\.[01])", module_path)
    if match is None:
        raise ValueError(f"{module_path!r} is not a module of a torchvision-style ResNet "
                         "encoder")
    stage, block, part = int(match.group(1)) - 2, int(match.group(2)), match.group(3)
    prefix = f"stage{stage}_block{block}"
    if part == "downsample.0":
        return f"{prefix}_shortcut_conv", "conv"
    if part == "downsample.1":
        return f"{prefix}_shortcut_bn", "bn"
    return f"{prefix}_{part}", part[:-1]


def vgg_keras_layers(feature_kinds):
    """nac_tf's vgg16_bn layer names of torchvision's `vgg16_bn().features`, given the kind
    of each of its children in order ("conv", "bn", "relu", "pool"): {index: (name, kind)}
    for the conv and bn children (block<b>_conv<k>, block<b>_bn<k>)."""
    names, block, index = {}, 1, 1
    for position, kind in enumerate(feature_kinds):
        if kind == "conv":
            names[position] = (f"block{block}_conv{index}", "conv")
        elif kind == "bn":
            names[position] = (f"block{block}_bn{index}", "bn")
            index += 1
        elif kind == "pool":
            block, index = block + 1, 1
    return names


def module_pairs(torch_module, keras_layer, kind, leaves):
    """Pairs of one torch module ("encoder.0") and its Keras layer for the given leaves
    ("weight", "bias", "running_mean", ...)."""
    pairs = []
    for leaf in leaves:
        if kind == "bn":
            layout = "vector"
        elif leaf == "weight":
            layout = "conv" if kind == "conv" else "dense"
        else:
            layout = "vector"
        pairs.append(Pair(f"{torch_module}.{leaf}", f"{keras_layer}/{_leaf(kind, leaf)}",
                          layout))
    return pairs


def keras_variable_path(network, keras_path):
    """The full Keras path of `keras_path` inside nac_tf's network named `network`
    ("encoder", "projection_head", "momentum_encoder", ...)."""
    return f"{network}/{keras_path}"

"""PyTorch side of the comparison with the authors' code (benchmarks/authors_parity.py; the
side-by-side runs reuse it): a torch module equal to nac_tf's `resnet_tiny`, the authors'
`Model` around any of their encoders or this one, and the weight transfer between their
`Model` and a nac_tf method, layer by layer (names and layouts: benchmarks/parity_layout.py).

Nothing of the authors' code is copied here: their `model` module is passed in (imported
from the user's checkout by the harness) and only called.
"""
import contextlib

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from parity_layout import (ARCHITECTURES, HEAD_LAYERS, Pair, keras_variable_path,
                           module_pairs, resnet_keras_layer, to_keras, to_torch,
                           vgg_keras_layers)

# nac_tf's resnet_tiny (nac_tf/models/resnet.py): one BasicBlock per stage, these widths.
RESNET_TINY_WIDTHS = (16, 32, 64, 128)


def resnet_tiny():
    """nac_tf's `resnet_tiny` (CIFAR stem: 3x3 conv stride 1, BN, ReLU, no max-pool; one
    torchvision BasicBlock per stage, widths 16-128, stride 2 from stage 2, a 1x1 conv + BN
    shortcut where the shape changes; global average pool) as an nn.Sequential laid out like
    the authors' ResNet-50 encoder (0 conv1, 1 bn1, 2 relu, 3..6 layer1..layer4, 7 avgpool),
    so one name map serves both. Output [N, 128, 1, 1] (their Model flattens it)."""
    layers = [nn.Conv2d(3, RESNET_TINY_WIDTHS[0], 3, 1, 1, bias=False),
              nn.BatchNorm2d(RESNET_TINY_WIDTHS[0]), nn.ReLU(inplace=True)]
    inplanes = RESNET_TINY_WIDTHS[0]
    for stage, width in enumerate(RESNET_TINY_WIDTHS):
        stride = 1 if stage == 0 else 2
        downsample = None
        if stride != 1 or inplanes != width:
            downsample = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride, bias=False),
                                       nn.BatchNorm2d(width))
        layers.append(nn.Sequential(BasicBlock(inplanes, width, stride, downsample)))
        inplanes = width
    layers.append(nn.AdaptiveAvgPool2d((1, 1)))
    return nn.Sequential(*layers)


class _Placeholder(nn.Module):
    """Stands in for torchvision's vgg16_bn while their Model is built around resnet_tiny
    (building the real one would allocate 138 M parameters only to drop them)."""


@contextlib.contextmanager
def _patched(module, name, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def authors_model(model_module, architecture, feature_dim=128, vi=True):
    """Their `Model(feature_dim, VI, architecture)` from `model_module` (their model.py).

    "vgg16" and "resnet50" are theirs as is. "resnet_tiny" is their Model with its encoder
    replaced by `resnet_tiny()`: built as their "vgg16" Model (out_dim 512) around a
    placeholder, then every Linear of the heads that reads or writes the 512-d h is
    replaced by one of the same kind for the 128-d h (head, linear and prediction keep their
    structure and their forward), and `out_dim` is set to 128.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r} is not one of: "
                         f"{', '.join(ARCHITECTURES)}")
    if architecture != "resnet_tiny":
        return model_module.Model(feature_dim=feature_dim, VI=vi, architecture=architecture)
    with _patched(model_module, "vgg16_bn", _Placeholder):
        net = model_module.Model(feature_dim=feature_dim, VI=vi, architecture="vgg16")
    width = ARCHITECTURES["resnet_tiny"][1]
    old = net.out_dim
    net.encoder = resnet_tiny()
    for head in (net.head, net.linear, getattr(net, "prediction", None)):
        if head is None:
            continue
        for index, layer in enumerate(head):
            if isinstance(layer, nn.Linear):
                in_features = width if layer.in_features == old else layer.in_features
                out_features = width if layer.out_features == old else layer.out_features
                head[index] = nn.Linear(in_features, out_features, bias=layer.bias is not None)
    net.out_dim = width
    return net


def _encoder_pairs(net, architecture):
    """Pairs of their encoder's parameters and BatchNorm buffers (keras paths relative to the
    encoder)."""
    pairs = []
    if architecture == "vgg16":
        features = net.encoder.features
        kinds = ["conv" if isinstance(m, nn.Conv2d) else "bn" if isinstance(m, nn.BatchNorm2d)
                 else "pool" if isinstance(m, nn.MaxPool2d) else "relu" for m in features]
        for index, (layer, kind) in vgg_keras_layers(kinds).items():
            module = features[index]
            pairs += module_pairs(f"encoder.features.{index}", layer, kind,
                                  _leaves(module))
        return pairs
    for path, module in net.encoder.named_modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            layer, kind = resnet_keras_layer(path)
            pairs += module_pairs(f"encoder.{path}", layer, kind, _leaves(module))
    return pairs


def _leaves(module):
    if isinstance(module, nn.BatchNorm2d):
        return ("weight", "bias", "running_mean", "running_var")
    return ("weight",) + (("bias",) if module.bias is not None else ())


def transfer_map(net, architecture, prefix=""):
    """[(torch state_dict name, full Keras variable path, layout)] of every parameter and
    BatchNorm statistic of their `net`: the encoder to nac_tf's "encoder", head / linear to
    "projection_head", prediction (when VI) to "inference_network". `prefix` ("momentum_")
    names nac_tf's momentum copies instead."""
    pairs = [Pair(p.torch_name, keras_variable_path(prefix + "encoder", p.keras_path),
                  p.layout) for p in _encoder_pairs(net, architecture)]
    modules = dict(net.named_modules())
    for torch_module, (network, layer) in HEAD_LAYERS.items():
        if torch_module not in modules:
            continue  # no prediction network without VI (SimCLR)
        for p in module_pairs(torch_module, layer, "dense", ("weight", "bias")):
            pairs.append(Pair(p.torch_name, keras_variable_path(prefix + network,
                                                                p.keras_path), p.layout))
    return pairs


def check_covered(net, method, pairs, keras_networks):
    """ValueError unless `pairs` names every parameter and BN statistic of `net` and every
    variable of nac_tf's `keras_networks` (names) exactly once."""
    torch_names = {name for name in net.state_dict() if not name.endswith("num_batches_tracked")}
    mapped = [p.torch_name for p in pairs]
    keras_paths = {v.path for v in method.weights if v.path.split("/")[0] in keras_networks}
    missing = (torch_names - set(mapped)) | (keras_paths - {p.keras_path for p in pairs})
    if missing or len(mapped) != len(set(mapped)):
        raise ValueError(f"the transfer map misses {sorted(missing)[:8]}")


def copy_torch_to_keras(net, method, pairs):
    """Sets nac_tf's variables to their `net`'s values (converted layouts)."""
    state = net.state_dict()
    variables = {v.path: v for v in method.weights}
    for p in pairs:
        value = to_keras(state[p.torch_name].detach().cpu().numpy(), p.layout)
        variable = variables[p.keras_path]
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{p.torch_name} {value.shape} does not fit {p.keras_path} "
                             f"{tuple(variable.shape)}")
        variable.assign(value.astype(variable.dtype))


def torch_arrays(net, pairs, gradients=None):
    """{keras path: array in nac_tf's layout} of `net`'s values, or of `gradients`
    ({torch name: tensor}) when given (pairs without a gradient are left out)."""
    state = net.state_dict() if gradients is None else gradients
    return {p.keras_path: to_keras(state[p.torch_name].detach().cpu().numpy(), p.layout)
            for p in pairs if p.torch_name in state}


def keras_to_torch_array(array, layout):
    """One Keras array as a torch tensor in torch's layout (for transfers the other way)."""
    return torch.from_numpy(to_torch(np.asarray(array), layout))

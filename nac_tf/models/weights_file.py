"""Pretrained initialisation (`init_weights`): an encoder's weights from a Keras weights file.

The paper fine-tunes an ImageNet-pretrained VGG16 with NAC on FLICKR-25K (Sec. 4.3, Table 4);
the `vgg16` encoder has keras.applications' layer names and weight shapes for that. Two HDF5
layouts are read, directly with h5py (Keras' public `load_weights` matches layers by their
order, not by name, and does not say what differs):

- Keras 3, `model.save_weights("x.weights.h5")`: groups layers/<key>/vars/<0, 1, ...>, the
  layer's name in the `name` attribute of its vars group (Keras 3.15 keys the groups by
  class, "conv2d_3"; the key itself is the name when the attribute is absent).
- Keras 2 ("legacy" h5), e.g. keras.applications' downloads such as
  vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5: the root attribute `layer_names`, one
  group per layer with the attribute `weight_names`, the arrays at group[weight_name]; a
  whole saved model keeps this under the group model_weights.

Layers are matched by name, a layer's arrays by their order (the layer's `weights` order,
as both savers write it) and checked by shape. What is fatal:

- an encoder layer with weights that the file lacks, a different number of arrays, or a
  shape mismatch: the encoder would start partly random or not load at all. There is no
  exempt layer: the layers nac_tf adds to a Keras model (input normalisation, channel
  reversal) hold constants, not weights, and everything with weights is a layer the file
  must have;
- not fatal: layers of the file the encoder does not have (e.g. the classifier of a VGG16
  saved with its top, fc1 / fc2 / predictions): every encoder weight is still set; they
  are reported, and listed in the error when something else is wrong.

Files are read at most once per run: a resumed run restores its checkpoint instead.
"""
import dataclasses
import os
from typing import Dict, List, Tuple

import h5py
import numpy as np

from nac_tf.config import ConfigError


@dataclasses.dataclass(frozen=True)
class InitialWeights:
    """What `load_encoder_weights` did: the file, its format ("keras3" or "legacy_h5"),
    the encoder layers loaded, and the file's layers with weights it did not use."""

    path: str
    file_format: str
    loaded_layers: Tuple[str, ...]
    unused_layers: Tuple[str, ...]

    def describe(self):
        text = (f"initialised the encoder from init_weights={self.path!r} ({self.file_format}, "
                f"{len(self.loaded_layers)} layers)")
        if self.unused_layers:
            text += f"; layers of the file not in the encoder: {', '.join(self.unused_layers)}"
        return text


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _attribute_list(group, name):
    """A list attribute, also when Keras split it into name0, name1, ... (large headers)."""
    if name in group.attrs:
        return [_text(v) for v in group.attrs[name]]
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        values.extend(_text(v) for v in group.attrs[f"{name}{chunk}"])
        chunk += 1
    return values


def _read_legacy(root):
    layers = {}
    for name in _attribute_list(root, "layer_names"):
        if name not in root:
            continue
        group = root[name]
        arrays = [np.asarray(group[weight]) for weight in _attribute_list(group, "weight_names")]
        if arrays:
            layers[name] = arrays
    return layers


def _read_keras3(root, path):
    layers = {}
    for key, group in root["layers"].items():
        variables = group.get("vars")
        if variables is None or not len(variables):
            continue
        name = _text(variables.attrs.get("name", key))
        if name in layers:
            raise ConfigError("init_weights", f"{path!r} holds two layers named {name!r}; "
                              "it cannot be matched to an encoder by layer name")
        layers[name] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
    return layers


def read_weights_file(path) -> Tuple[str, Dict[str, List[np.ndarray]]]:
    """(format, {layer name: its arrays in order}) of a Keras weights file, layers without
    weights left out. ConfigError naming init_weights for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise ConfigError("init_weights", f"{path!r} does not exist or is not a file")
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in root.attrs or "layer_names0" in root.attrs:
                return "legacy_h5", _read_legacy(root)
            if "layers" in root:
                return "keras3", _read_keras3(root, path)
    except OSError as error:
        raise ConfigError("init_weights", f"{path!r} is not an HDF5 file ({error})") from error
    raise ConfigError("init_weights", f"{path!r} is an HDF5 file but not a Keras weights file "
                      "(neither a layer_names attribute, Keras 2, nor a layers group, Keras 3)")


def _shape(array):
    return tuple(int(d) for d in array.shape)


def load_encoder_weights(encoder, init_weights) -> InitialWeights:
    """Sets every weight of `encoder` from the Keras weights file `init_weights`.

    Matching and what is fatal: the module docstring. Nothing is assigned unless everything
    matches; a mismatch raises ConfigError naming init_weights, the file and, per problem,
    the layers (missing in the file, shape or count mismatches, unused layers of the file).
    """
    path = os.path.expanduser(init_weights)
    file_format, stored = read_weights_file(path)
    missing, mismatched, assignments, loaded = [], [], [], []
    for layer in encoder.layers:
        weights = layer.weights
        if not weights:
            continue
        arrays = stored.get(layer.name)
        if arrays is None:
            missing.append(layer.name)
            continue
        expected = [tuple(int(d) for d in w.shape) for w in weights]
        found = [_shape(a) for a in arrays]
        if expected != found:
            mismatched.append(f"{layer.name} (encoder {expected}, file {found})")
            continue
        assignments.extend(zip(weights, arrays))
        loaded.append(layer.name)
    names = {layer.name for layer in encoder.layers}
    unused = tuple(sorted(name for name in stored if name not in names))
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"encoder layers missing in the file: {', '.join(missing)}")
        if mismatched:
            problems.append(f"weight shapes that differ: {'; '.join(mismatched)}")
        if unused:
            problems.append(f"layers of the file not in the encoder: {', '.join(unused)}")
        raise ConfigError("init_weights", f"{init_weights!r} does not fit encoder "
                          f"{encoder.name!r}: " + ". ".join(problems))
    for weight, array in assignments:
        weight.assign(array.astype(weight.dtype, copy=False))
    return InitialWeights(path=init_weights, file_format=file_format,
                          loaded_layers=tuple(loaded), unused_layers=unused)

"""Pretraining methods: NAC, NAC-MQ, the SimCLR / MoCo-v2 baselines and AMDIM on one base
class, registered by name in `nac_tf.methods.registry`.

A method is built from an encoder, the `MethodConfig` every method shares, and its own
hyperparameters:

    >>> from nac_tf.methods import MethodConfig, build_method
    >>> from nac_tf.models import build_encoder
    >>> encoder = build_encoder("small_cnn", (8, 8, 3))
    >>> method = build_method("nac", encoder, MethodConfig(code_dim=16, head_hidden_dim=32),
    ...                       flip_prob=0.2)
    >>> method.flip_prob
    0.2

Importing this package imports no TensorFlow: the registry is read without it, and the
classes (`MethodConfig`, `PairLoss`, `TwoViewMethod`, every method) are imported on first use.
"""
import importlib
from collections.abc import Mapping

from nac_tf.methods.registry import (method_names, method_spec, register_method,
                                     unregister_method)

__all__ = ["METHOD_CLASSES", "MethodConfig", "PairLoss", "TwoViewMethod", "build_method",
           "hyperparameters_of", "method_class", "register_method", "unregister_method"]

_BASE = "nac_tf.methods.base"
_LAZY = {"MethodConfig": _BASE, "PairLoss": _BASE, "TwoViewMethod": _BASE}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def method_class(name):
    """The class of method `name` (ValueError listing the registered methods)."""
    return method_spec(name).load()


class _MethodClasses(Mapping):
    """{name: class} of the registered methods, each class imported when it is looked up."""

    def __getitem__(self, name):
        if name not in method_names():
            raise KeyError(name)
        return method_class(name)

    def __iter__(self):
        return iter(method_names())

    def __len__(self):
        return len(method_names())


METHOD_CLASSES = _MethodClasses()


def hyperparameters_of(name, settings):
    """{name: value} of the hyperparameters method `name` declares, read from `settings`: a
    mapping, or an object with those attributes such as a PretrainConfig. Those a mapping
    lacks keep the method's defaults; an object lacking one is an error (AttributeError),
    not a silent default."""
    wanted = method_spec(name).hyperparameters
    if isinstance(settings, Mapping):
        return {key: settings[key] for key in wanted if key in settings}
    return {key: getattr(settings, key) for key in wanted}


def build_method(name, encoder, config, **hyperparameters):
    """The method `name` around `encoder` with the shared `config` (a MethodConfig) and its
    own `hyperparameters` (a TypeError names one the method does not take)."""
    spec = method_spec(name)
    unknown = sorted(set(hyperparameters) - set(spec.hyperparameters))
    if unknown:
        raise TypeError(f"method {name!r} takes the hyperparameters "
                        f"{', '.join(spec.hyperparameters)}; not {', '.join(unknown)}")
    return spec.load()(encoder, config, name=name, **hyperparameters)

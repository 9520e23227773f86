"""Pretraining methods: NAC, NAC-MQ, the SimCLR / MoCo-v2 baselines and AMDIM on one base
class.

A method is built from an encoder, the `MethodConfig` every method shares, and its own
hyperparameters:

    >>> from nac_tf.methods import MethodConfig, build_method
    >>> from nac_tf.models import build_encoder
    >>> encoder = build_encoder("small_cnn", (8, 8, 3))
    >>> method = build_method("nac", encoder, MethodConfig(code_dim=16, head_hidden_dim=32),
    ...                       flip_prob=0.2)
    >>> method.flip_prob
    0.2
"""
from collections.abc import Mapping

from nac_tf.config import METHODS
from nac_tf.methods.amdim import AMDIM
from nac_tf.methods.base import MethodConfig, PairLoss, TwoViewMethod
from nac_tf.methods.moco import MoCoV2
from nac_tf.methods.nac import NAC
from nac_tf.methods.nac_mq import NACMQ
from nac_tf.methods.simclr import SimCLR

METHOD_CLASSES = {"nac": NAC, "nac_mq": NACMQ, "simclr": SimCLR, "moco_v2": MoCoV2,
                  "amdim": AMDIM}

__all__ = ["METHOD_CLASSES", "MethodConfig", "PairLoss", "TwoViewMethod", "build_method",
           "hyperparameters_of", "method_class"]


def method_class(name):
    """The class of method `name` (one of `nac_tf.config.METHODS`)."""
    if name not in METHOD_CLASSES:
        raise ValueError(f"method={name!r} is not one of: {', '.join(METHODS)}")
    return METHOD_CLASSES[name]


def hyperparameters_of(name, settings):
    """{name: value} of the hyperparameters method `name` takes (its `HYPERPARAMETERS`),
    read from `settings`: a mapping, or an object with those attributes such as a
    PretrainConfig. Those `settings` lacks keep the method's defaults."""
    wanted = method_class(name).HYPERPARAMETERS
    if isinstance(settings, Mapping):
        return {key: settings[key] for key in wanted if key in settings}
    return {key: getattr(settings, key) for key in wanted if hasattr(settings, key)}


def build_method(name, encoder, config: MethodConfig, **hyperparameters):
    """The method `name` around `encoder`, with its own `hyperparameters` (a TypeError names
    one the method does not take)."""
    cls = method_class(name)
    unknown = sorted(set(hyperparameters) - set(cls.HYPERPARAMETERS))
    if unknown:
        raise TypeError(f"method {name!r} takes the hyperparameters "
                        f"{', '.join(cls.HYPERPARAMETERS)}; not {', '.join(unknown)}")
    return cls(encoder, config, name=name, **hyperparameters)

"""Pretraining methods: NAC, NAC-MQ and the SimCLR / MoCo-v2 baselines on one base class."""
from nac_tf.methods.base import MethodConfig, PairLoss, TwoViewMethod
from nac_tf.methods.moco import MoCoV2
from nac_tf.methods.nac import NAC
from nac_tf.methods.nac_mq import NACMQ
from nac_tf.methods.simclr import SimCLR

METHOD_CLASSES = {"nac": NAC, "nac_mq": NACMQ, "simclr": SimCLR, "moco_v2": MoCoV2}


def build_method(name, encoder, config: MethodConfig):
    """The method `name` (one of METHOD_CLASSES) around `encoder`."""
    if name not in METHOD_CLASSES:
        raise ValueError(f"--method={name!r} is not one of: {', '.join(METHOD_CLASSES)}")
    return METHOD_CLASSES[name](encoder, config, name=name)

"""Every method by name: its class and the hyperparameters it declares.

A method's hyperparameters are declared here, beside its registry line, rather than in its
own module: this module imports no TensorFlow, so the command line can define, check and
document every method's flags before importing it, while a method's module needs Keras. The
class itself is named by its module path and imported on first use (`MethodSpec.load`).

Adding a method: its module (a `TwoViewMethod` subclass whose constructor takes its
hyperparameters as keyword arguments and checks them with `Setting.check`), its loss
(`nac_tf.objectives`), one `register_method` line below with its settings, and a config
(docs/design.md, "Adding a method"). Its flags, help, validation, run-defining fields and
flags.json keys follow from the declarations.
"""
import dataclasses
import importlib
from typing import Any, Tuple

from nac_tf.settings import FIXED, Setting, merge_settings, non_negative, positive, unit_interval

# What the NAC-MQ denominator holds besides the stored queue (nac_tf.methods.nac_mq):
# batch_in_queue: the current global batch's momentum codes written into the queue first
#   (the authors' CIFAR code enqueues before computing the loss);
# positive_key: each row's positive momentum key prepended (their ImageNet code, MoCo's way);
# queue_only: the stored queue alone (Eq. 20 read literally).
MQ_NEGATIVES = ("batch_in_queue", "positive_key", "queue_only")
# How the NAC-MQ denominator applies the channel's beta = 1/2 log((1 - p) / p)
# (nac_tf.objectives.nac_mq_loss): multiply (Eq. 20, the authors' ImageNet code) or divide
# (the authors' CIFAR code).
MQ_BETA_RULES = ("multiply", "divide")

# NAC's noisy channel (NAC, NAC-MQ).
FLIP_PROB = Setting("flip_prob", 0.1,
                    "Bit-flip probability p of the noisy channel, 0 < p < 0.5.",
                    interval=(0.0, 0.5, True, True), run=FIXED)
# The softmax temperature of the contrastive baselines (SimCLR, MoCo-v2).
TEMPERATURE = Setting("temperature", 0.5, "Softmax temperature of SimCLR / MoCo-v2.",
                      interval=positive(), run=FIXED)
# The momentum networks and the queue of `nac_tf.methods.base.MomentumQueueMethod`: a method
# that declares them uses a queue (`MethodSpec.uses_queue`).
QUEUE_SIZE = Setting("queue_size", 50000,
                     "Queue length M (nac_mq, moco_v2); a multiple of 2 x batch_size.",
                     at_least=1, run=FIXED)
MOMENTUM = Setting("momentum", 0.99, "EMA decay of the momentum networks (nac_mq, moco_v2).",
                   interval=unit_interval(high_open=True), run=FIXED)
QUEUE_INIT_SCALE = Setting("queue_init_scale", 1e-3,
                           "Standard deviation of the Gaussian initial queue entries (the "
                           "authors: 1e-3).", interval=positive(), run=FIXED)
QUEUE_SETTINGS = (QUEUE_SIZE, MOMENTUM, QUEUE_INIT_SCALE)
# NAC-MQ's own.
L2_WEIGHT = Setting("l2_weight", 0.1, "lambda of the ||z||^2 term of NAC-MQ (Eq. 20).",
                    interval=non_negative(), run=FIXED)
MQ_NEGATIVES_SETTING = Setting(
    "mq_negatives", "batch_in_queue",
    "What the NAC-MQ denominator holds: batch_in_queue (the current batch's momentum codes "
    "written into the queue before the loss, the authors' CIFAR code), positive_key (each "
    "row's positive momentum key prepended to the queue, their ImageNet code / MoCo), "
    "queue_only (the stored queue).", choices=MQ_NEGATIVES, run=FIXED)
MQ_BETA = Setting(
    "mq_beta", "multiply",
    "How the NAC-MQ denominator applies beta = 1/2 log((1 - p) / p): multiply (Eq. 20, the "
    "authors' ImageNet code) or divide (the authors' CIFAR code: z~.v / beta).",
    choices=MQ_BETA_RULES, run=FIXED)
MQ_INFERENCE_WEIGHT = Setting(
    "mq_inference_weight", 1.0,
    "Weight of NAC-MQ's online inference-network likelihood, a mean over the 2K rows (the "
    "authors' CIFAR code sums the two views' means: 2). It trains phi only.",
    interval=positive(), run=FIXED)
# AMDIM (AMDIM Sec. 3.3 and 3.7; nac_tf.methods.amdim).
AMDIM_SETTINGS = (
    Setting("amdim_regularization_weight", 4e-2,
            "AMDIM: weight lambda of the squared-score regulariser (the paper's 4e-2; the "
            "authors' code computes 5e-2).", interval=non_negative(), run=FIXED),
    Setting("amdim_clip_value", 20.0,
            "AMDIM: soft clipping c of the NCE scores, c tanh(s / c) (20).",
            interval=positive(), run=FIXED),
    Setting("amdim_mixture_components", 0,
            "AMDIM: mixture components k of the mixture-based 1->7 task (paper Sec. 3.7); 0: "
            "off (the plain 1->7 task).", interval=(0, float("inf"), False, False), run=FIXED),
    Setting("amdim_mixture_entropy_weight", 1.0,
            "AMDIM with mixture components: the entropy weight alpha of the paper's Eq. 6 (q = "
            "softmax(s_nce / alpha)).", interval=positive(), run=FIXED),
)
(AMDIM_REGULARIZATION_WEIGHT, AMDIM_CLIP_VALUE, AMDIM_MIXTURE_COMPONENTS,
 AMDIM_MIXTURE_ENTROPY_WEIGHT) = AMDIM_SETTINGS


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method: `cls` is its class, or "module:Class" imported on first use;
    `settings` its hyperparameters, which are its constructor's keyword arguments."""

    name: str
    cls: Any
    settings: Tuple[Setting, ...]

    @property
    def hyperparameters(self):
        """The names of the method's hyperparameters, in declaration order."""
        return tuple(setting.name for setting in self.settings)

    @property
    def uses_queue(self):
        """Whether the method keeps a queue of momentum keys (it declares `queue_size`)."""
        return QUEUE_SIZE in self.settings

    def load(self):
        """The method's class."""
        if isinstance(self.cls, str):
            module, _, name = self.cls.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.cls


_METHODS = {}  # name: MethodSpec, in registration order
_LISTENERS = []  # called with the would-be registry before a change is made


def on_change(listener):
    """Calls `listener({name: MethodSpec})` before every registration or removal with the
    registry as it would be; an exception from it refuses the change. nac_tf.config uses it
    to keep PretrainConfig's fields those of the registered methods."""
    _LISTENERS.append(listener)


def _change(methods):
    merge_settings(spec.settings for spec in methods.values())  # a name declared alike
    for listener in _LISTENERS:
        listener(methods)
    _METHODS.clear()
    _METHODS.update(methods)


def register_method(name, cls, settings=()):
    """Registers method `name`: its class `cls` (or "module:Class") and its hyperparameters
    `settings` (Setting declarations). ValueError when the name is taken, or when one of
    the settings is declared differently by another method or is a run setting."""
    if name in _METHODS:
        raise ValueError(f"method {name!r} is registered already")
    _change({**_METHODS, name: MethodSpec(name, cls, tuple(settings))})


def unregister_method(name):
    """Removes method `name` (and the settings only it declared) from the registry."""
    method_spec(name)
    _change({key: spec for key, spec in _METHODS.items() if key != name})


def method_names():
    """The names of the registered methods, in registration order."""
    return tuple(_METHODS)


def method_spec(name):
    """The MethodSpec of method `name`, or ValueError listing the registered ones."""
    if name not in _METHODS:
        raise ValueError(f"method={name!r} is not one of: {', '.join(_METHODS)}")
    return _METHODS[name]


def method_settings(methods=None):
    """{name: Setting} of the hyperparameters of every registered method (or of `methods`,
    a {name: MethodSpec})."""
    methods = _METHODS if methods is None else methods
    return merge_settings(spec.settings for spec in methods.values())


register_method("nac", "nac_tf.methods.nac:NAC", (FLIP_PROB,))
register_method("nac_mq", "nac_tf.methods.nac_mq:NACMQ",
                (FLIP_PROB, QUEUE_SIZE, MOMENTUM, L2_WEIGHT, MQ_NEGATIVES_SETTING,
                 QUEUE_INIT_SCALE, MQ_BETA, MQ_INFERENCE_WEIGHT))
register_method("simclr", "nac_tf.methods.simclr:SimCLR", (TEMPERATURE,))
register_method("moco_v2", "nac_tf.methods.moco:MoCoV2",
                (TEMPERATURE, QUEUE_SIZE, MOMENTUM, QUEUE_INIT_SCALE))
register_method("amdim", "nac_tf.methods.amdim:AMDIM", AMDIM_SETTINGS)

"""The optimizers and learning-rate schedules of the trainer: LARS (You et al., 2017) as used
by SimCLR and NAC with the warm-up + cosine schedule; Adam with coupled L2 weight decay and
the warm-up + step-decay schedule, as the AMDIM authors train (`AdamL2`,
`WarmupStepSchedule`); and the batch-size scaling of the base learning rate.

LARS update for a variable w with gradient g and learning rate lr (coupled weight decay, as in
the reference TF SimCLR LARS; the NAC authors' code uses the same hyper-parameters: trust
coefficient eta = 1e-3, momentum 0.9, weight decay 1e-6):

    g <- g + weight_decay * w                              (unless excluded from weight decay)
    trust = eta * ||w|| / (||g|| + eps)  if ||w|| > 0 and ||g|| > 0, else 1
    lr_w = lr * trust                                      (lr_w = lr if excluded from adaptation)
    v <- momentum * v + lr_w * g
    w <- w - v                         (Nesterov: w <- w - (momentum * v + lr_w * g))

The authors' PyTorch LARS froze every parameter initialised to zero (a `>= 0` test on the
norms); here a zero norm only sets the trust ratio to 1, so zero-initialised weights train,
unless `freeze_zero_norm` asks for the authors' behaviour (trust = eta ||w|| / ||g|| always,
so 0 for ||w|| = 0).

Which variables are adapted is a rule, named in `LARS_RULES` (`lars_rule_arguments`):
  simclr   BatchNorm parameters and biases get neither weight decay nor the trust ratio
           (the reference TF SimCLR LARS): they take raw lr * g steps;
  all      every variable gets weight decay and the trust ratio;
  authors  `all`, with zero-norm variables frozen (the NAC authors' code: BatchNorm betas
           never move; their heads' biases are not zero-initialised and do move).

Exclusion is decided by regular expressions searched (`re.search`) in the variable's Keras
*path* ("encoder/stage1_block0_bn1/gamma"), never its short name ("gamma"), so a rule can
name the layer that holds the variable. `DEFAULT_EXCLUDES` excludes a variable if

  (a) its leaf name (last path segment) is exactly "gamma", "beta" or "bias"; or
  (b) the layer segment directly holding it (the second-to-last segment) is a BatchNorm
      layer by name: "bn", "bn<k>", or ending in "_bn" / "_bn<k>" (the convention of
      nac_tf/models and keras.applications, e.g. "stage1_block0_bn1", "conv1_bn"), or
      "batch_norm" / "batch_normalization", optionally with a "_<k>" suffix and a "<prefix>_"
      prefix (Keras' default names, e.g. "batch_normalization_3").

Only whole segments count, and for (b) only the segment directly above the leaf, so
"subnet/kernel", "bnorm_projection/kernel", "bn_proj/kernel" and a model named "vgg16_bn"
("vgg16_bn/conv1/kernel") are NOT excluded.
"""
import math
import numbers
import re

import keras
from keras import ops

from nac_tf.config import LARS_RULES, LR_SCALINGS

DEFAULT_EXCLUDES = (
    # (a) normalisation scale / offset and biases, by leaf name.
    r"(^|/)(gamma|beta|bias)$",
    # (b) any variable held directly by a layer named like a BatchNorm ("..._bn<k>").
    r"(^|/)([^/]*_)?bn\d*/[^/]+$",
    # (b) Keras' default BatchNormalization names ("batch_normalization_<k>").
    r"(^|/)([^/]*_)?batch_norm(alization)?(_\d+)?/[^/]+$",
)



def lars_rule_arguments(rule):
    """LARS keyword arguments of a rule of `LARS_RULES` (see the module docstring)."""
    if rule not in LARS_RULES:
        raise ValueError(f"rule={rule!r} is not one of the accepted values: "
                         f"{', '.join(LARS_RULES)}")
    if rule == "simclr":
        return dict(exclude_from_weight_decay=DEFAULT_EXCLUDES, freeze_zero_norm=False)
    return dict(exclude_from_weight_decay=(), freeze_zero_norm=rule == "authors")


def _check_patterns(argument, patterns):
    """A tuple of compiled-checked regex strings; a single string is one pattern."""
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        # tuple("bias") would be ("b", "i", "a", "s"): one-letter patterns matching everything.
        patterns = (patterns,)
    try:
        patterns = tuple(patterns)
    except TypeError:
        raise ValueError(f"{argument} must be a regex string, a list of regex strings or None; "
                         f"got {patterns!r}") from None
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"{argument} must contain regex strings; got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{argument} has an invalid regex {pattern!r}: {error}") from None
    return patterns


def _constant(value, dtype):
    """A Python float hyperparameter as a tensor of `dtype`, converted directly: a cast would
    go through float32 first (1e-3 becomes 1.0000000475e-3 in float64 variables)."""
    return ops.convert_to_tensor(value, dtype=dtype)


def _variable_path(variable):
    # Keras variables know their path; a raw backend variable only its (scoped) name.
    path = getattr(variable, "path", None)
    return path if path is not None else variable.name.split(":")[0]


@keras.saving.register_keras_serializable(package="nac_tf")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise adaptive rate scaling with momentum and coupled weight decay.

    Args:
        learning_rate: float or a `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: momentum of the velocity v, in [0, 1).
        weight_decay: coupled (L2) weight decay added to the gradient, >= 0.
        trust_coefficient: eta of the trust ratio, > 0.
        eps: added to ||g|| in the trust ratio's denominator, >= 0.
        exclude_from_weight_decay: regex string(s) searched in variable paths; matching
            variables get no weight decay. None or [] excludes nothing.
        exclude_from_layer_adaptation: the same for the trust ratio; None means "same as
            exclude_from_weight_decay".
        nesterov: Nesterov momentum.
        freeze_zero_norm: the trust ratio of a variable with ||w|| = 0 is 0 (it never
            moves; the NAC authors' LARS) instead of 1.
        **kwargs: other `keras.optimizers.Optimizer` arguments (clipnorm, use_ema, ...),
            except `weight_decay`, which this class owns.
    """

    def __init__(self, learning_rate, momentum=0.9, weight_decay=1e-6, trust_coefficient=1e-3,
                 eps=0.0, exclude_from_weight_decay=DEFAULT_EXCLUDES,
                 exclude_from_layer_adaptation=None, nesterov=False, freeze_zero_norm=False,
                 name="lars", **kwargs):
        if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)  # Keras rejects int learning rates.
        # Keras' own (decoupled) weight decay stays off: LARS couples decay into the gradient
        # before the trust ratio, so the base class must not decay the weights a second time.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}")
        if not trust_coefficient > 0.0:
            raise ValueError(f"trust_coefficient must be > 0; got {trust_coefficient!r}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0; got {eps!r}")
        self.momentum = float(momentum)
        # Not `self.weight_decay`: the base class would then apply its decoupled decay too.
        self.lars_weight_decay = float(weight_decay)
        self.trust_coefficient = float(trust_coefficient)
        self.eps = float(eps)
        self.nesterov = bool(nesterov)
        self.freeze_zero_norm = bool(freeze_zero_norm)
        # Not `self.exclude_from_weight_decay`: that name is a method of the base class.
        self.weight_decay_exclusions = _check_patterns(
            "exclude_from_weight_decay", exclude_from_weight_decay)
        self.layer_adaptation_exclusions = (
            self.weight_decay_exclusions if exclude_from_layer_adaptation is None
            else _check_patterns("exclude_from_layer_adaptation",
                                 exclude_from_layer_adaptation))

    def uses_weight_decay(self, variable):
        """Whether `variable` (by its path) gets the coupled weight decay."""
        path = _variable_path(variable)
        return self.lars_weight_decay > 0.0 and not any(
            re.search(pattern, path) for pattern in self.weight_decay_exclusions)

    def uses_layer_adaptation(self, variable):
        """Whether `variable` (by its path) gets the trust ratio."""
        path = _variable_path(variable)
        return not any(re.search(pattern, path) for pattern in self.layer_adaptation_exclusions)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # One momentum slot per variable, created through the base class so that it is an
        # optimizer variable (checkpointed, saved) colocated with its model variable under a
        # tf.distribute strategy.
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Decided here, from the Keras variables: under the TensorFlow backend update_step
        # receives the raw (per-replica) tf.Variable, which has no Keras path.
        self._weight_decay_flags = tuple(self.uses_weight_decay(v) for v in variables)
        self._layer_adaptation_flags = tuple(self.uses_layer_adaptation(v) for v in variables)

    def update_step(self, gradient, variable, learning_rate):
        """One LARS step for one variable (see the module docstring)."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        # The trust ratio needs the full gradient norm, so sparse gradients are densified.
        g = ops.cast(ops.convert_to_tensor(gradient), dtype)
        w = ops.convert_to_tensor(variable)
        lr = ops.cast(learning_rate, dtype)
        if self._weight_decay_flags[index]:
            g = g + _constant(self.lars_weight_decay, dtype) * w
        if self._layer_adaptation_flags[index]:
            w_norm = ops.sqrt(ops.sum(ops.square(w)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            both_positive = ops.logical_and(w_norm > 0, g_norm > 0)
            # The denominator is made safe too, so no inf/NaN is ever computed.
            denominator = ops.where(both_positive, g_norm + _constant(self.eps, dtype),
                                    ops.ones_like(g_norm))
            fallback = (ops.where(w_norm > 0, ops.ones_like(w_norm), ops.zeros_like(w_norm))
                        if self.freeze_zero_norm else ops.ones_like(w_norm))
            trust = ops.where(both_positive,
                              _constant(self.trust_coefficient, dtype) * w_norm / denominator,
                              fallback)
            lr = lr * trust
        momentum = _constant(self.momentum, dtype)
        velocity = self.momentums[index]
        new_velocity = momentum * velocity + lr * g
        self.assign(velocity, new_velocity)
        step = momentum * new_velocity + lr * g if self.nesterov else new_velocity
        self.assign_sub(variable, step)

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum, weight_decay=self.lars_weight_decay,
            trust_coefficient=self.trust_coefficient, eps=self.eps, nesterov=self.nesterov,
            freeze_zero_norm=self.freeze_zero_norm,
            exclude_from_weight_decay=list(self.weight_decay_exclusions),
            exclude_from_layer_adaptation=list(self.layer_adaptation_exclusions))
        return config


@keras.saving.register_keras_serializable(package="nac_tf")
class AdamL2(keras.optimizers.Optimizer):
    """Adam as torch.optim.Adam computes it, with its coupled L2 weight decay (the AMDIM
    authors' optimizer: lr 2e-4, betas (0.8, 0.999), eps 1e-8, weight_decay 1e-5).

    For a variable w with gradient g, at step t = 1, 2, ...:

        g <- g + weight_decay * w            (coupled L2: the decay goes through the moments)
        m <- beta_1 m + (1 - beta_1) g
        v <- beta_2 v + (1 - beta_2) g^2
        w <- w - lr * (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)

    Not `keras.optimizers.Adam`, for two reasons: its `weight_decay` is decoupled (AdamW:
    w <- w - lr * wd * w outside the moments), which is another optimizer than torch's Adam
    with weight_decay; and it adds epsilon to sqrt(v) before the bias correction of v
    (Kingma and Ba's "epsilon hat"), i.e. torch's epsilon divided by sqrt(1 - beta_2^t)
    (32x at the first step with beta_2 = 0.999), which differs early in training and for
    small gradients. Every variable is decayed, as torch
    decays every parameter it is given (BatchNorm parameters and biases included).

    Args:
        learning_rate: float or a `keras.optimizers.schedules.LearningRateSchedule`.
        beta_1, beta_2: the moments' decay rates, in [0, 1).
        epsilon: added to the bias-corrected sqrt(v), > 0.
        weight_decay: coupled L2 coefficient added to the gradient, >= 0.
        **kwargs: other `keras.optimizers.Optimizer` arguments, except `weight_decay`.
    """

    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=0.0, name="adam_l2", **kwargs):
        if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        # Keras' decoupled decay stays off: the decay is coupled into the gradient here.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        for argument, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{argument} must be in [0, 1); got {value!r}")
        if not epsilon > 0.0:
            raise ValueError(f"epsilon must be > 0; got {epsilon!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}")
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        # Not `self.weight_decay`: the base class would then apply its decoupled decay too.
        self.l2_weight_decay = float(weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # Optimizer variables (checkpointed, colocated with their model variable).
        self.first_moments = self.add_optimizer_variables(variables, "first_moment")
        self.second_moments = self.add_optimizer_variables(variables, "second_moment")

    def update_step(self, gradient, variable, learning_rate):
        """One torch-Adam step for one variable (see the class docstring)."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        g = ops.cast(ops.convert_to_tensor(gradient), dtype)
        if self.l2_weight_decay > 0.0:
            g = g + ops.cast(self.l2_weight_decay, dtype) * ops.convert_to_tensor(variable)
        lr = ops.cast(learning_rate, dtype)
        # The base class counts applied steps in `iterations`; this is step t = iterations + 1.
        t = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        m, v = self.first_moments[index], self.second_moments[index]
        new_m = beta_1 * m + (1.0 - beta_1) * g
        new_v = beta_2 * v + (1.0 - beta_2) * g * g
        self.assign(m, new_m)
        self.assign(v, new_v)
        m_hat = new_m / (1.0 - ops.power(beta_1, t))
        v_hat = new_v / (1.0 - ops.power(beta_2, t))
        self.assign_sub(variable, lr * m_hat / (ops.sqrt(v_hat) + ops.cast(self.epsilon, dtype)))

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                      weight_decay=self.l2_weight_decay)
        return config


def _check_int(argument, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{argument} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _checked_warmup(peak_learning_rate, total_steps, warmup_steps):
    """(peak, total, warm-up) of a warm-up schedule, checked: peak > 0, 0 <= warm-up <=
    total, total >= 1."""
    if (isinstance(peak_learning_rate, bool) or not isinstance(peak_learning_rate, numbers.Real)
            or not peak_learning_rate > 0):
        raise ValueError(f"peak_learning_rate must be a number > 0; got {peak_learning_rate!r}")
    total_steps = _check_int("total_steps", total_steps, 1)
    warmup = _check_int("warmup_steps", warmup_steps, 0)
    if warmup > total_steps:
        raise ValueError(f"warmup_steps must be <= total_steps={total_steps}; got "
                         f"{warmup_steps!r}")
    return float(peak_learning_rate), total_steps, warmup


@keras.saving.register_keras_serializable(package="nac_tf")
class WarmupCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Per-step linear warm-up from 0 to the peak, then cosine decay to 0 (NAC Sec. 4.1,
    the authors' code: 10 warm-up epochs).

        lr(s) = peak * s / warmup                                          s < warmup
        lr(s) = peak * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))  warmup <= s < total
        lr(s) = 0                                                          s >= total

    `warmup_steps=0` starts at the peak; `warmup_steps=total_steps` warms up for the whole run.
    Keras evaluates the schedule at the optimizer's iteration count *before* the step, so the
    first step uses lr(0) = 0 when there is a warm-up.
    """

    def __init__(self, peak_learning_rate, total_steps, warmup_steps):
        self.peak_learning_rate, self.total_steps, self.warmup_steps = _checked_warmup(
            peak_learning_rate, total_steps, warmup_steps)

    def __call__(self, step):
        # float32 counts steps exactly up to 2**24 (16.7 M), far beyond any run here.
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        warmup = float(self.warmup_steps)
        total = float(self.total_steps)
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
        lr = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            lr = ops.where(step < warmup, peak * step / warmup, lr)
        # Explicit, so the end is exactly 0 (cos(pi) is not) and warmup == total ends at 0.
        return ops.where(step >= total, ops.zeros_like(lr), lr)

    def get_config(self):
        return {"peak_learning_rate": self.peak_learning_rate,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="nac_tf")
class WarmupStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Per-step linear warm-up from 0 to the peak, then the peak multiplied by
    `decay_factor` at every boundary passed (the AMDIM authors' schedule: 500 warm-up
    updates, x0.2 at epochs 250 and 280 of 300 on CIFAR-10 / STL-10, torch's MultiStepLR).

        lr(s) = peak * min(1, s / warmup) * decay_factor ^ #{b in decay_steps : b <= s}

    The warm-up multiplies the decayed rate, so a boundary inside the warm-up still counts.
    As `WarmupCosineSchedule`, Keras evaluates it at the iteration count before the step,
    so the first step uses lr(0) = 0 when there is a warm-up (the authors' first update
    uses peak / 500: one step of the warm-up apart). `total_steps` only bounds the
    boundaries; the rate does not fall to 0 at the end.
    """

    def __init__(self, peak_learning_rate, total_steps, warmup_steps, decay_steps=(),
                 decay_factor=0.2):
        self.peak_learning_rate, self.total_steps, self.warmup_steps = _checked_warmup(
            peak_learning_rate, total_steps, warmup_steps)
        self.decay_steps = tuple(_check_int("decay_steps", step, 1) for step in decay_steps)
        # Non-decreasing: two fractions of a short run may round to one step, which then
        # decays twice.
        if list(self.decay_steps) != sorted(self.decay_steps) or any(
                step > self.total_steps for step in self.decay_steps):
            raise ValueError(f"decay_steps must be non-decreasing steps in [1, total_steps="
                             f"{self.total_steps}]; got {decay_steps!r}")
        if (isinstance(decay_factor, bool) or not isinstance(decay_factor, numbers.Real)
                or not 0.0 < decay_factor <= 1.0):
            raise ValueError(f"decay_factor must be in (0, 1]; got {decay_factor!r}")
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = self.peak_learning_rate * ops.ones_like(step)
        for boundary in self.decay_steps:
            lr = ops.where(step >= float(boundary), lr * self.decay_factor, lr)
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(step / float(self.warmup_steps), 1.0)
        return lr

    def get_config(self):
        return {"peak_learning_rate": self.peak_learning_rate,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "decay_steps": list(self.decay_steps), "decay_factor": self.decay_factor}


def scaled_learning_rate(base_learning_rate, batch_size, scaling):
    """The peak learning rate for a global batch size.

    linear: base * batch / 256 (SimCLR); sqrt: base * sqrt(batch) (NAC on ImageNet:
    0.075 * sqrt(512) = 1.70); none: base (NAC on CIFAR: 3.0 at batch 1000).
    """
    if scaling not in LR_SCALINGS:
        raise ValueError(f"scaling={scaling!r} is not one of the accepted values: "
                         f"{', '.join(LR_SCALINGS)}")
    _check_int("batch_size", batch_size, 1)
    if scaling == "linear":
        return base_learning_rate * batch_size / 256.0
    if scaling == "sqrt":
        return base_learning_rate * math.sqrt(batch_size)
    return base_learning_rate

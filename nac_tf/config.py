"""The pretraining configuration: one plain dataclass, validated up front, and every list of
accepted values.

The command line (`nac-train`, `nac_tf.cli.train`) turns flags into a `PretrainConfig`;
library code only ever sees this object. `validate_config` checks every field before any
graph is built and raises `ConfigError` naming the field and the accepted values (the
command line prints it as `error: --<field>: ...`).

This module is the one home of the choice lists; the modules that implement a choice import
its list from here (and tests check the two agree). It imports neither TensorFlow nor Keras,
so a command line can validate its settings before paying for them.
"""
import dataclasses
from typing import Optional, Tuple

from nac_tf.specs import datasets as dataset_specs
from nac_tf.specs import encoders as encoder_specs

METHODS = ("nac", "nac_mq", "simclr", "moco_v2", "amdim")  # nac_tf.methods.METHOD_CLASSES
# The datasets and encoders: one record each in nac_tf.specs (loaders, builders, what they
# need), from which these names derive.
DATASETS = dataset_specs.DATASETS
ENCODERS = encoder_specs.ENCODERS
ENCODER_STEMS = ("cifar", "imagenet")  # the ResNet stems (nac_tf.models.layers)
STEMS = ("auto",) + ENCODER_STEMS  # auto: cifar up to 64 px, imagenet above
LR_SCALINGS = ("none", "linear", "sqrt")  # nac_tf.optim.scaled_learning_rate
LARS_RULES = ("simclr", "all", "authors")  # nac_tf.optim.lars_rule_arguments
# nac_tf.training.make_optimizer: lars (nac_tf.optim.LARS, the default), adam
# (nac_tf.optim.AdamL2: torch's Adam with coupled L2, the AMDIM authors' optimizer).
OPTIMIZERS = ("lars", "adam")
# nac_tf.training.learning_rate_schedule: warmup_cosine (nac_tf.optim.WarmupCosineSchedule,
# the default), warmup_step (nac_tf.optim.WarmupStepSchedule: constant after the warm-up,
# multiplied by lr_decay_factor at each of lr_decay_fractions of training; the AMDIM authors').
LR_SCHEDULES = ("warmup_cosine", "warmup_step")
HEAD_INITIALIZERS = ("keras", "pytorch")  # nac_tf.models.heads.ProjectionHead
# What the NAC-MQ denominator holds besides the stored queue (nac_tf.methods.nac_mq):
# batch_in_queue: the current global batch's momentum codes written into the queue first
#   (the authors' CIFAR code enqueues before computing the loss);
# positive_key: each row's positive momentum key prepended (their ImageNet code, MoCo's way);
# queue_only: the stored queue alone (Eq. 20 read literally).
MQ_NEGATIVES = ("batch_in_queue", "positive_key", "queue_only")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")  # nac_tf.distribute
BATCH_NORM_MODES = ("sync", "per_replica", "per_view")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")  # nac_tf.precision
# What loaders of image files do with a file they cannot decode.
ON_CORRUPT = ("skip", "raise")
# The view recipe (nac_tf.training.augmentation_config): simclr, SimCLR's family set by the
# fields crop_area_min, flip, jitter_strength, jitter_prob, grayscale_prob, blur_prob (the
# CIFAR and MoCo-v2 recipes); amdim, the AMDIM authors' (nac_tf.data.views.amdim_recipe at
# the run's image size), which fixes all of those itself.
AUGMENTATIONS = ("simclr", "amdim")
# Where the views are augmented (nac_tf.training.input_augmentation): host, all of it in the
# input pipeline; device, the crop there and the colour stages in the train step.
AUGMENT_ON = ("host", "device")


class ConfigError(ValueError):
    """A setting has a value the run cannot use: `field` names it (a PretrainConfig field,
    which is also the command line's flag name), `reason` says why."""

    def __init__(self, field, reason):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run (defaults: NAC on CIFAR-10, docs/protocols.md
    section 1)."""

    method: str = "nac"
    # Data.
    dataset: str = "cifar10"
    data_dir: str = ""
    image_size: int = 0  # 0: the dataset's native size
    on_corrupt: str = "skip"  # unreadable image files (image_folder, flickr25k)
    # Encoder and heads.
    encoder: str = "resnet50"
    stem: str = "auto"
    # A Keras weights file loaded into the encoder of a new run (not on resume):
    # nac_tf.models.weights_file. "": the random initialisation.
    init_weights: str = ""
    code_dim: int = 128
    head_hidden_dim: int = 0  # 0: the encoder's output width
    head_batch_norm: bool = False
    head_scale_by_sqrt_dim: bool = True
    head_init: str = "keras"  # "pytorch": torch.nn.Linear's, as the authors' heads
    batch_norm: str = "sync"
    # Optimisation.
    batch_size: int = 1000
    epochs: int = 1000
    train_steps: int = 0  # > 0 overrides epochs
    learning_rate: float = 3.0
    learning_rate_scaling: str = "none"
    warmup_epochs: float = 10.0
    weight_decay: float = 1e-6
    lars_momentum: float = 0.9
    lars_trust_coefficient: float = 1e-3
    lars_rule: str = "simclr"  # which variables LARS adapts (LARS_RULES)
    optimizer: str = "lars"  # OPTIMIZERS; weight_decay is coupled (L2) in both
    adam_beta1: float = 0.9  # optimizer="adam" (the AMDIM authors: 0.8)
    adam_beta2: float = 0.999
    lr_schedule: str = "warmup_cosine"  # LR_SCHEDULES
    # lr_schedule="warmup_step": comma-separated fractions of the total steps at which the
    # rate is multiplied by lr_decay_factor ("" : none); the AMDIM authors' CIFAR-10
    # schedule decays at epochs 250 and 280 of 300: "0.8333333,0.9333333".
    lr_decay_fractions: str = ""
    lr_decay_factor: float = 0.2
    # Objectives.
    flip_prob: float = 0.1
    queue_size: int = 50000
    queue_init_scale: float = 1e-3  # std of the initial queue entries (authors: 1e-3)
    mq_negatives: str = "batch_in_queue"  # NAC-MQ denominator (MQ_NEGATIVES)
    momentum: float = 0.99
    l2_weight: float = 0.1
    temperature: float = 0.5
    # AMDIM (method="amdim", nac_tf.methods.amdim): the squared-score regulariser's weight
    # lambda and the soft clipping c of its NCE scores (AMDIM Sec. 3.3: 4e-2 and 20), and
    # the mixture-based 1->7 task (AMDIM Sec. 3.7): k mixture components (0: off) and the
    # entropy weight alpha of Eq. 6 (q = softmax(s_nce / alpha), Eq. 7 with tau = 1 / alpha).
    amdim_regularization_weight: float = 4e-2
    amdim_clip_value: float = 20.0
    amdim_mixture_components: int = 0
    amdim_mixture_entropy_weight: float = 1.0
    # Augmentation: the CIFAR recipe of docs/protocols.md section 1 by default; the ImageNet /
    # MoCo-v2 recipe is crop_area_min=0.2, blur_prob=0.5 (see configs/); AMDIM's is
    # augmentation="amdim" (AUGMENTATIONS), which the next six fields do not apply to.
    augmentation: str = "simclr"
    crop_area_min: float = 0.08
    flip: bool = True
    jitter_strength: float = 1.0  # scales (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    augment_on: str = "host"  # AUGMENT_ON; the same views either way
    # Run.
    model_dir: str = ""
    seed: int = 0
    strategy: str = "auto"
    tpu: str = ""
    precision: str = "float32"
    jit_compile: bool = False
    deterministic: bool = False  # op determinism: reproducible reruns and resumes
    steps_per_loop: int = 1
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 3
    log_every_steps: int = 10
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_eval_epochs: int = 100  # 0 skips the linear probe of the final evaluation
    linear_eval_augment: bool = True  # the probe trains on pad-and-crop + flipped images
    mlp_eval_epochs: int = 0  # > 0 adds the MLP probe (AMDIM) to the final evaluation
    evaluate: bool = True
    eval_every_steps: int = 0  # evaluate during training every N steps; 0: off
    eval_num_queries: int = 1000  # fixed query subset of the training-time mAP
    allow_flag_changes: bool = False

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def jitter(self) -> Tuple[float, float, float, float]:
        """Colour-jitter strengths (brightness, contrast, saturation, hue)."""
        s = self.jitter_strength
        return (0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s)

    @property
    def lr_decay_fraction_values(self) -> Tuple[float, ...]:
        """`lr_decay_fractions` as numbers (ConfigError naming the field when malformed)."""
        return parse_fractions("lr_decay_fractions", self.lr_decay_fractions)

    @property
    def uses_queue(self):
        return self.method in ("nac_mq", "moco_v2")


# A run directory keeps the settings it was started with (flags.json); resuming it with other
# values of these fields would mix two experiments, so they are refused
# (nac_tf.run_directory.check_run_directory). The rest (logging, evaluation, strategy, ...)
# may differ between a run and its resume.
# Fields that the checkpoint's variables or the run's meaning depend on (architecture,
# method and objective, data, views, batch and seed, precision, optimizer kind): never
# changed on resume, even with allow_flag_changes.
FIXED_RUN_FIELDS = (
    "method", "dataset", "image_size", "encoder", "stem", "init_weights", "code_dim",
    "head_hidden_dim", "head_batch_norm", "head_scale_by_sqrt_dim", "head_init", "batch_norm",
    "batch_size", "optimizer", "queue_size", "queue_init_scale", "mq_negatives", "flip_prob",
    "momentum", "l2_weight", "temperature", "amdim_regularization_weight", "amdim_clip_value",
    "amdim_mixture_components", "amdim_mixture_entropy_weight", "augmentation",
    "crop_area_min", "flip", "jitter_strength", "jitter_prob", "grayscale_prob", "blur_prob",
    "seed", "precision",
)
# Fields a checkpoint can be resumed with under new values (the length of training, the
# learning-rate schedule and the optimizer's hyperparameters; where the data lies): changed
# only with allow_flag_changes, which records the change in flag_changes.json.
RESUMABLE_RUN_FIELDS = (
    "data_dir", "epochs", "train_steps", "learning_rate", "learning_rate_scaling",
    "warmup_epochs", "weight_decay", "lars_momentum", "lars_trust_coefficient", "lars_rule",
    "adam_beta1", "adam_beta2", "lr_schedule", "lr_decay_fractions", "lr_decay_factor",
)
RUN_DEFINING_FIELDS = FIXED_RUN_FIELDS + RESUMABLE_RUN_FIELDS


# The fields of augmentation="simclr" (nac_tf.training.augmentation_config).
SIMCLR_AUGMENTATION_FIELDS = ("crop_area_min", "flip", "jitter_strength", "jitter_prob",
                              "grayscale_prob", "blur_prob")


def parse_fractions(field, text):
    """The increasing fractions in (0, 1) of a comma-separated `text` ("" : none), or
    ConfigError naming `field`."""
    parts = [part.strip() for part in text.split(",")] if text.strip() else []
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise ConfigError(field, f"{text!r} is not a comma-separated list of numbers") from None
    if any(not 0.0 < value < 1.0 for value in values):
        raise ConfigError(field, f"{text!r}: every fraction of training must be in (0, 1)")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(field, f"{text!r}: the fractions must increase")
    return values


def _one_of(flag, value, accepted):
    if value not in accepted:
        raise ConfigError(flag, f"{value!r} is not one of: {', '.join(accepted)}")


def check_in_range(field, value, low, high, low_open=False, high_open=False):
    """`value`, or ConfigError naming `field` when it is outside the interval (open or
    closed at each end). Also the methods' check of their hyperparameters."""
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(field, f"{value} is outside the accepted range {lo}{low}, {high}{hi}")
    return value


# {TFDS dataset: the files TFDS prepares it from} (nac_tf.specs.datasets.DatasetSpec).
TFDS_SOURCE_FILES = {spec.name: spec.tfds_source_files
                     for spec in dataset_specs.DATASET_SPECS if spec.tfds_source_files}


def validate_data_settings(dataset, data_dir):
    """ConfigError for an unknown `dataset` or a `data_dir` it cannot use (no I/O beyond
    checking that it can be read, no TensorFlow: the evaluation commands call it before
    importing it). What each dataset accepts: `nac_tf.specs.datasets.data_dir_problem`."""
    _one_of("dataset", dataset, DATASETS)
    problem = dataset_specs.data_dir_problem(dataset, data_dir)
    if problem:
        raise ConfigError("data_dir", problem)


# The suffixes of the Keras weights files init_weights reads (nac_tf.models.weights_file).
WEIGHTS_FILE_SUFFIXES = (".h5", ".hdf5")


def validate_init_weights(init_weights):
    """ConfigError for an init_weights that cannot be a Keras HDF5 weights file. Whether it
    exists is checked when a new run loads it, so that a resumed run (which restores its
    checkpoint instead) does not need the file any more."""
    if init_weights and not init_weights.lower().endswith(WEIGHTS_FILE_SUFFIXES):
        raise ConfigError("init_weights", f"{init_weights!r} is not a Keras HDF5 weights file "
                          "(.weights.h5 written by save_weights, or a Keras 2 .h5 such as "
                          "keras.applications' downloads)")


def validate_config(config: PretrainConfig, num_replicas: Optional[int] = None,
                    require_model_dir: bool = True):
    """Raises ConfigError for the first unusable flag value; returns None when all is well.

    `num_replicas`, when known, checks that the global batch splits evenly over replicas.
    Filesystem checks (data_dir) happen here too, so a typo fails before any graph is built.
    `require_model_dir=False`: a configuration used without a run directory (a method built
    for `model.fit`, `nac_tf.training.build_method`).
    """
    _one_of("method", config.method, METHODS)
    _one_of("dataset", config.dataset, DATASETS)
    _one_of("encoder", config.encoder, ENCODERS)
    _one_of("stem", config.stem, STEMS)
    _one_of("learning_rate_scaling", config.learning_rate_scaling, LR_SCALINGS)
    _one_of("batch_norm", config.batch_norm, BATCH_NORM_MODES)
    _one_of("precision", config.precision, PRECISIONS)
    _one_of("on_corrupt", config.on_corrupt, ON_CORRUPT)
    _one_of("strategy", config.strategy, STRATEGIES)
    _one_of("lars_rule", config.lars_rule, LARS_RULES)
    _one_of("optimizer", config.optimizer, OPTIMIZERS)
    _one_of("lr_schedule", config.lr_schedule, LR_SCHEDULES)
    _one_of("head_init", config.head_init, HEAD_INITIALIZERS)
    _one_of("mq_negatives", config.mq_negatives, MQ_NEGATIVES)
    _one_of("augment_on", config.augment_on, AUGMENT_ON)
    _one_of("augmentation", config.augmentation, AUGMENTATIONS)

    validate_data_settings(config.dataset, config.data_dir)
    validate_init_weights(config.init_weights)
    if require_model_dir and not config.model_dir:
        raise ConfigError("model_dir", "is required (the run directory for checkpoints, "
                          "TensorBoard logs, flags.json and results.json)")

    if config.image_size < 0:
        raise ConfigError("image_size", f"{config.image_size} must be >= 0 (0: native size)")
    for flag in ("code_dim", "batch_size", "steps_per_loop", "checkpoint_every_steps",
                 "keep_checkpoints", "log_every_steps", "knn_k", "eval_num_queries"):
        if getattr(config, flag) < 1:
            raise ConfigError(flag, f"{getattr(config, flag)} must be a positive integer")
    if config.code_dim % 8:
        raise ConfigError("code_dim", f"{config.code_dim} must be a multiple of 8 "
                          "(hash codes are packed 8 bits per byte)")
    for flag, zero_means in (("eval_every_steps", "0: no evaluation during training"),
                             ("linear_eval_epochs", "0 skips the linear probe"),
                             ("mlp_eval_epochs", "0 skips the MLP probe"),
                             ("head_hidden_dim", "0: the encoder's output width"),
                             ("train_steps", "0: use epochs")):
        if getattr(config, flag) < 0:
            raise ConfigError(flag, f"{getattr(config, flag)} must be >= 0 ({zero_means})")
    if config.train_steps == 0 and config.epochs < 1:
        raise ConfigError("epochs", f"{config.epochs} must be >= 1 (or set train_steps)")
    check_in_range("learning_rate", config.learning_rate, 0.0, float("inf"), low_open=True)
    check_in_range("warmup_epochs", config.warmup_epochs, 0.0, float("inf"))
    check_in_range("weight_decay", config.weight_decay, 0.0, float("inf"))
    check_in_range("lars_momentum", config.lars_momentum, 0.0, 1.0, high_open=True)
    check_in_range("lars_trust_coefficient", config.lars_trust_coefficient, 0.0, float("inf"),
              low_open=True)
    check_in_range("adam_beta1", config.adam_beta1, 0.0, 1.0, high_open=True)
    check_in_range("adam_beta2", config.adam_beta2, 0.0, 1.0, high_open=True)
    parse_fractions("lr_decay_fractions", config.lr_decay_fractions)
    check_in_range("lr_decay_factor", config.lr_decay_factor, 0.0, 1.0, low_open=True)
    check_in_range("flip_prob", config.flip_prob, 0.0, 0.5, low_open=True, high_open=True)
    check_in_range("momentum", config.momentum, 0.0, 1.0, high_open=True)
    check_in_range("l2_weight", config.l2_weight, 0.0, float("inf"))
    check_in_range("queue_init_scale", config.queue_init_scale, 0.0, float("inf"), low_open=True)
    check_in_range("temperature", config.temperature, 0.0, float("inf"), low_open=True)
    check_in_range("amdim_regularization_weight", config.amdim_regularization_weight, 0.0,
                   float("inf"))
    check_in_range("amdim_clip_value", config.amdim_clip_value, 0.0, float("inf"),
                   low_open=True)
    check_in_range("amdim_mixture_components", config.amdim_mixture_components, 0,
                   float("inf"))
    check_in_range("amdim_mixture_entropy_weight", config.amdim_mixture_entropy_weight, 0.0,
                   float("inf"), low_open=True)
    check_in_range("crop_area_min", config.crop_area_min, 0.0, 1.0, low_open=True)
    check_in_range("jitter_strength", config.jitter_strength, 0.0, float("inf"))
    for flag in ("jitter_prob", "grayscale_prob", "blur_prob"):
        check_in_range(flag, getattr(config, flag), 0.0, 1.0)
    check_in_range("knn_temperature", config.knn_temperature, 0.0, float("inf"), low_open=True)

    if config.augmentation != "simclr":
        defaults = PretrainConfig()
        for field in SIMCLR_AUGMENTATION_FIELDS:
            if getattr(config, field) != getattr(defaults, field):
                # Refused rather than ignored: the run would not augment as the field says.
                raise ConfigError(field, f"{getattr(config, field)!r} does not apply to "
                                  f"augmentation={config.augmentation!r}, whose recipe fixes "
                                  f"it; leave it at its default {getattr(defaults, field)!r}")
    if config.method == "amdim" \
            and not encoder_specs.encoder_spec(config.encoder).has_amdim_feature_maps:
        raise ConfigError("encoder", f"{config.encoder!r} has no AMDIM feature maps; "
                          "method='amdim' scores the 5x5 and 7x7 maps of an AMDIM encoder: "
                          + ", ".join(encoder_specs.names_where(
                              lambda spec: spec.has_amdim_feature_maps)))
    if num_replicas is not None and config.batch_size % num_replicas:
        raise ConfigError("batch_size", f"the global batch {config.batch_size} must be "
                          f"divisible by the {num_replicas} replicas of strategy="
                          f"{config.strategy}")
    if config.uses_queue:
        if config.queue_size < 1:
            raise ConfigError("queue_size", f"{config.queue_size} must be positive for "
                              f"method={config.method!r}")
        rows_per_step = 2 * config.batch_size
        if config.queue_size % rows_per_step:
            raise ConfigError(
                "queue_size", f"{config.queue_size} must be a multiple of 2 x batch_size = "
                f"{rows_per_step}: every step enqueues the momentum codes of both views of the "
                "global batch, and the queue is a ring of whole batches")

"""The pretraining configuration: one frozen dataclass of every setting, validated up front.

The command line (`nac-train`, `nac_tf.cli.train`) turns flags into a `PretrainConfig`;
library code only ever sees this object. Its fields are derived from the settings'
declarations (`nac_tf.settings.Setting`): those of every run (`nac_tf.run_settings`) and the
hyperparameters of every registered method (`nac_tf.methods.registry`); a method registered
later adds its fields. `validate_config` checks every field before any graph is built and
raises `ConfigError` naming the field and the accepted values (the command line prints it as
`error: --<field>: ...`).

The lists of accepted values are importable from here (their homes: the declarations'
modules). It imports neither TensorFlow nor Keras, so a command line can validate its
settings before paying for them.
"""
import dataclasses
from typing import Optional, Tuple

from nac_tf.methods.registry import method_names, method_settings, method_spec, on_change
from nac_tf.run_settings import (AUGMENT_ON, AUGMENTATIONS, ENCODER_STEMS,  # noqa: F401
                                 HEAD_INITIALIZERS, LARS_RULES, LR_SCALINGS, LR_SCHEDULES,
                                 ON_CORRUPT, OPTIMIZERS, PRECISIONS, RUN_SETTINGS,
                                 SIMCLR_AUGMENTATION_FIELDS, STRATEGIES)
from nac_tf.settings import FIXED, RESUMABLE, ConfigError, merge_settings, one_of as _one_of
from nac_tf.specs import datasets as dataset_specs
from nac_tf.specs import encoders as encoder_specs

# The datasets and encoders: one record each in nac_tf.specs (loaders, builders, what they
# need), from which these names derive.
DATASETS = dataset_specs.DATASETS
ENCODERS = encoder_specs.ENCODERS


@dataclasses.dataclass(frozen=True, init=False, repr=False, eq=False)
class PretrainConfig:
    """Every setting of a pretraining run, one field per declared setting (defaults: NAC on
    CIFAR-10, docs/protocols.md section 1): `PretrainConfig(flip_prob=0.2, ...)`.

    The fields follow the declarations (`declared_settings`), so `__init__`, equality and
    the representation read them when called rather than a list fixed when the class was
    made; `dataclasses.fields`, `dataclasses.replace` and `dataclasses.asdict` work as on
    any dataclass.
    """

    def __init__(self, **values):
        fields = dataclasses.fields(self)
        unknown = sorted(set(values) - {field.name for field in fields})
        if unknown:
            raise TypeError(f"PretrainConfig has no setting {', '.join(unknown)} (declared: "
                            "nac_tf.run_settings and nac_tf.methods.registry)")
        for field in fields:
            object.__setattr__(self, field.name, values.get(field.name, field.default))

    def _values(self):
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self))

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash(self._values())

    def __repr__(self):
        return "PretrainConfig(" + ", ".join(
            f"{field.name}={getattr(self, field.name)!r}"
            for field in dataclasses.fields(self)) + ")"

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
        """Whether the method keeps a queue of momentum keys (`MethodSpec.uses_queue`)."""
        return self.method in method_names() and method_spec(self.method).uses_queue


_declared = {}  # {name: Setting} of PretrainConfig's fields, kept by _declare


def _declare(methods):
    """Makes PretrainConfig's fields the run settings and the hyperparameters of `methods`
    ({name: MethodSpec}); ValueError when a method redeclares a run setting differently."""
    settings = merge_settings((RUN_SETTINGS, tuple(method_settings(methods).values())))
    taken = [name for name in settings if name not in _declared and hasattr(PretrainConfig, name)]
    if taken:
        raise ValueError(f"setting {taken[0]!r} would hide PretrainConfig.{taken[0]}")
    # The class is changed in place, not made anew, so that every module holding
    # PretrainConfig sees the fields of a method registered after it was imported.
    shape = dataclasses.make_dataclass("PretrainConfigFields", [
        (s.name, s.type, dataclasses.field(default=s.default)) for s in settings.values()])
    for name in set(_declared) - set(settings):
        delattr(PretrainConfig, name)
    PretrainConfig.__dataclass_fields__.clear()
    for field in dataclasses.fields(shape):
        PretrainConfig.__dataclass_fields__[field.name] = field
        # The class attribute is the default of a config made before the field existed.
        setattr(PretrainConfig, field.name, field.default)
    _declared.clear()
    _declared.update(settings)


_declare({name: method_spec(name) for name in method_names()})
on_change(_declare)


def declared_settings():
    """{name: Setting} of every PretrainConfig field, in declaration order."""
    return dict(_declared)


def run_fields(kind):
    """The fields whose settings define a run as `kind` (FIXED or RESUMABLE).

    A run directory keeps the settings it was started with (flags.json); resuming it with
    other values of these fields would mix two experiments, so they are refused
    (nac_tf.run_directory.check_run_directory). FIXED: the checkpoint's variables or the
    run's meaning depend on them (architecture, method and objective, data, views, batch and
    seed, precision, optimizer kind): never changed on resume, even with allow_flag_changes.
    RESUMABLE: the length of training, the learning-rate schedule and the optimizer's
    hyperparameters, where the data lies: changed only with allow_flag_changes, which
    records the change in flag_changes.json. The rest (logging, evaluation, strategy, ...)
    may differ between a run and its resume.
    """
    return tuple(name for name, setting in _declared.items() if setting.run == kind)


def __getattr__(name):
    """The lists derived from the declarations, as of now (a method registered later adds
    to them): METHODS, FIXED_RUN_FIELDS, RESUMABLE_RUN_FIELDS, RUN_DEFINING_FIELDS."""
    if name == "METHODS":
        return method_names()
    if name == "FIXED_RUN_FIELDS":
        return run_fields(FIXED)
    if name == "RESUMABLE_RUN_FIELDS":
        return run_fields(RESUMABLE)
    if name == "RUN_DEFINING_FIELDS":
        return run_fields(FIXED) + run_fields(RESUMABLE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

    Every declared setting is checked against its declaration (`Setting.check`), whatever
    the method; then what depends on several settings. `num_replicas`, when known, checks
    that the global batch splits evenly over replicas. Filesystem checks (data_dir) happen
    here too, so a typo fails before any graph is built. `require_model_dir=False`: a
    configuration used without a run directory (a method built for `model.fit`,
    `nac_tf.recipes.method_for_run`).
    """
    _one_of("method", config.method, method_names())
    for setting in _declared.values():
        setting.check(getattr(config, setting.name))

    validate_data_settings(config.dataset, config.data_dir)
    validate_init_weights(config.init_weights)
    if require_model_dir and not config.model_dir:
        raise ConfigError("model_dir", "is required (the run directory for checkpoints, "
                          "TensorBoard logs, flags.json and results.json)")
    if config.code_dim % 8:
        raise ConfigError("code_dim", f"{config.code_dim} must be a multiple of 8 "
                          "(hash codes are packed 8 bits per byte)")
    if config.train_steps == 0 and config.epochs < 1:
        raise ConfigError("epochs", f"{config.epochs} must be >= 1 (or set train_steps)")
    parse_fractions("lr_decay_fractions", config.lr_decay_fractions)

    if config.augmentation != "simclr":
        for field in SIMCLR_AUGMENTATION_FIELDS:
            default = _declared[field].default
            if getattr(config, field) != default:
                # Refused rather than ignored: the run would not augment as the field says.
                raise ConfigError(field, f"{getattr(config, field)!r} does not apply to "
                                  f"augmentation={config.augmentation!r}, whose recipe fixes "
                                  f"it; leave it at its default {default!r}")
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
        rows_per_step = 2 * config.batch_size
        if config.queue_size % rows_per_step:
            raise ConfigError(
                "queue_size", f"{config.queue_size} must be a multiple of 2 x batch_size = "
                f"{rows_per_step}: every step enqueues the momentum codes of both views of the "
                "global batch, and the queue is a ring of whole batches")

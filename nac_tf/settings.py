"""The declaration of one setting (`Setting`) and the one function that checks a value
against it.

A setting is declared once, where it belongs: the settings every run has in
`nac_tf.run_settings`, a method's own hyperparameters in `nac_tf.methods.registry`. Everything
else is derived from the declarations: the fields of `nac_tf.config.PretrainConfig`, the
command line's flags and their help (`nac_tf.cli.train`), the checks of `validate_config`, of
the methods' constructors and of the objectives, and the lists of run-defining fields that a
resume compares (`FIXED`, `RESUMABLE`).

No TensorFlow here: the command line checks its flags before importing it.
"""
import dataclasses
import numbers
from typing import Any, Optional, Tuple

# How a setting defines a run (`Setting.run`): a FIXED one is never changed when a run
# directory is resumed (the checkpoint or the experiment depends on it); a RESUMABLE one
# may change with allow_flag_changes; None: not run-defining (logging, evaluation, paths).
FIXED = "fixed"
RESUMABLE = "resumable"


class ConfigError(ValueError):
    """A setting has a value the run cannot use: `field` names it (a PretrainConfig field,
    which is also the command line's flag name), `reason` says why."""

    def __init__(self, field, reason):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def alternatives(names):
    """'a, b or c': names as a help text lists them."""
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def one_of(field, value, accepted):
    """`value`, or ConfigError naming `field` and listing the `accepted` values."""
    if value not in accepted:
        raise ConfigError(field, f"{value!r} is not one of: {', '.join(accepted)}")
    return value


def check_in_range(field, value, low, high, low_open=False, high_open=False):
    """`value`, or ConfigError naming `field` when it is outside the interval (open or
    closed at each end)."""
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(field, f"{value} is outside the accepted range {lo}{low}, {high}{hi}")
    return value


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its name (the PretrainConfig field and the flag), default (whose type,
    bool, int, float or str, is the setting's), help text, accepted values and how it
    defines a run.

    Accepted values, at most one kind:
      choices: the accepted values ("is not one of: ...");
      interval: (low, high, low_open, high_open) ("is outside the accepted range [a, b)");
      at_least: an integer minimum, 1 ("must be a positive integer") or 0 ("must be >= 0
        (zero_means)", `zero_means` saying what 0 does).
    run: FIXED, RESUMABLE or None (see the constants above).
    """

    name: str
    default: Any
    help: str
    choices: Tuple[str, ...] = ()
    interval: Optional[Tuple[float, float, bool, bool]] = None
    at_least: Optional[int] = None
    zero_means: str = ""
    run: Optional[str] = None

    def __post_init__(self):
        if self.run not in (None, FIXED, RESUMABLE):
            raise ValueError(f"setting {self.name!r}: run must be None, {FIXED!r} or "
                             f"{RESUMABLE!r}; got {self.run!r}")
        if sum(bool(kind) for kind in (self.choices, self.interval,
                                       self.at_least is not None)) > 1:
            raise ValueError(f"setting {self.name!r} declares more than one kind of accepted "
                             "values (choices, interval, at_least)")

    @property
    def type(self):
        """bool, int, float or str: the type of the default."""
        return type(self.default)

    def check(self, value, name=None):
        """`value` when this setting accepts it, else ConfigError naming `name` (default:
        the setting's own name; an objective passes its argument's name)."""
        name = name or self.name
        if self.type is int and (isinstance(value, bool) or not isinstance(
                value, numbers.Real) or int(value) != value):
            raise ConfigError(name, f"{value!r} is not a whole number")
        if self.choices:
            return one_of(name, value, self.choices)
        if self.interval is not None:
            return check_in_range(name, value, *self.interval)
        if self.at_least == 1 and value < 1:
            raise ConfigError(name, f"{value} must be a positive integer")
        if self.at_least is not None and value < self.at_least:
            raise ConfigError(name, f"{value} must be >= {self.at_least} ({self.zero_means})")
        return value


def positive(*, high=float("inf")):
    """The interval (0, high]."""
    return (0.0, high, True, False)


def non_negative(*, high=float("inf")):
    """The interval [0, high]."""
    return (0.0, high, False, False)


def unit_interval(*, low_open=False, high_open=False):
    """[0, 1], open at the ends asked for."""
    return (0.0, 1.0, low_open, high_open)


def merge_settings(groups):
    """{name: Setting} of the settings of every group (an iterable of Setting tuples), in
    order; a name declared twice must be declared alike (ValueError naming it)."""
    merged = {}
    for group in groups:
        for setting in group:
            known = merged.setdefault(setting.name, setting)
            if known != setting:
                raise ValueError(f"setting {setting.name!r} is declared twice, differently: "
                                 f"{known} and {setting}")
    return merged

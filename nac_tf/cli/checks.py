"""The argument checks of the evaluation commands (`nac-linear-eval`, `nac-hash-retrieval`).

Each raises `nac_tf.config.ConfigError` naming the flag (`--saved_model: ...`), which the
commands print as `error: <message>` with exit code 2. Importing this module does not import
TensorFlow: the commands check their flags with it first and only then pay for TensorFlow.
"""
import json
import math
import os

from nac_tf.config import DATASETS, ConfigError, validate_data_settings
from nac_tf.errors import write_problem
from nac_tf.specs.datasets import names_where

# Multi-hot labels (no class ids: no top-1 accuracy).
MULTI_LABEL_DATASETS = names_where(lambda spec: spec.multi_label)
# Streamed from TFDS, never held in memory: the commands evaluate arrays only.
STREAMED_DATASETS = names_where(lambda spec: spec.streamed)
# Loaded at the image_size setting (the others keep their images' own size).
RESIZING_DATASETS = names_where(lambda spec: spec.resizes and not spec.streamed)
# nac_tf.export.METADATA_FILE inside the SavedModel's assets/ (export imports TensorFlow).
EXPORT_METADATA = os.path.join("assets", "nac_tf_export.json")
_EXPORT_HINT = "a directory written by nac-export"


def check_saved_model(saved_model):
    """The export's metadata (assets/nac_tf_export.json), or ConfigError("saved_model")."""
    if not saved_model:
        raise ConfigError("saved_model", f"is required ({_EXPORT_HINT})")
    if not os.path.isdir(saved_model):
        raise ConfigError("saved_model", f"{saved_model!r} is not a directory ({_EXPORT_HINT})")
    if not os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
        raise ConfigError("saved_model", f"{saved_model!r} holds no saved_model.pb; expected "
                          f"{_EXPORT_HINT}")
    path = os.path.join(saved_model, EXPORT_METADATA)
    if not os.path.isfile(path):
        raise ConfigError("saved_model", f"{saved_model!r} has no {EXPORT_METADATA}: it is "
                          f"not an nac_tf export; expected {_EXPORT_HINT}")
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigError("saved_model", f"cannot read {path}: {error}") from None
    if not isinstance(metadata, dict):
        raise ConfigError("saved_model", f"{path} does not hold a JSON object; re-export "
                          "with nac-export")
    missing = [key for key in ("method", "image_size", "feature_dim", "code_dim")
               if key not in metadata]
    if missing:
        raise ConfigError("saved_model", f"{path} lacks {', '.join(missing)}; re-export with "
                          "nac-export")
    return metadata


def check_dataset(dataset, data_dir, refuse=None):
    """ConfigError for an unknown dataset or a data_dir it cannot use.

    `nac_tf.config.validate_data_settings` plus what the commands cannot evaluate.
    `refuse`: {dataset: why this command cannot evaluate it} ("is multi-label ...").
    """
    accepted = ", ".join(DATASETS)
    if not dataset:
        raise ConfigError("dataset", f"is required; one of: {accepted}")
    if dataset not in DATASETS:
        raise ConfigError("dataset", f"{dataset!r} is not one of: {accepted}")
    if dataset in STREAMED_DATASETS:
        held = ", ".join(names_where(lambda spec: not spec.streamed))
        raise ConfigError("dataset", f"{dataset} is streamed from TFDS, never held in memory; "
                          f"these commands evaluate datasets held as arrays ({held})")
    if refuse and dataset in refuse:
        raise ConfigError("dataset", f"{dataset} {refuse[dataset]}")
    validate_data_settings(dataset, data_dir)


def check_int(flag, value, minimum, meaning=""):
    """ConfigError unless `value` is an integer >= minimum; returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(flag, f"{value!r} must be an integer >= {minimum}{meaning}")
    return value


def parse_learning_rates(values, flag="learning_rates"):
    """--learning_rates (absl list of strings) -> tuple of positive finite floats."""
    if not values:
        raise ConfigError(flag, "needs at least one rate, e.g. 0.01,0.1,1,10")
    rates = []
    for text in values:
        try:
            rate = float(text)
        except ValueError:
            raise ConfigError(flag, f"{text!r} is not a number") from None
        if not math.isfinite(rate) or rate <= 0:
            raise ConfigError(flag, f"{text!r} must be a positive finite number")
        if rate in rates:
            raise ConfigError(flag, f"{text!r} is repeated")
        rates.append(rate)
    return tuple(rates)


def parse_validation_fraction(value):
    """A fraction in (0, 1), or a whole number >= 1 of held-out examples (as an int)."""
    if math.isfinite(value) and 0.0 < value < 1.0:
        return float(value)
    if math.isfinite(value) and value >= 1 and value == int(value):
        return int(value)
    raise ConfigError("validation_fraction", f"{value!r} must be a fraction in (0, 1) or a "
                      "whole number >= 1 of held-out training examples")


def output_path(flag, path, default):
    """`path`, or `default` when it is empty; ConfigError if it cannot be written there."""
    path = os.path.abspath(path or default)
    if os.path.isdir(path):
        raise ConfigError(flag, f"{path!r} is a directory; give a file path")
    parent = os.path.dirname(path)
    problem = write_problem(path)
    if problem:
        raise ConfigError(flag, problem)
    if not os.path.isdir(parent):  # the reports are written into an existing directory
        raise ConfigError(flag, f"the directory {parent!r} does not exist")
    return path

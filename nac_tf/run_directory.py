"""The run directory of a pretraining run: its file names, how they are written and read
back, and the method they rebuild.

    <model_dir>/
        flags.json              the resolved PretrainConfig (FLAGS_FILE)
        input_statistics.json   image size and input normalisation (INPUT_STATISTICS_FILE)
        checkpoints/ckpt-<step> model, optimizer, momentum networks, queue, input position
        tensorboard/            scalars, histograms, images
        trajectory.json         evaluations during training (eval_every_steps)
        random_init_eval.json   the evaluation at random initialisation
        results.json            the run's results, written at its end
        saved_model/            what nac-export writes by default

Every JSON file is written atomically (`write_json`). Reading and checking the directory
needs no TensorFlow (the command line checks a run directory before importing it); only
`restore_pretrained_method` imports it.
"""
import dataclasses
import json
import os

from nac_tf.config import (RUN_DEFINING_FIELDS, ConfigError, PretrainConfig,
                           write_problem)

FLAGS_FILE = "flags.json"
INPUT_STATISTICS_FILE = "input_statistics.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
TRAJECTORY_FILE = "trajectory.json"
RANDOM_INIT_EVAL_FILE = "random_init_eval.json"
RESULTS_FILE = "results.json"
SAVED_MODEL_DIR = "saved_model"
# What makes a directory a run directory that can be rebuilt and exported.
RUN_FILES = (FLAGS_FILE, INPUT_STATISTICS_FILE)


def path_in(model_dir, name):
    """`model_dir`/`name`, for one of this module's file names."""
    return os.path.join(model_dir, name)


def write_json(path, payload):
    """Writes `payload` as JSON to `path`: write, then rename, so a crash never leaves a
    truncated file behind."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def prepare_run_directory(config: PretrainConfig, write=True):
    """Creates `model_dir` and writes flags.json, refusing a directory of another experiment.

    A directory whose flags.json differs in a run-defining field (RUN_DEFINING_FIELDS) holds
    a different experiment: resuming it would silently mix two runs, so it is refused unless
    `allow_flag_changes` is set. `write=False` only checks (non-chief workers).
    """
    path = path_in(config.model_dir, FLAGS_FILE)
    if os.path.exists(path):
        previous = read_json(path)
        changed = {k: (previous.get(k), getattr(config, k)) for k in RUN_DEFINING_FIELDS
                   if previous.get(k) != getattr(config, k)}
        if changed and not config.allow_flag_changes:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ConfigError("model_dir", f"{config.model_dir!r} holds a run with different "
                              f"settings ({details}); use a new model_dir, or set "
                              "allow_flag_changes to resume it with the new values")
    if write:
        os.makedirs(config.model_dir, exist_ok=True)
        write_json(path, config.to_dict())


def missing_run_files(model_dir):
    """The names of RUN_FILES that `model_dir` lacks ([] for a run directory)."""
    return [name for name in RUN_FILES if not os.path.isfile(path_in(model_dir, name))]


def read_run_config(model_dir):
    """(PretrainConfig, input statistics) of a run directory written by `pretrain`."""
    missing = missing_run_files(model_dir)
    if missing:
        raise FileNotFoundError(f"{model_dir!r} is not a pretraining run directory: "
                                f"{', '.join(missing)} missing")
    flags = read_json(path_in(model_dir, FLAGS_FILE))
    known = {field.name for field in dataclasses.fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in flags.items() if k in known})
    return config, read_json(path_in(model_dir, INPUT_STATISTICS_FILE))


def latest_checkpoint(model_dir):
    """The prefix of the latest checkpoint in `model_dir`/checkpoints (None without one),
    read from TensorFlow's state file without importing TensorFlow."""
    directory = path_in(model_dir, CHECKPOINT_DIR)
    state = os.path.join(directory, "checkpoint")
    if not os.path.isfile(state):
        return None
    with open(state) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model_checkpoint_path":
                path = value.strip().strip('"')
                path = path if os.path.isabs(path) else os.path.join(directory, path)
                return path if os.path.isfile(path + ".index") else None
    return None


def read_trajectory(model_dir, up_to_step=None):
    """The evaluations during training of a run directory (trajectory.json, written with
    eval_every_steps): a list of dicts in step order, those after `up_to_step` left out;
    [] when there is none."""
    path = path_in(model_dir, TRAJECTORY_FILE)
    if not os.path.exists(path):
        return []
    return [entry for entry in read_json(path)
            if up_to_step is None or entry["step"] <= up_to_step]


def check_export_dir(export_dir, overwrite=False):
    """Raises ConfigError("export_dir") if the export could not be written there (e.g. a
    parent is a file, or not writable), FileExistsError if it would clobber something."""
    problem = write_problem(export_dir)
    if problem:
        raise ConfigError("export_dir", problem)
    if not os.path.exists(export_dir):
        return
    if not os.path.isdir(export_dir):
        raise FileExistsError(f"{export_dir!r} exists and is not a directory")
    if not os.listdir(export_dir):
        return
    if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        raise FileExistsError(f"{export_dir!r} is not empty and does not hold a SavedModel; "
                              "choose another export directory")
    if not overwrite:
        raise FileExistsError(f"{export_dir!r} already holds a SavedModel; set overwrite to "
                              "replace it")


def restore_pretrained_method(model_dir, checkpoint=None):
    """(PretrainConfig, method) of a run directory, the method with the weights of its
    latest (or the given) checkpoint."""
    import tensorflow as tf

    from nac_tf.methods.from_config import method_from_config

    config, statistics = read_run_config(model_dir)
    path = checkpoint or latest_checkpoint(model_dir)
    if path is None:
        raise FileNotFoundError(f"{model_dir!r} has no checkpoint in {CHECKPOINT_DIR}/")
    method = method_from_config(config, statistics)
    # expect_partial: the optimizer slots in the checkpoint are not needed here.
    tf.train.Checkpoint(method=method).restore(path).expect_partial()
    return config, method

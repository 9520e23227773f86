"""The run directory of a pretraining run: its file names, how they are written and read
back, and the method they rebuild.

    <model_dir>/
        flags.json              the resolved PretrainConfig (FLAGS_FILE)
        flag_changes.json       changes accepted with allow_flag_changes, by step
        input_statistics.json   image size and input normalisation (INPUT_STATISTICS_FILE)
        checkpoints/ckpt-<step> model, optimizer, momentum networks, queue, input position
        tensorboard/            scalars, histograms, images
        trajectory.json         evaluations during training (eval_every_steps)
        random_init_eval.json   the evaluation at random initialisation
        results.json            the run's results, written at its end
        saved_model/            what nac-export writes by default

Every JSON file is written atomically (`write_json`). Reading and checking the directory
needs no TensorFlow (the command line checks a run directory before importing it), except
what reads checkpoint contents: `intact_checkpoint` and `restore_pretrained_method`.

Which checkpoint a run resumes from (the trainer, nac-export and every reader of a run use
the same rule, `intact_checkpoint`): the newest `ckpt-<step>` whose files are complete and
whose every tensor reads back with its checksum, found by scanning checkpoints/ (TensorFlow's
state file is not trusted: it may be missing, or name a checkpoint that a crash or a full
disk left damaged). Damaged newer ones are skipped with one warning each; a directory that
holds checkpoint files none of which is intact is refused (`DamagedCheckpointsError`).
"""
import dataclasses
import json
import logging
import os
import re
import shutil

from nac_tf.config import (FIXED, RESUMABLE, ConfigError, PretrainConfig, declared_settings,
                           run_fields)
from nac_tf.errors import cannot_write, error_reason, write_problem

logger = logging.getLogger(__name__)

FLAGS_FILE = "flags.json"
FLAG_CHANGES_FILE = "flag_changes.json"
INPUT_STATISTICS_FILE = "input_statistics.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
TRAJECTORY_FILE = "trajectory.json"
RANDOM_INIT_EVAL_FILE = "random_init_eval.json"
RESULTS_FILE = "results.json"
SAVED_MODEL_DIR = "saved_model"
# checkpoints/ckpt-<step>.index and ckpt-<step>.data-<shard>-of-<shards> (CheckpointManager's
# names with checkpoint_number=step); ckpt-<step>_temp/ while TensorFlow writes one.
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)(?:\.index|\.data-(\d+)-of-(\d+)|(_temp))$")
# What makes a directory a run directory that can be rebuilt and exported.
RUN_FILES = (FLAGS_FILE, INPUT_STATISTICS_FILE)


def path_in(model_dir, name):
    """`model_dir`/`name`, for one of this module's file names."""
    return os.path.join(model_dir, name)


def write_text(path, text):
    """Writes `text` to `path`: write, then rename, so a crash never leaves a truncated
    file behind (nor, on a full disk or Ctrl-C mid-write, a half-written .tmp)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, payload):
    """Writes `payload` as JSON to `path`, atomically (`write_text`)."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_run_json(model_dir, name):
    """The JSON file `name` of a run directory, or ConfigError naming model_dir when it
    cannot be read or is not JSON (a hand edit, a disk fault)."""
    path = path_in(model_dir, name)
    try:
        return read_json(path)
    except (OSError, ValueError) as error:
        raise ConfigError("model_dir", f"cannot read {path} ({error_reason(error)}); repair "
                          "or remove it, or use a new model_dir") from None


def check_run_directory(config: PretrainConfig):
    """The run-defining settings of `config` that differ from those of the run already in
    `model_dir` ({field: (old, new)}; {} for a new run or the same settings), after
    checking that they may: nothing is written.

    Raises ConfigError naming model_dir when the directory cannot hold this run: it is a
    file, its flags.json is unreadable, or the settings differ in FIXED_RUN_FIELDS (never
    resumable: the checkpoint's networks or the experiment would change) or, without
    `allow_flag_changes`, in RESUMABLE_RUN_FIELDS.
    """
    model_dir = config.model_dir
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ConfigError("model_dir", f"{model_dir!r} is a file, not a directory")
    if not os.path.exists(path_in(model_dir, FLAGS_FILE)):
        return {}
    previous = read_run_json(model_dir, FLAGS_FILE)
    if not isinstance(previous, dict):
        raise ConfigError("model_dir", f"{path_in(model_dir, FLAGS_FILE)} does not hold a "
                          "run's settings; repair or remove it, or use a new model_dir")
    # Read now, not at import: a method registered since adds its fields.
    fixed_fields, resumable_fields = run_fields(FIXED), run_fields(RESUMABLE)
    # A setting added after the run was started is absent from its flags.json: the run had
    # the behaviour that the setting's default keeps.
    defaults = {k: setting.default for k, setting in declared_settings().items()}
    recorded = {k: previous.get(k, defaults[k]) for k in fixed_fields + resumable_fields}
    changed = {k: (recorded[k], getattr(config, k))
               for k in fixed_fields + resumable_fields
               if recorded[k] != getattr(config, k)}

    def listed(names):
        return ", ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in names)

    fixed = [k for k in fixed_fields if k in changed]
    if fixed:
        raise ConfigError("model_dir", f"{model_dir!r} holds a run with different settings "
                          f"that its checkpoints cannot be resumed with ({listed(fixed)}); "
                          "use a new model_dir")
    if changed and not config.allow_flag_changes:
        raise ConfigError("model_dir", f"{model_dir!r} holds a run with different settings "
                          f"({listed(changed)}); use a new model_dir, or set "
                          "allow_flag_changes to resume it with the new values")
    return changed


def write_run_settings(config: PretrainConfig, changed=None, step=0):
    """Creates `model_dir` and writes flags.json; `changed` (from `check_run_directory`),
    the changes accepted at `step`, are appended to flag_changes.json. Raises ConfigError
    naming model_dir when the directory cannot be written (read-only, full disk)."""
    path = path_in(config.model_dir, FLAGS_FILE)
    try:
        os.makedirs(config.model_dir, exist_ok=True)
        if changed:
            history_path = path_in(config.model_dir, FLAG_CHANGES_FILE)
            history = read_run_json(config.model_dir, FLAG_CHANGES_FILE) \
                if os.path.exists(history_path) else []
            history.append({"step": int(step), "changes": {
                k: {"old": old, "new": new} for k, (old, new) in changed.items()}})
            write_json(history_path, history)
        write_json(path, config.to_dict())
    except OSError as error:
        raise ConfigError("model_dir", cannot_write(error.filename or path, error)) from None


def prepare_run_directory(config: PretrainConfig, write=True):
    """`check_run_directory`, then (with `write`) `write_run_settings`: creates `model_dir`
    and writes flags.json, refusing a directory of another experiment."""
    changed = check_run_directory(config)
    if write:
        write_run_settings(config, changed)
    return changed


def missing_run_files(model_dir):
    """The names of RUN_FILES that `model_dir` lacks ([] for a run directory)."""
    return [name for name in RUN_FILES if not os.path.isfile(path_in(model_dir, name))]


def read_run_config(model_dir):
    """(PretrainConfig, input statistics) of a run directory written by `pretrain`."""
    missing = missing_run_files(model_dir)
    if missing:
        raise FileNotFoundError(f"{model_dir!r} is not a pretraining run directory: "
                                f"{', '.join(missing)} missing")
    flags = read_run_json(model_dir, FLAGS_FILE)
    known = {field.name for field in dataclasses.fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in flags.items() if k in known})
    return config, read_run_json(model_dir, INPUT_STATISTICS_FILE)


class DamagedCheckpointsError(ConfigError):
    """`model_dir` holds checkpoint files, but none of them is intact: resuming would start
    over and overwrite them, so the run directory is refused (nothing is written)."""

    def __init__(self, model_dir, damaged):
        details = "; ".join(f"{os.path.basename(prefix)}: {reason}" for prefix, reason in damaged)
        super().__init__("model_dir", f"no checkpoint in {path_in(model_dir, CHECKPOINT_DIR)} "
                         f"can be restored ({details}); restore the files from a backup, or "
                         "use a new model_dir (this one is left as it is)")


def checkpoint_steps(model_dir):
    """{step: (prefix, None, or why the files are incomplete)} of every `ckpt-<step>` with
    files in `model_dir`/checkpoints, read from the file names alone (no TensorFlow)."""
    directory = path_in(model_dir, CHECKPOINT_DIR)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {}
    for name in names:
        match = CHECKPOINT_NAME.match(name)
        if match and not match.group(4):
            step, shard, shards = match.group(1), match.group(2), match.group(3)
            files = found.setdefault(int(step), {"index": False, "shards": set(), "of": set()})
            if shard is None:
                files["index"] = True
            else:
                files["shards"].add(int(shard))
                files["of"].add(int(shards))
    steps = {}
    for step, files in found.items():
        prefix = os.path.join(directory, f"ckpt-{step}")
        if not files["index"]:
            problem = "its .index file is missing"
        elif len(files["of"]) != 1 or files["shards"] != set(range(max(files["of"]))):
            problem = "data files are missing"
        else:
            problem = None
        steps[step] = (prefix, problem)
    return steps


def latest_checkpoint(model_dir):
    """The prefix of the newest checkpoint in `model_dir`/checkpoints whose files are all
    there (None without one), from the file names alone (no TensorFlow, no reading): the
    cheap check. `intact_checkpoint` also reads it back."""
    complete = [step for step, (_, problem) in checkpoint_steps(model_dir).items()
                if problem is None]
    return path_in(path_in(model_dir, CHECKPOINT_DIR), f"ckpt-{max(complete)}") \
        if complete else None


def checkpoint_step(prefix):
    """The step of a `.../ckpt-<step>` prefix."""
    return int(os.path.basename(prefix).rsplit("-", 1)[1])


def read_checkpoint_problem(prefix):
    """None if every tensor of the checkpoint `prefix` reads back (TensorFlow checks each
    one's checksum as it reads), else the first line of what went wrong."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # noqa: BLE001 -- any failure to read means damaged
        return error_reason(error)
    return None


def intact_checkpoint(model_dir, checkpoint=None):
    """The prefix of the checkpoint to restore from `model_dir` (the newest intact one,
    see the module docstring), or None when there is no checkpoint file at all.

    Each newer checkpoint skipped for being incomplete or unreadable is logged as one
    warning naming it. Raises DamagedCheckpointsError when checkpoint files exist but none
    is intact. `checkpoint`: a given prefix, checked the same way (ConfigError naming
    `checkpoint` when it is damaged).
    """
    if checkpoint:
        problem = read_checkpoint_problem(checkpoint)
        if problem:
            raise ConfigError("checkpoint", f"{checkpoint!r} cannot be read ({problem})")
        return checkpoint
    damaged = []
    for step, (prefix, problem) in sorted(checkpoint_steps(model_dir).items(), reverse=True):
        problem = problem or read_checkpoint_problem(prefix)
        if problem is None:
            for skipped, reason in damaged:
                logger.warning("checkpoint %s is damaged (%s): skipped; resuming from %s",
                               skipped, reason, prefix)
            return prefix
        damaged.append((prefix, problem))
    if damaged:
        raise DamagedCheckpointsError(model_dir, damaged)
    return None


def write_checkpoint_state(model_dir, prefixes):
    """Rewrites TensorFlow's state file (checkpoints/checkpoint, a CheckpointState text
    proto) to list `prefixes`, oldest first, the last as the latest: what CheckpointManager
    reads to know which checkpoints exist and which to delete beyond its max_to_keep. Each
    gets its files' time, all after the last preserved time, so the manager manages them."""
    times = [os.path.getmtime(prefix + ".index") for prefix in prefixes]
    names = [os.path.basename(prefix) for prefix in prefixes]
    lines = [f'model_checkpoint_path: "{names[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in times]
    lines.append(f"last_preserved_timestamp: {min(times) - 1.0!r}")
    write_text(path_in(path_in(model_dir, CHECKPOINT_DIR), "checkpoint"), "\n".join(lines) + "\n")


def remove_partial_checkpoints(model_dir):
    """Removes the `ckpt-<step>_temp/` directories that interrupted checkpoint writes leave
    in `model_dir`/checkpoints (TensorFlow writes there first, then moves the files)."""
    directory = path_in(model_dir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        match = CHECKPOINT_NAME.match(name)
        if match and match.group(4):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


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


def restore_run(model_dir, checkpoint=None):
    """(PretrainConfig, input statistics, method, checkpoint prefix) of a run directory: the
    method with the weights of its newest intact (or the given) checkpoint
    (`intact_checkpoint`, which reads the checkpoint once to verify it).

    ConfigError naming `checkpoint` (or model_dir, for the run's own) when the checkpoint
    does not hold this run's networks: a variable of another shape (another code_dim or
    encoder) or one it lacks. The optimizer's slots are left out on purpose, so the restore
    is partial; the encoder and head are then checked again, strictly: without that, a
    checkpoint of something else would leave them randomly initialised, silently.
    """
    import tensorflow as tf

    from nac_tf.methods.from_config import method_from_config

    config, statistics = read_run_config(model_dir)
    path = intact_checkpoint(model_dir, checkpoint)
    if path is None:
        raise FileNotFoundError(f"{model_dir!r} has no checkpoint in {CHECKPOINT_DIR}/")
    method = method_from_config(config, statistics)
    networks = {"encoder": method.encoder}
    if getattr(method, "projection_head", None) is not None:
        networks["projection_head"] = method.projection_head
    try:
        tf.train.Checkpoint(method=method).restore(path).expect_partial()
        # The same object path as in the run's checkpoints: method/encoder/...
        tf.train.Checkpoint(method=tf.train.Checkpoint(**networks)).restore(
            path).assert_existing_objects_matched()
    except (AssertionError, ValueError) as error:
        raise ConfigError("checkpoint" if checkpoint else "model_dir",
                          f"{path!r} does not match the run in model_dir {model_dir!r} "
                          f"({error_reason(error)})") from None
    return config, statistics, method, path


def restore_pretrained_method(model_dir, checkpoint=None):
    """(PretrainConfig, method) of `restore_run`."""
    config, _, method, _ = restore_run(model_dir, checkpoint)
    return config, method

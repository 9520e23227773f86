"""Faults of the run directory (nac_tf.run_directory, and how nac_tf.training uses it): no
step of work is lost and nothing good is overwritten when checkpoints are damaged or their
state file is lost, a finished run is run again, flags change, the disk fills up or is
read-only, or flags.json is damaged. The signals (SIGKILL, SIGTERM, Ctrl-C) are in
test_resume.py and the CLI's one-line errors at the end of this module.

One run, stopped at step 4 of 6 with checkpoints at steps 2 and 4, is trained once for the
module (`stopped_run`); each test damages a copy of it.
"""
import hashlib
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nac_tf.config import ConfigError, PretrainConfig
from nac_tf.run_directory import (DamagedCheckpointsError, FLAG_CHANGES_FILE,
                                  check_run_directory, intact_checkpoint, latest_checkpoint)
from nac_tf.checkpointing import CheckpointWriteError
from nac_tf.training import TrainingInterrupted, pretrain

from test_training import _tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 6
STOPPED_AT = 4


def _config(model_dir, **changes):
    fields = dict(train_steps=TOTAL_STEPS, checkpoint_every_steps=2, keep_checkpoints=10,
                  evaluate=False, model_dir=str(model_dir))
    fields.update(changes)
    return _tiny(pathlib.Path(model_dir).parent, **fields)


def _stop_at(step):
    """A stop_requested that asks for a stop before step `step`: the loop polls it once
    per loop iteration of one step (steps_per_loop=1), first at step 0."""
    calls = []

    def requested():
        calls.append(None)
        return len(calls) > step
    return requested


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(TrainingInterrupted):
        pretrain(_config(model_dir), stop_requested=_stop_at(STOPPED_AT))
    assert _steps(model_dir) == [2, 4]
    return model_dir


@pytest.fixture(scope="module")
def finished_run(stopped_run, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(stopped_run, model_dir)
    results = pretrain(_config(model_dir))
    assert results["steps"] == TOTAL_STEPS and results["evaluated"] is False
    return model_dir


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _steps(model_dir):
    names = os.listdir(os.path.join(model_dir, "checkpoints"))
    return sorted(int(n[5:-6]) for n in names if n.startswith("ckpt-") and n.endswith(".index"))


def _ckpt(model_dir, step, part=".data-00000-of-00001"):
    return os.path.join(model_dir, "checkpoints", f"ckpt-{step}{part}")


def _snapshot(model_dir):
    """Every file below `model_dir` with its modification time and content hash."""
    files = {}
    for root, _, names in os.walk(model_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, model_dir)] = (
                    os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return files


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def _scramble(path):
    with open(path, "r+b") as f:
        size = os.path.getsize(path)
        f.seek(size // 3)
        f.write(np.random.default_rng(0).bytes(min(256, size // 3)))


DAMAGE = {
    "truncated data file": lambda d: _truncate(_ckpt(d, 4)),
    "random bytes in the data file": lambda d: _scramble(_ckpt(d, 4)),
    "random bytes in the index": lambda d: _scramble(_ckpt(d, 4, ".index")),
    "deleted index": lambda d: os.remove(_ckpt(d, 4, ".index")),
    "deleted data file": lambda d: os.remove(_ckpt(d, 4)),
}


# ----------------------------------------------------------------------- finding the checkpoint
def test_a_lost_state_file_does_not_hide_the_checkpoints(stopped_run, tmp_path):
    model_dir = _copy(stopped_run, tmp_path)
    os.remove(os.path.join(model_dir, "checkpoints", "checkpoint"))
    assert latest_checkpoint(model_dir) == _ckpt(model_dir, 4, "")
    assert intact_checkpoint(model_dir) == _ckpt(model_dir, 4, "")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped_with_one_warning(stopped_run, tmp_path,
                                                                  caplog, damage):
    model_dir = _copy(stopped_run, tmp_path)
    DAMAGE[damage](model_dir)
    assert intact_checkpoint(model_dir) == _ckpt(model_dir, 2, "")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"checkpoint {_ckpt(model_dir, 4, '')} is damaged (")
    assert warnings[0].endswith(f"skipped; resuming from {_ckpt(model_dir, 2, '')}")


def test_resume_falls_back_to_the_newest_intact_checkpoint(stopped_run, tmp_path, caplog):
    """The damaged newest checkpoint and a lost state file together: training resumes from
    step 2, rewrites step 4 and ends at 6; TensorFlow's state file lists them again, and the
    directories of an interrupted write are gone."""
    model_dir = _copy(stopped_run, tmp_path)
    _truncate(_ckpt(model_dir, 4))
    os.remove(os.path.join(model_dir, "checkpoints", "checkpoint"))
    os.makedirs(_ckpt(model_dir, 6, "_temp"))
    before = _snapshot(model_dir)
    caplog.set_level(logging.INFO, logger="nac_tf")
    results = pretrain(_config(model_dir))
    assert f"Resumed from {_ckpt(model_dir, 2, '')} at step 2" in caplog.messages
    assert results["steps"] == TOTAL_STEPS
    assert _snapshot(model_dir)["checkpoints/ckpt-2.index"] == before["checkpoints/ckpt-2.index"]
    assert intact_checkpoint(model_dir) == _ckpt(model_dir, 6, "")
    assert not os.path.exists(_ckpt(model_dir, 6, "_temp"))
    with open(os.path.join(model_dir, "checkpoints", "checkpoint")) as f:
        state = f.read()
    assert [f'"ckpt-{s}"' in state for s in (2, 4, 6)] == [True] * 3


def test_a_directory_without_an_intact_checkpoint_is_refused_untouched(stopped_run, tmp_path):
    model_dir = _copy(stopped_run, tmp_path)
    _truncate(_ckpt(model_dir, 4))
    os.remove(_ckpt(model_dir, 2, ".index"))
    before = _snapshot(model_dir)
    with pytest.raises(DamagedCheckpointsError) as error:
        pretrain(_config(model_dir))
    assert error.value.field == "model_dir"
    assert "ckpt-4: Read less bytes than requested" in error.value.reason
    assert "ckpt-2: its .index file is missing" in error.value.reason
    assert "this one is left as it is" in error.value.reason
    assert _snapshot(model_dir) == before


# ----------------------------------------------------------------------- reruns and flags
def test_rerunning_a_finished_run_changes_nothing(finished_run, tmp_path, caplog):
    model_dir = _copy(finished_run, tmp_path)
    before = _snapshot(model_dir)
    with open(os.path.join(model_dir, "results.json")) as f:
        stored = json.load(f)
    caplog.set_level(logging.INFO, logger="nac_tf")
    assert pretrain(_config(model_dir)) == stored
    assert f"{model_dir} finished this run already (step 6)" in caplog.messages[-1]
    assert _snapshot(model_dir) == before
    # Asking for the evaluation it skipped evaluates without training, keeping the training
    # metrics; then that command is finished too.
    results = pretrain(_config(model_dir, evaluate=True))
    assert results["evaluated"] and results["steps"] == TOTAL_STEPS
    assert results["final_metrics"] == stored["final_metrics"]
    assert "knn_top1" in results and _steps(model_dir) == [2, 4, 6]
    after_evaluation = _snapshot(model_dir)
    assert pretrain(_config(model_dir, evaluate=True)) == results
    assert _snapshot(model_dir) == after_evaluation


def test_flag_changes_are_checked_before_anything_is_written(finished_run, tmp_path, caplog):
    model_dir = _copy(finished_run, tmp_path)
    before = _snapshot(model_dir)
    for changes, named in [
            (dict(code_dim=32), "code_dim: 16 -> 32"),
            (dict(method="simclr"), "method: 'nac' -> 'simclr'"),
            (dict(code_dim=32, train_steps=8), "(code_dim: 16 -> 32)")]:
        with pytest.raises(ConfigError) as error:
            pretrain(_config(model_dir, allow_flag_changes=True, **changes))
        assert named in error.value.reason and "cannot be resumed with" in error.value.reason
        assert _snapshot(model_dir) == before
    with pytest.raises(ConfigError, match="train_steps: 6 -> 8.*allow_flag_changes"):
        pretrain(_config(model_dir, train_steps=8))
    assert _snapshot(model_dir) == before
    # Allowed: a longer run resumes at its last step, and the change is recorded.
    caplog.set_level(logging.INFO, logger="nac_tf")
    results = pretrain(_config(model_dir, train_steps=8, allow_flag_changes=True))
    assert results["steps"] == 8 and any("Resumed from" in m and "at step 6" in m
                                         for m in caplog.messages)
    with open(os.path.join(model_dir, FLAG_CHANGES_FILE)) as f:
        assert json.load(f) == [{"step": 6, "changes": {"train_steps": {"old": 6, "new": 8}}}]
    # The same command again trains nothing and returns the stored results.
    assert pretrain(_config(model_dir, train_steps=8, allow_flag_changes=True)) == results
    assert "finished this run already (step 8)" in caplog.messages[-1]


def test_a_checkpoint_of_other_networks_is_refused_untouched(finished_run, tmp_path):
    """flags.json lost and the run started with other settings: the restore fails before
    anything is written."""
    model_dir = _copy(finished_run, tmp_path)
    os.remove(os.path.join(model_dir, "flags.json"))
    before = _snapshot(model_dir)
    with pytest.raises(ConfigError, match=r"ckpt-6 does not match the networks of this run's"):
        pretrain(_config(model_dir, code_dim=32))
    assert _snapshot(model_dir) == before


def test_unusable_model_dirs_are_refused_in_one_line(finished_run, tmp_path):
    model_dir = _copy(finished_run, tmp_path)
    with open(os.path.join(model_dir, "flags.json"), "w") as f:
        f.write('{"method": "nac", "code_di')
    with pytest.raises(ConfigError, match=r"cannot read .*flags.json \(Unterminated string"):
        check_run_directory(_config(model_dir))
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        pretrain(_config(a_file))
    with pytest.raises(ConfigError, match=r"cannot write .*\(Not a directory\)"):
        pretrain(_config(a_file / "run"))


# ----------------------------------------------------------------------- the disk
@pytest.fixture
def small_filesystem(tmp_path):
    """A mount point for a size-limited tmpfs (`mount(size_kb, read_only=False)`), the real
    way a disk fills up; skipped where this process may not mount (not root)."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = []

    def mount(size_kb, options=""):
        args = ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k{options}", "tmpfs", str(point)]
        if mounted:
            args = ["mount", "-o", f"remount,size={size_kb}k{options}", str(point)]
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    if mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_a_full_disk_keeps_the_earlier_checkpoints(stopped_run, tmp_path, small_filesystem,
                                                  caplog):
    """Checkpoints on a tmpfs with room for two of them (830 kB each): the third write fails
    with ENOSPC, leaves nothing half-written, and the same command resumes from the second
    once there is room."""
    model_dir = _copy(stopped_run, tmp_path)
    shutil.rmtree(os.path.join(model_dir, "checkpoints"))
    checkpoints = small_filesystem(2200)
    os.symlink(checkpoints, os.path.join(model_dir, "checkpoints"))
    config = _config(model_dir, checkpoint_every_steps=1)
    shutil.rmtree(os.path.join(model_dir, "tensorboard"))  # a new run from step 0
    with pytest.raises(CheckpointWriteError) as error:
        pretrain(config)
    assert (f"could not write the checkpoint of step 3 to {model_dir}/checkpoints (No space "
            f"left on device); the newest checkpoint is {_ckpt(model_dir, 2, '')}: fix the "
            "cause") in str(error.value)
    assert sorted(os.listdir(checkpoints)) == sorted(
        ["checkpoint"] + [f"ckpt-{s}{p}" for s in (1, 2)
                          for p in (".index", ".data-00000-of-00001")])
    assert intact_checkpoint(model_dir) == _ckpt(model_dir, 2, "")
    small_filesystem(20000)
    caplog.set_level(logging.INFO, logger="nac_tf")
    results = pretrain(config.replace(keep_checkpoints=2))
    assert f"Resumed from {_ckpt(model_dir, 2, '')} at step 2" in caplog.messages
    assert results["steps"] == TOTAL_STEPS


def test_a_read_only_model_dir_is_refused_in_one_line(tmp_path, small_filesystem):
    read_only = small_filesystem(100, ",ro")
    with pytest.raises(ConfigError, match=r"cannot write .*\(Read-only file system\)"):
        pretrain(_config(read_only / "run"))


# ----------------------------------------------------------------------- the command line
def test_the_command_line_answers_each_fault_in_one_line(finished_run, stopped_run, tmp_path):
    """Concurrent `python -m nac_tf.train` processes: a finished run's command prints its
    stored results and changes nothing (exit 0); a directory without an intact checkpoint
    is refused (exit 2); Ctrl-C twice exits at once (130)."""
    finished = _copy(finished_run, tmp_path / "finished")
    damaged = _copy(stopped_run, tmp_path / "damaged")
    for step in (2, 4):
        _truncate(_ckpt(damaged, step))
    before = {d: _snapshot(d) for d in (finished, damaged)}
    flags = ["--method=nac", "--dataset=digits", "--image_size=8", "--encoder=small_cnn",
             "--batch_size=32", f"--train_steps={TOTAL_STEPS}", "--learning_rate=0.5",
             "--warmup_epochs=0.2", "--code_dim=16", "--head_hidden_dim=32",
             "--crop_area_min=0.5", "--noflip", "--jitter_prob=0", "--grayscale_prob=0",
             "--knn_k=10", "--checkpoint_every_steps=2", "--keep_checkpoints=10",
             "--log_every_steps=2", "--queue_size=128", "--linear_eval_epochs=2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def start(model_dir, *extra):
        return subprocess.Popen(
            [sys.executable, "-m", "nac_tf.train", *flags, *extra, f"--model_dir={model_dir}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    processes = {"finished": start(finished, "--evaluate=false"),
                 "damaged": start(damaged, "--evaluate=false"),
                 # Evaluating at initialisation takes seconds and polls no stop: the time
                 # for the second Ctrl-C.
                 "ctrl_c": start(tmp_path / "ctrl_c", "--evaluate=true",
                                 "--linear_eval_epochs=30")}
    try:
        ctrl_c = processes["ctrl_c"]
        out = ""
        deadline = time.monotonic() + 240
        while "Evaluating the networks at their initialisation" not in out:
            assert ctrl_c.poll() is None and time.monotonic() < deadline, ctrl_c.stderr.read()
            out += ctrl_c.stdout.readline()
        ctrl_c.send_signal(signal.SIGINT)
        err = ""
        while "Ctrl-C: stopping after the current step" not in err:
            assert ctrl_c.poll() is None and time.monotonic() < deadline, err
            err += ctrl_c.stderr.readline()
        ctrl_c.send_signal(signal.SIGINT)
        results = {name: (p.wait(timeout=240), *p.communicate()) for name, p in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, (code, out, err) in results.items():
        assert "Traceback" not in err, (name, err)
    code, out, err = results["finished"]
    assert code == 0, err
    with open(os.path.join(finished, "results.json")) as f:
        assert json.loads(out[out.index("{"):]) == json.load(f)
    code, out, err = results["damaged"]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, err
    assert errors[0].startswith(f"error: --model_dir: no checkpoint in {damaged}/"), err
    assert [d for d in before if _snapshot(d) != before[d]] == []
    code, out, err = results["ctrl_c"]
    assert code == 128 + signal.SIGINT, err
    assert "Ctrl-C again: exiting at once, without a checkpoint" in err
    assert not os.path.exists(os.path.join(tmp_path, "ctrl_c", "checkpoints", "ckpt-0.index"))


def test_export_takes_the_newest_intact_checkpoint(stopped_run, tmp_path):
    from nac_tf.export import export_saved_model, read_export_metadata

    model_dir = _copy(stopped_run, tmp_path)
    _scramble(_ckpt(model_dir, 4))
    path = export_saved_model(model_dir, str(tmp_path / "export"))
    assert read_export_metadata(path)["checkpoint"] == _ckpt(model_dir, 2, "")
    _truncate(_ckpt(model_dir, 2))
    with pytest.raises(DamagedCheckpointsError):
        export_saved_model(model_dir, str(tmp_path / "export"), overwrite=True)


def test_a_setting_added_after_the_run_started_takes_its_default(tmp_path):
    # flags.json of a run started before a setting existed: the run behaved as its default
    # does, so the default resumes it and another value is refused as any change is.
    config = PretrainConfig(model_dir=str(tmp_path / "run"))
    os.makedirs(config.model_dir)
    older = {k: v for k, v in config.to_dict().items() if k != "mq_negatives"}
    with open(os.path.join(config.model_dir, "flags.json"), "w") as f:
        json.dump(older, f)
    assert check_run_directory(config) == {}
    with pytest.raises(ConfigError, match="mq_negatives: 'batch_in_queue' -> 'queue_only'"):
        check_run_directory(config.replace(mq_negatives="queue_only"))

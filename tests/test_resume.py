"""Exact resume: a run killed with SIGKILL, or stopped with SIGTERM (preemption) or Ctrl-C
(SIGINT), and started again with the same command ends with the weights, optimizer state,
momentum networks and queue of an uninterrupted run of the same command (NAC stopped by
SIGTERM, NAC-MQ by Ctrl-C).

Integer state (steps, input position, queue pointer) must be equal. Float state is almost
always bit-identical too, but not always: in 2 of about 20 runs on the 2-core machines
(two TensorFlow processes sharing the cores), the NAC-MQ chain ended 1e-7 away from the
reference in BatchNorm statistics, grown to at most 1.3 % of a variable's scale in the
optimizer's slots after the remaining steps (NAC-MQ's codes at this size are collapsed, so
rounding differences grow). An uninterrupted rerun has never differed, and which kernel
reorders a sum is not identified. So float state is compared to `FLOAT_TOLERANCE` of each
variable's largest magnitude: far above rounding, far below what a state missing from the
checkpoint, a mask or image order off by one step, or a reset queue would cause.

The interrupted runs are real `python -m nac_tf.train` processes with --deterministic, the
two methods concurrently. The uninterrupted reference runs go in this process
(`pretrain` with the configuration the same flags parse to): that saves two TensorFlow
starts, and it is the same computation (op determinism changes no CPU kernel this model
uses; a subprocess reference gives the same bits).
"""
import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from nac_tf.config import ConfigError
from nac_tf.run_directory import prepare_run_directory
from nac_tf.training import pretrain

from test_training import _tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 30
CHECKPOINT_EVERY = 3
# Largest |resumed - uninterrupted| allowed, as a fraction of max |uninterrupted| per variable.
FLOAT_TOLERANCE = 0.05
# Generous: two TensorFlow processes share two cores.
PROCESS_TIMEOUT = 240
def _command(method, model_dir):
    flags = dict(method=method, dataset="digits", image_size=8, encoder="small_cnn",
                 batch_size=32, train_steps=TOTAL_STEPS, learning_rate=0.5, warmup_epochs=0.2,
                 code_dim=16, head_hidden_dim=32, crop_area_min=0.5, flip="false",
                 jitter_prob=0.0, grayscale_prob=0.0, checkpoint_every_steps=CHECKPOINT_EVERY,
                 log_every_steps=2, queue_size=128, evaluate="false", deterministic="true",
                 model_dir=model_dir)
    return [sys.executable, "-m", "nac_tf.train", *(f"--{k}={v}" for k, v in flags.items())]


def _latest_step(model_dir):
    """Step of the latest checkpoint (None without one). Reads CheckpointManager's state
    file directly: polled every few milliseconds, it must not hold the GIL for long."""
    try:
        with open(os.path.join(model_dir, "checkpoints", "checkpoint")) as f:
            match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', f.read(), re.MULTILINE)
    except FileNotFoundError:
        return None
    return int(match.group(1)) if match else None


def _run(command, logs, name, signal_after=None, sig=None):
    """Runs `command` to its end; with `signal_after`, sends `sig` as soon as a checkpoint
    of a later step exists. Returns (exit code, stdout, stderr). Never leaves it running."""
    out_path, err_path = (os.path.join(logs, f"{name}.{kind}") for kind in ("out", "err"))
    model_dir = command[-1].split("=", 1)[1]
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err)
        try:
            if signal_after is not None:
                deadline = time.monotonic() + PROCESS_TIMEOUT
                while (_latest_step(model_dir) or 0) <= signal_after:
                    if process.poll() is not None or time.monotonic() > deadline:
                        with open(err_path) as f:
                            tail = f.read()[-3000:]
                        pytest.fail(f"{name} ended (exit code {process.poll()}) or wrote no "
                                    f"checkpoint in time, before it could be signalled:\n{tail}")
                    time.sleep(0.02)
                process.send_signal(sig)
            process.wait(timeout=PROCESS_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    with open(out_path) as out, open(err_path) as err:
        return process.returncode, out.read(), err.read()


STOP_SIGNALS = {"nac": signal.SIGTERM, "nac_mq": signal.SIGINT}


def _interrupted(method, model_dir, logs):
    """SIGKILL after the first checkpoint, the method's stop signal (STOP_SIGNALS) after
    the next one, then to the end."""
    stop = STOP_SIGNALS[method]
    command = _command(method, model_dir)
    code, _, err = _run(command, logs, f"{method}-1", signal_after=0, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL, err
    killed_at = _latest_step(model_dir)
    assert killed_at < TOTAL_STEPS, "the run finished before SIGKILL"

    code, out, err = _run(command, logs, f"{method}-2", signal_after=killed_at, sig=stop)
    assert f"Resumed from {model_dir}/checkpoints/ckpt-{killed_at} at step {killed_at}" in out
    assert code == 128 + stop, err
    stopped = re.search(rf"{stop.name}: stop requested at step (\d+)/30: checkpoint (\S+) "
                        r"written; run the same command again to resume from it", err)
    assert stopped, err
    stopped_at = int(stopped.group(1))
    assert stopped.group(2) == f"{model_dir}/checkpoints/ckpt-{stopped_at}"
    assert killed_at < stopped_at < TOTAL_STEPS and _latest_step(model_dir) == stopped_at
    assert "Traceback" not in err

    code, out, err = _run(command, logs, f"{method}-3")
    assert code == 0, err
    assert f"Resumed from {model_dir}/checkpoints/ckpt-{stopped_at} at step {stopped_at}" in out
    return killed_at, stopped_at


def _uninterrupted(method, model_dir):
    """The reference run, in this process, with the configuration the flags parse to."""
    import nac_tf.train as entry

    values = flags.FlagValues()
    entry.define_flags(values)
    values(_command(method, model_dir)[2:])
    # Op determinism is process-wide: leave this process as it is (same bits on CPU).
    config = entry.config_from_flags(values).replace(deterministic=False)
    results = pretrain(config)
    assert results["steps"] == TOTAL_STEPS


def _checkpoint_values(path):
    reader = tf.train.load_checkpoint(path)
    # save_counter counts the saves of this directory, not training state.
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


@pytest.mark.slow
def test_killed_and_preempted_runs_end_with_the_uninterrupted_weights(tmp_path):
    logs = str(tmp_path)
    methods = ("nac", "nac_mq")
    # The two interrupted runs side by side (starting TensorFlow is mostly single-threaded
    # Python), the references in this process after them: more TensorFlow thread pools
    # than cores spin-wait each other to a crawl.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        chains = [pool.submit(_interrupted, method, str(tmp_path / f"{method}_interrupted"),
                              logs) for method in methods]
        for chain in chains:
            chain.result()
    for method in methods:
        _uninterrupted(method, str(tmp_path / f"{method}_reference"))
    for method in methods:
        resumed = _checkpoint_values(str(tmp_path / f"{method}_interrupted" / "checkpoints" /
                                         f"ckpt-{TOTAL_STEPS}"))
        straight = _checkpoint_values(str(tmp_path / f"{method}_reference" / "checkpoints" /
                                          f"ckpt-{TOTAL_STEPS}"))
        assert resumed.keys() == straight.keys()
        names = " ".join(resumed)
        assert "input_position" in names and "optimizer" in names
        if method == "nac_mq":
            assert "queue" in names and "momentum_encoder" in names
        for name, value in straight.items():
            if value.dtype.kind != "f":
                np.testing.assert_array_equal(resumed[name], value, err_msg=f"{method}: {name}")
                continue
            scale = float(np.abs(value).max()) if value.size else 0.0
            error = float(np.abs(resumed[name] - value).max()) if value.size else 0.0
            assert error <= FLOAT_TOLERANCE * scale, (
                f"{method}: {name}: max |resumed - uninterrupted| = {error:.3g} > "
                f"{FLOAT_TOLERANCE} x {scale:.3g}")


def test_changed_flags_are_refused_naming_them_and_the_override(tmp_path):
    config = _tiny(tmp_path)
    prepare_run_directory(config)
    prepare_run_directory(config.replace(log_every_steps=5, evaluate=False))  # not run-defining
    changed = config.replace(train_steps=9, learning_rate=0.1)
    with pytest.raises(ConfigError) as error:
        prepare_run_directory(changed)
    message = str(error.value)
    assert error.value.field == "model_dir"
    assert "learning_rate: 0.5 -> 0.1" in message and "train_steps: 6 -> 9" in message
    assert "allow_flag_changes" in message and "new model_dir" in message
    # Refused means untouched; allowed means recorded.
    with pytest.raises(ConfigError):
        prepare_run_directory(changed, write=False)
    prepare_run_directory(changed.replace(allow_flag_changes=True))
    prepare_run_directory(changed)

"""Multi-worker: two `python -m nac_tf.train --strategy=multi_worker` processes on localhost
(MultiWorkerMirroredStrategy, one CPU replica each) end with the same weights as one process
with two replicas (MirroredStrategy over two logical CPUs) on the same global batch, and only
the chief writes the run directory.

Why they agree: each worker's input pipeline makes its replica's rows of the global batch,
views included, exactly as the single process does (`nac_tf.data.pipeline`), and every
replica runs the same ops on the same rows. Not bit for bit, though: after 6 steps (observed)
weights and BatchNorm statistics differ by at most 1.2e-7 (float32 rounding), because the two
setups sum in different orders (MultiWorkerMirroredStrategy's ring all-reduce over gRPC
against MirroredStrategy's local reduction; CPU kernels blocked for the threads each
process gives them). Tolerance: |difference| <= 1e-6 + 1e-5 |value|.

When a worker is killed, the other stops (WORKER_LOST_EXIT_CODE) with one line naming the
lost worker and the checkpoint that the same two commands resume from, and they do: one
test kills the chief of the two-worker run and compares the resumed run's weights with
the single process's (two worker sessions instead of three).
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from nac_tf.cli.train import WORKER_LOST_EXIT_CODE
from nac_tf.config import PretrainConfig
from nac_tf.distribute import worker_lost_error
from nac_tf.run_directory import latest_checkpoint
from nac_tf.training import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 9 steps after the first checkpoint (step 3) to kill the chief in.
STEPS = 12
TIMEOUT = 240  # seconds per worker; it is killed after that
# TensorFlow notices a lost worker within about 12 s (missed heartbeats, 10 s) or at once
# (a call to it fails); the rest is the survivor's exit.
SURVIVOR_TIMEOUT = 60


def _free_ports(count):
    """Ports on 127.0.0.1 that are free now (bound to port 0, then released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _kill_running(processes):
    """Kills those of `processes` that still run, and reaps them all."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def _config(model_dir, strategy):
    return PretrainConfig(
        method="nac", dataset="digits", image_size=8, encoder="small_cnn", batch_size=32,
        train_steps=STEPS, learning_rate=0.5, warmup_epochs=0.2, code_dim=16,
        head_hidden_dim=32, crop_area_min=0.5, flip=False, jitter_prob=0.0,
        grayscale_prob=0.0, checkpoint_every_steps=3, log_every_steps=2, evaluate=False,
        model_dir=str(model_dir), strategy=strategy)


def _flags(config):
    return [f"--{key}={str(value).lower() if isinstance(value, bool) else value}"
            for key, value in config.to_dict().items()]


def _environment(cluster, index, tmpdir):
    """Worker `index`'s environment: its TF_CONFIG, and TMPDIR `tmpdir` (to see what it leaves
    there)."""
    return dict(os.environ, TMPDIR=str(tmpdir), TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))


def _checkpoint_values(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


# What TensorFlow 2.21 told a survivor (abridged): the chief, ~10 s after worker 1 stopped
# sending heartbeats; worker 1, at once, when a collective's call to the killed chief failed.
HEARTBEATS = (
    "{{function_node __wrapped__CollectiveBcastSend_device_/job:worker/replica:0/task:0/device:"
    "CPU:0}} Collective ops is aborted by: Error reported from /job:worker/task:1: The "
    "following tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1"
    "\nThe tasks have crashed. [Op:CollectiveBcastSend]")
CALL_FAILED = (
    "Graph execution error:\n\nCollective ops is aborted by: recvmsg:Connection reset by peer\n"
    "Additional GRPC error information from remote target /job:worker/replica:0/task:0 while "
    "calling /tensorflow.WorkerService/CompleteInstance:\n:UNKNOWN:Error received from peer  "
    '{grpc_status:14, grpc_message:"recvmsg:Connection reset by peer"}')


def test_lost_worker_errors_name_the_task_and_the_checkpoint():
    def lost(message, checkpoint="run/checkpoints/ckpt-3", error=tf.errors.UnavailableError):
        return worker_lost_error(error(None, None, message), checkpoint)

    assert lost(HEARTBEATS).tasks == ["/job:worker/replica:0/task:1"]
    assert str(lost(HEARTBEATS)).startswith("lost worker 1 (/job:worker/replica:0/task:1) ")
    assert lost(CALL_FAILED).tasks == ["/job:worker/replica:0/task:0"]
    assert str(lost(CALL_FAILED)).endswith("resumes from checkpoint run/checkpoints/ckpt-3")
    assert "no checkpoint was written" in str(lost(CALL_FAILED, checkpoint=None))
    # Aborted collectives naming no task: still a lost worker, unnamed.
    assert lost("Collective ops is aborted by: ?").tasks == []
    # Not a lost worker: another service unavailable, another error class.
    assert lost("storage.example.com: 503 Service Unavailable") is None
    assert lost(HEARTBEATS, error=tf.errors.InvalidArgumentError) is None


@pytest.mark.slow
def test_a_lost_worker_stops_the_other_and_the_same_commands_resume(tmp_path,
                                                                   two_replica_strategy):
    """SIGKILL the chief after its first checkpoint: worker 1 exits with WORKER_LOST_EXIT_CODE
    and one `error:` line naming worker 0 and that checkpoint, no traceback; the same two
    commands then resume from it and finish, with the weights of one process with two
    replicas on the same global batch (the whole run, uninterrupted). Only the chief writes
    the run directory, and no worker leaves its nac_tf_worker* scratch directory."""
    run = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    config = _config(run, "multi_worker")
    command = [sys.executable, "-m", "nac_tf.train", *_flags(config), "--deterministic"]
    tmpdirs = [tmp_path / f"tmp{index}" for index in range(2)]
    for tmpdir in tmpdirs:
        tmpdir.mkdir()

    def start(session):
        processes = []
        for index in range(2):
            with open(tmp_path / f"{session}{index}.out", "w") as out, \
                    open(tmp_path / f"{session}{index}.err", "w") as err:
                processes.append(subprocess.Popen(
                    command, cwd=REPO, env=_environment(cluster, index, tmpdirs[index]),
                    stdout=out, stderr=err))
        return processes

    def output(session, index, stream):
        return (tmp_path / f"{session}{index}.{stream}").read_text()

    def scratch_left():
        return [name for tmpdir in tmpdirs for name in os.listdir(tmpdir)
                if name.startswith("nac_tf_worker")]

    processes = start("first")
    try:
        deadline = time.time() + TIMEOUT
        while latest_checkpoint(str(run)) is None:
            if time.time() > deadline or any(p.poll() is not None for p in processes):
                pytest.fail("no checkpoint: " + output("first", 0, "err")[-3000:])
            time.sleep(0.01)
        processes[0].kill()
        try:
            processes[1].wait(timeout=SURVIVOR_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker 1 still runs {SURVIVOR_TIMEOUT} s after the chief was killed")
    finally:
        _kill_running(processes)
    checkpoint = latest_checkpoint(str(run))
    errors = output("first", 1, "err")
    assert processes[1].returncode == WORKER_LOST_EXIT_CODE, errors
    assert "Traceback" not in errors
    # TensorFlow's own C++ error lines about the aborted collectives come before it.
    lines = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, errors
    assert lines[0].startswith("error: lost worker 0 (/job:worker/replica:0/task:0) "), errors
    assert lines[0].endswith("Rerunning the same command on every worker resumes from "
                             f"checkpoint {checkpoint}"), errors
    assert not scratch_left()

    processes = start("second")
    try:
        # Meanwhile, the same global batch on two replicas in this process.
        reference = pretrain(_config(tmp_path / "mirrored", "mirrored"),
                             strategy=two_replica_strategy)
        for process in processes:
            process.wait(timeout=TIMEOUT)
    finally:
        _kill_running(processes)
    for index, process in enumerate(processes):
        assert process.returncode == 0, output("second", index, "err")[-3000:]
    assert f"Resumed from {checkpoint} at step " in output("second", 0, "out")
    assert "nac on digits: encoder small_cnn, 2 replica(s), global batch 32" in \
        output("second", 0, "out")
    with open(run / "results.json") as f:
        assert json.load(f)["steps"] == STEPS == reference["steps"]
    assert not scratch_left()
    # Only the chief wrote the run directory: one TensorBoard file per session.
    assert sorted(os.listdir(run)) == ["checkpoints", "flags.json", "input_statistics.json",
                                       "results.json", "tensorboard"]
    assert len(os.listdir(run / "tensorboard")) == 2

    workers = _checkpoint_values(str(run / "checkpoints" / f"ckpt-{STEPS}"))
    single = _checkpoint_values(str(tmp_path / "mirrored" / "checkpoints" / f"ckpt-{STEPS}"))
    assert workers.keys() == single.keys()
    for name, value in single.items():
        np.testing.assert_allclose(workers[name], value, rtol=1e-5, atol=1e-6, err_msg=name)

"""Multi-worker: two `python -m nac_tf.train --strategy=multi_worker` processes on localhost
(MultiWorkerMirroredStrategy, one CPU replica each) end with the same weights as one process
with two replicas (MirroredStrategy over two logical CPUs) on the same global batch, and only
the chief writes the run directory.

Why they agree: each worker's input pipeline makes its replica's rows of the global batch,
views included, exactly as the single process does (`nac_tf.data.pipeline`), and every
replica runs the same ops on the same rows. Not bit for bit, though: after 6 steps weights
and BatchNorm statistics differ by at most 1.2e-7 (float32 rounding), because the two
setups sum in different orders (MultiWorkerMirroredStrategy's ring all-reduce over gRPC
against MirroredStrategy's local reduction; CPU kernels blocked for the threads each
process gives them). Tolerance: |difference| <= 1e-6 + 1e-5 |value|.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import tensorflow as tf

from nac_tf.config import PretrainConfig
from nac_tf.training import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
TIMEOUT = 240  # seconds per worker; it is killed after that


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


def _checkpoint_values(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def test_two_workers_match_one_process_with_two_replicas(tmp_path, two_replica_strategy):
    run = tmp_path / "multi_worker"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    command = [sys.executable, "-m", "nac_tf.train",
               *_flags(_config(run, "multi_worker")), "--deterministic"]
    processes, scratch = [], []
    try:
        for index in range(2):
            scratch.append(tmp_path / f"tmp{index}")
            scratch[-1].mkdir()
            env = dict(os.environ, TMPDIR=str(scratch[-1]), TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}))
            log = open(tmp_path / f"worker{index}.log", "w")
            processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                              stderr=subprocess.STDOUT))
            log.close()
        # Meanwhile, the same global batch on two replicas in this process.
        reference = pretrain(_config(tmp_path / "mirrored", "mirrored"), log=lambda *_: None,
                             strategy=two_replica_strategy)
        for process in processes:
            process.wait(timeout=TIMEOUT)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log
    assert "nac on digits: encoder small_cnn, 2 replica(s), global batch 32" in logs[0]

    # Only the chief wrote the run directory; worker 1 cleaned up its scratch checkpoints.
    assert sorted(os.listdir(run)) == ["checkpoints", "flags.json", "input_statistics.json",
                                       "results.json", "tensorboard"]
    assert len(os.listdir(run / "tensorboard")) == 1
    assert not os.listdir(scratch[1])
    with open(run / "results.json") as f:
        results = json.load(f)
    assert results["steps"] == STEPS == reference["steps"]

    workers = _checkpoint_values(str(run / "checkpoints" / f"ckpt-{STEPS}"))
    single = _checkpoint_values(str(tmp_path / "mirrored" / "checkpoints" / f"ckpt-{STEPS}"))
    assert workers.keys() == single.keys()
    for name, value in single.items():
        np.testing.assert_allclose(workers[name], value, rtol=1e-5, atol=1e-6, err_msg=name)

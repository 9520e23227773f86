"""Test-session setup: TensorFlow backend, quiet logs, two logical CPU devices; the trained
runs that tests share (one training per session instead of one per module).

The logical devices must be configured before TensorFlow initialises its runtime, so this
happens at import time of the conftest, before any test module builds a tensor.
"""
import logging
import os
import shutil
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
# Two logical CPUs let tests run MirroredStrategy as if there were two replicas.
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(items):
    """The end-to-end runs (marked slow) first, in their order, then the rest: pytest-xdist
    hands tests out in collection order, and a long run started last keeps one process busy
    while the other has finished."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def two_replica_strategy():
    """One MirroredStrategy over the two logical CPUs, shared by every test.

    TensorFlow allows one MirroredStrategy per device set and process: a second instance
    starts its collective instance keys where the first did, and the collective runtime
    aborts on the mismatch ("Collective instance 100 expected type ...").
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


# ----------------------------------------------------------------------- shared trained runs
# Training is what makes the suite slow: tests that only read a finished run read these,
# trained once per session through the public entry points (nac_tf.training.pretrain, the
# nac-export command). They are shared: a test that changes a run directory works on a copy
# (`TrainedRun.copy`).

# The quickstart's shape at its smallest (8 px digits, small CNN, 16-bit codes), 6 steps,
# with every part of the final report and the training-time evaluation switched on:
# checkpoints at steps 3 and 6, step summaries at 2, 4 and 6, evaluations during training at
# 2, 4 and 6 in loops of 5 steps (so the loop must stop at 2, 3, 4 and 6 by itself), a
# 1-epoch linear probe on unaugmented images and a 1-epoch MLP probe.
TINY_RUN = dict(
    method="nac", dataset="digits", image_size=8, encoder="small_cnn", batch_size=32,
    train_steps=6, learning_rate=0.5, warmup_epochs=0.2, code_dim=16, head_hidden_dim=32,
    crop_area_min=0.5, flip=False, jitter_prob=0.0, grayscale_prob=0.0, queue_size=128,
    knn_k=10, checkpoint_every_steps=3, log_every_steps=2, eval_every_steps=2,
    steps_per_loop=5, linear_eval_epochs=1, linear_eval_augment=False, mlp_eval_epochs=1)


class _Messages(logging.Handler):
    """The library's log messages (logger nac_tf) while it is attached, as caplog.messages."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class TrainedRun:
    """A finished run: its config, the results pretrain returned and the messages it logged.

    Shared by every test of the session: read it, or change a copy of it."""

    def __init__(self, config, results, messages):
        self.config, self.results, self.messages = config, results, messages
        self.model_dir = config.model_dir

    def copy(self, directory):
        """A copy of the run directory at `directory`/run (a pathlib.Path)."""
        return shutil.copytree(self.model_dir, directory / "run")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The evaluated TINY_RUN (NAC)."""
    from nac_tf.config import PretrainConfig
    from nac_tf.training import pretrain

    config = PretrainConfig(**TINY_RUN, model_dir=str(tmp_path_factory.mktemp("tiny") / "run"))
    messages = _Messages()
    library = logging.getLogger("nac_tf")
    level = library.level
    library.addHandler(messages)
    library.setLevel(logging.INFO)
    try:
        results = pretrain(config)
    finally:
        library.removeHandler(messages)
        library.setLevel(level)
    return TrainedRun(config, results, messages.messages)


class ExportedRun:
    """An export made by the nac-export command: its directory and what the command printed."""

    def __init__(self, path, stdout):
        self.path, self.stdout = path, stdout


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory):
    """`tiny_run` exported by nac-export (python -m nac_tf.cli.export), as a user exports it.
    Commands that write their reports beside the export run on a copy of it."""
    path = str(tmp_path_factory.mktemp("tiny_export") / "saved_model")
    result = subprocess.run(
        [sys.executable, "-m", "nac_tf.cli.export", f"--model_dir={tiny_run.model_dir}",
         f"--export_dir={path}"], cwd=REPO,
        env=dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return ExportedRun(path, result.stdout)

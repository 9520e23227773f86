"""Test-session setup: TensorFlow backend, quiet logs, two logical CPU devices.

The logical devices must be configured before TensorFlow initialises its runtime, so this
happens at import time of the conftest, before any test module builds a tensor.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
# Two logical CPUs let tests run MirroredStrategy as if there were two replicas.
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def two_replica_strategy():
    """One MirroredStrategy over the two logical CPUs, shared by every test.

    TensorFlow allows one MirroredStrategy per device set and process: a second instance
    starts its collective instance keys where the first did, and the collective runtime
    aborts on the mismatch ("Collective instance 100 expected type ...").
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

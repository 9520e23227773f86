"""Writing and restoring a pretraining run's checkpoints (TensorFlow's side of
`nac_tf.run_directory`, which finds them): `CheckpointWriter` saves them on every worker
and keeps the chief's directory consistent, `restore_training_state` restores a run from
one and refuses one of other networks.
"""
import os
import shutil
import tempfile

import tensorflow as tf

from nac_tf.config import ConfigError
from nac_tf.errors import error_reason, failure_cause
from nac_tf.run_directory import (CHECKPOINT_DIR, checkpoint_step, checkpoint_steps,
                                  path_in, remove_partial_checkpoints, write_checkpoint_state)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, I/O error); what it left half-written
    is removed, the earlier checkpoints are intact and the same command resumes from the
    newest of them once the cause is fixed."""


class CheckpointWriter:
    """Saves the run's checkpoints: a CheckpointManager on the chief; on other workers a
    write to a scratch directory that exists only during the save (all workers must take
    part in saving; only the chief keeps the files).

    `latest`: the checkpoint the run resumed from (`intact_checkpoint`), then the last one
    saved. On the chief, the directories of interrupted writes are removed first and
    TensorFlow's state file is rewritten when it does not name `latest` (missing, or naming
    a damaged checkpoint), so that the manager keeps and deletes the right files.
    """

    def __init__(self, checkpoint, model_dir, keep, role, latest=None):
        self.model_dir = model_dir
        self.directory = path_in(model_dir, CHECKPOINT_DIR)
        self.role = role
        self.latest = latest
        self._checkpoint = checkpoint
        self._manager = None
        if role.is_chief:
            remove_partial_checkpoints(model_dir)
            if latest is not None and tf.train.latest_checkpoint(self.directory) != latest:
                self._repair_state_file(latest)
            self._manager = tf.train.CheckpointManager(checkpoint, self.directory,
                                                       max_to_keep=keep)

    def _repair_state_file(self, latest):
        """Names `latest` and the complete checkpoints before it in the state file."""
        step = checkpoint_step(latest)
        older = [prefix for s, (prefix, problem)
                 in sorted(checkpoint_steps(self.model_dir).items())
                 if problem is None and s < step]
        write_checkpoint_state(self.model_dir, older + [latest])

    def save(self, step):
        """Writes the checkpoint of `step`; CheckpointWriteError (nothing half-written left,
        `latest` unchanged) when the disk refuses it."""
        scratch = None
        try:
            if self._manager is not None:
                self.latest = self._manager.save(checkpoint_number=step)
            else:
                scratch = tempfile.mkdtemp(prefix=f"nac_tf_worker{self.role.task_id}_")
                self._checkpoint.write(os.path.join(scratch, f"ckpt-{step}"))
                self.latest = path_in(self.directory, f"ckpt-{step}")  # the chief's copy
        except (OSError, tf.errors.OpError) as error:
            if self._manager is None:
                raise
            for name in os.listdir(self.directory):  # what the failed write left behind
                if name.startswith(f"ckpt-{step}.") or name == f"ckpt-{step}_temp":
                    path = os.path.join(self.directory, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} to {self.directory} "
                f"({failure_cause(error)}); the newest checkpoint is {self.latest or 'none'}: "
                "fix the cause (free disk space) and run the same command again to resume "
                "from it") from error
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


def restore_training_state(checkpoint, path, input_position, optimizer):
    """Restores the run's state from the checkpoint `path`; ConfigError naming model_dir
    when its variables do not match the networks these settings build (a flags.json
    edited by hand or lost, a checkpoint copied from another run)."""
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise ConfigError("model_dir", f"checkpoint {path} does not match the networks of "
                          f"this run's settings ({error_reason(error)});"
                          " use the settings it was written with, or a new model_dir"
                          ) from None
    if not any(name.startswith("input_position") for name, _ in tf.train.list_variables(path)):
        # Written before the input position was saved: no skipped steps then.
        input_position.assign(tf.cast(optimizer.iterations, tf.int64))

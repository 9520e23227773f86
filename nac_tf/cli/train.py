"""nac-train: pretrains NAC, NAC-MQ, SimCLR, MoCo-v2 or AMDIM (`nac_tf.training.pretrain`).

    nac-train --config=NAME [--flag=value ...]
    nac-train --flagfile=path/to/file.flags [--flag=value ...]
    python -m nac_tf.cli.train ...        (also: python -m nac_tf.train ...)

--config=NAME runs a config shipped with the package (the flagfiles of the repository's
configs/ folder, e.g. --config=quickstart or --config=cifar10_nac_mq; --help lists them).
Its flags are inlined where --config stands, so later flags override them. Flags are parsed
into a PretrainConfig (the only place they are read), every value is validated before any
graph is built, and the run goes to --model_dir (run the same command again to resume).

Running the command of a finished run again changes nothing and prints its stored results;
docs/robustness.md says what survives which fault.

Exit codes: 0 trained (and evaluated), or finished already; 1 a fault during training: the
loss or the weights became non-finite, or a checkpoint or result could not be written (full
disk): the last good checkpoint is kept; 2 a flag, the data behind --data_dir or the run
directory is unusable (one line `error: --flag: ...` on stderr, no traceback, nothing
written); 75 a worker of a multi-worker run was lost (one line `error: lost worker N
(/job:worker/replica:0/task:N) ...` naming the checkpoint that the same command on every
worker resumes from: rerun them); 130 (128 + SIGINT) stopped by Ctrl-C and 143 (128 +
SIGTERM) stopped by SIGTERM, e.g. on preemption: both after writing a checkpoint of the
current step (run the same command again to resume); a second Ctrl-C exits at once with
130, without one. 75 is sysexits.h's EX_TEMPFAIL (a temporary failure, retry later): a job
runner that retries on it gets this right, whereas retrying after 1 repeats the failure.

A worker whose peers never start, or die before they join the cluster, waits for them as
TensorFlow does (it cannot tell a dead peer from a late one): the chief without a limit,
the others up to an hour; Ctrl-C twice ends it.
"""
import dataclasses
import json
import os
import re
import signal
import sys
import threading

from absl import flags

from nac_tf.cli import common
from nac_tf.cli.configs import available_configs, expand_config_args
from nac_tf.config import ConfigError, PretrainConfig, declared_settings, validate_config
from nac_tf.errors import cannot_write
from nac_tf.methods.registry import method_names
from nac_tf.settings import alternatives

WORKER_LOST_EXIT_CODE = 75  # sysexits.h's EX_TEMPFAIL (see the docstring)

# A name in backquotes in a setting's help is another setting: shown as its flag.
_SETTING_NAME = re.compile(r"`([a-z][a-z0-9_*]*)`")


def flag_help(setting):
    """The help of `setting`'s flag: its declared help, naming settings as flags and
    `{methods}` as the registered methods."""
    text = _SETTING_NAME.sub(r"--\1", setting.help)
    return text.replace("{methods}", alternatives(method_names()))


def define_flags(flag_values=flags.FLAGS):
    """--config, and one absl flag per PretrainConfig field (`declared_settings`), typed by
    the setting's default."""
    names = available_configs()
    flags.DEFINE_string(
        "config", None, "A config shipped with nac_tf, by name: "
        f"{', '.join(names) if names else '(none found)'}. Its flags are inlined at this "
        "position: flags after it override them.", flag_values=flag_values)
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
              str: flags.DEFINE_string}
    for setting in declared_settings().values():
        define[setting.type](setting.name, setting.default, flag_help(setting),
                             flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS):
    return PretrainConfig(**{f.name: flag_values[f.name].value
                             for f in dataclasses.fields(PretrainConfig)})


def config_from_args(args):
    """The PretrainConfig that `nac-train ARGS` would run (not validated), e.g.
    `config_from_args(["--config=quickstart", "--train_steps=5"])`. Raises ConfigError for
    an unknown config or include, absl's flags.Error for a bad flag."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(expand_config_args(["nac-train", *args]))
    return config_from_flags(flag_values)


class _StopOnSignal:
    """SIGTERM and Ctrl-C (SIGINT) ask the training loop to checkpoint the current step and
    stop (`requested`, polled between steps); a second Ctrl-C exits at once.

    The signals are blocked in the main thread, and so in every thread it starts later
    (TensorFlow's too), and taken by a thread of their own with sigwait: Python runs signal
    handlers only between bytecodes of the main thread, which a long TensorFlow call (a
    graph loop of many steps, a worker waiting for its cluster) keeps from them, so a
    handler could not exit "at once".
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal = None
        self._event = threading.Event()
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        threading.Thread(target=self._wait, name="nac_tf-stop-signals", daemon=True).start()

    def requested(self):
        return self._event.is_set()

    def _wait(self):
        while True:
            signum = signal.Signals(signal.sigwait(self.SIGNALS))
            if signum == signal.SIGINT and self._event.is_set():
                print("Ctrl-C again: exiting at once, without a checkpoint of the current "
                      "step", file=sys.stderr, flush=True)
                os._exit(128 + signal.SIGINT)
            self.signal = self.signal or signum
            self._event.set()
            if signum == signal.SIGINT:
                print("Ctrl-C: stopping after the current step with a checkpoint (Ctrl-C "
                      "again exits at once)", file=sys.stderr, flush=True)


def main(argv):
    common.reject_arguments(argv)
    # Before anything else: a stop requested while TensorFlow loads is honoured at the
    # first step boundary, not answered with a KeyboardInterrupt traceback.
    stop = _StopOnSignal()
    config = config_from_flags()
    # Every setting is checked against its declaration without TensorFlow (nac_tf.config
    # imports none), so a bad flag costs no TensorFlow start-up.
    try:
        validate_config(config)
    except ConfigError as error:
        common.exit_with_flag_error(error)
    common.import_tensorflow()
    from nac_tf.checkpointing import CheckpointWriteError
    from nac_tf.distribute import WorkerLostError
    from nac_tf.training import NonFiniteLossError, TrainingInterrupted, pretrain

    try:
        results = pretrain(config, stop_requested=stop.requested)
    except ConfigError as error:
        common.exit_with_flag_error(error)
    except (NonFiniteLossError, CheckpointWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except WorkerLostError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(WORKER_LOST_EXIT_CODE)
    except OSError as error:  # a result or log file the disk refused (full, read-only)
        print(f"error: {cannot_write(error.filename or config.model_dir, error)}; the "
              f"newest checkpoint in {config.model_dir} is intact: fix the cause and run the "
              "same command again to resume", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as error:
        print(f"{stop.signal.name if stop.signal else 'stopped'}: {error}", file=sys.stderr)
        sys.exit(128 + (stop.signal or signal.SIGTERM))
    print(json.dumps(results, indent=2, sort_keys=True))


def run(argv=None):
    """The `nac-train` console script."""
    common.run(main, define_flags, __doc__, argv=argv, configs=True)


if __name__ == "__main__":
    run()

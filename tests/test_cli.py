"""The shell every command shares (nac_tf.cli.common): --help, flag errors, exit codes."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_ENV = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
# module -> (console script, a flag of its own that --help must list)
COMMANDS = {
    "nac_tf.cli.train": ("nac-train", "--config"),
    "nac_tf.train": ("nac-train", "--flip_prob"),  # the old entry point, kept as a shim
    "nac_tf.cli.export": ("nac-export", "--export_dir"),
    "nac_tf.cli.linear_eval": ("nac-linear-eval", "--learning_rates"),
    "nac_tf.cli.hash_retrieval": ("nac-hash-retrieval", "--top_k"),
}


def _run(module, *args, python_args=()):
    return subprocess.run([sys.executable, *python_args, "-m", module, *args], cwd=REPO,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)


def _imports_tensorflow(stderr):
    # -X importtime lists every module imported on stderr.
    return any(line.rstrip().endswith("| tensorflow") for line in stderr.splitlines())


@pytest.mark.parametrize("module", list(COMMANDS))
def test_help_lists_the_flags_without_importing_tensorflow(module):
    script, flag = COMMANDS[module]
    result = _run(module, "--help", python_args=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(script), result.stdout[:300]
    assert f"{flag}:" in result.stdout  # absl lists flags as "--name: help"
    assert "Try --helpfull" in result.stdout
    assert not _imports_tensorflow(result.stderr), "--help imported TensorFlow"


def test_train_help_names_the_configs():
    result = _run("nac_tf.cli.train", "-h")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name in ("quickstart", "cifar10_nac_mq", "imagenet_nac_mq"):
        assert name in text
    full = _run("nac_tf.cli.train", "--helpfull")
    assert full.returncode == 0 and "--verbosity" in full.stdout  # absl's own flags too


@pytest.mark.parametrize("args, message", [
    (["--code_dim=many"], "error: --code_dim: "),  # absl's parse error
    (["--no_such_flag=1"], "error: --no_such_flag: unknown flag"),
    (["--model_dir=x", "quickstart"], "error: unexpected arguments 'quickstart'"),
])
def test_train_flag_errors_exit_2_before_tensorflow(args, message):
    result = _run("nac_tf.cli.train", *args, python_args=("-X", "importtime"))
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert "Traceback" not in result.stderr and "FATAL" not in result.stderr
    assert not _imports_tensorflow(result.stderr)


def test_importing_nac_tf_does_not_import_tensorflow():
    check = ("import sys, nac_tf, nac_tf.cli.train; "
             "sys.exit(int('tensorflow' in sys.modules))")
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]

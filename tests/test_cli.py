"""The shell every command shares (nac_tf.cli.common): --help, flag errors, exit codes."""
import os
import platform
import re
import subprocess
import sys

import pytest

from nac_tf.cli import common

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
    assert "--augment_on: Where the views are augmented: host" in text
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


def test_setting_errors_exit_2_before_tensorflow(tmp_path):
    # Every setting is checked against its declaration before TensorFlow starts.
    result = _run("nac_tf.cli.train", "--config=quickstart", "--flip_prob=0.7",
                  f"--model_dir={tmp_path / 'run'}", python_args=("-X", "importtime"))
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: --flip_prob: 0.7 is outside the accepted range (0.0, 0.5)"]
    assert not _imports_tensorflow(result.stderr)
    assert not os.path.exists(tmp_path / "run")


def test_importing_nac_tf_does_not_import_tensorflow():
    check = ("import sys, nac_tf, nac_tf.cli.train; "
             "sys.exit(int('tensorflow' in sys.modules))")
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# A C++ INFO line of TensorFlow, in absl's format or TensorFlow's older own.
_CPP_INFO_LINE = re.compile(r"^(I\d{4} \d\d:\d\d:|\d{4}-\d\d-\d\d [\d:.]+: I )", re.MULTILINE)
_CPP_ERROR_LINE = re.compile(r"^(E\d{4} \d\d:\d\d:|\d{4}-\d\d-\d\d [\d:.]+: E )")


@pytest.mark.parametrize("verbosity", [None, "0"])
def test_tensorflow_start_up_info_lines_only_with_verbosity(tmp_path, verbosity):
    """A command that imports TensorFlow (nac-train stops at --strategy=multi_worker without
    TF_CONFIG, which only a started TensorFlow can tell) prints its error and, by default,
    nothing from TensorFlow below
    ERROR (on a machine without a CUDA driver TensorFlow 2.21 still logs "failed call to
    cuInit" at ERROR); --verbosity=0 lets TensorFlow's INFO lines through."""
    env = {k: v for k, v in SUBPROCESS_ENV.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "TF_CONFIG")}
    args = ["--config=quickstart", "--strategy=multi_worker", f"--model_dir={tmp_path / 'run'}"]
    if verbosity is not None:
        args.append(f"--verbosity={verbosity}")
    result = subprocess.run([sys.executable, "-m", "nac_tf.cli.train", *args], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    error = ("error: --strategy: multi_worker needs the TF_CONFIG environment variable "
             "describing the cluster and this worker's task")
    if verbosity is None:
        *others, last = result.stderr.splitlines()
        assert last == error
        assert all(_CPP_ERROR_LINE.match(line) for line in others), others
    else:
        assert result.stderr.splitlines()[-1] == error
        if platform.system() == "Linux" and platform.machine() == "x86_64":
            # TensorFlow's x86 Linux builds announce oneDNN at INFO when they load.
            assert _CPP_INFO_LINE.search(result.stderr), result.stderr[-2000:]


def test_verbosity_maps_to_tensorflow_log_levels():
    assert [common.tensorflow_log_level(v) for v in (2, 1, 0, -1, -2, -3, -4)] == \
        [0, 0, 0, 1, 2, 3, 3]
    lines = {
        b"I0000 00:00:1796094096.399427   25167 port.cc:153] oneDNN custom operations": 0,
        b"W0000 00:00:1796094096.399427   25167 x.cc:1] a warning": 1,
        b"E0000 00:00:1796094097.803175   25167 cuda_platform.cc:52] failed call": 2,
        b"2025-09-17 14:44:05.157831: I external/xla/tsl/cuda/cudart_stub.cc:32] Could": 0,
        b"2025-09-17 14:44:05.157831: E external/xla/cuda_dnn.cc:8579] Unable": 2,
        b"WARNING: All log messages before absl::InitializeLog() is called are written to "
        b"STDERR\n": 0,
        b"Traceback (most recent call last):\n": 3,
        b"I0000 is not a log line\n": 3,
    }
    for line, highest_level_showing_it in lines.items():
        for level in range(4):
            assert common.keeps_log_line(line, level) == (level <= highest_level_showing_it), \
                (line, level)


# tools/<name>.py -> the command it runs
TOOLS = {"export_savedmodel.py": "nac_tf.cli.export",
         "linear_eval.py": "nac_tf.cli.linear_eval",
         "hash_retrieval.py": "nac_tf.cli.hash_retrieval",
         "hash_index.py": "nac_tf.cli.hash_index",
         "hash_search.py": "nac_tf.cli.hash_search"}


def test_every_tool_script_is_listed():
    assert sorted(name for name in os.listdir(os.path.join(REPO, "tools"))
                  if name.endswith(".py")) == sorted(TOOLS)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tool_scripts_run_the_installed_commands(tool):
    """python tools/<name>.py is the console command: same help, same flag errors (the
    script's own directory is on sys.path, not the repository: nac_tf comes from the
    installed package)."""
    script = os.path.join(REPO, "tools", tool)
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO,
                            env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)
    command = _run(TOOLS[tool], "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    # The same text and flags; absl heads the flag list with the defining module's path.
    assert result.stdout.split("flags:")[0] == command.stdout.split("flags:")[0]
    assert re.findall(r"--\w+:", result.stdout) == re.findall(r"--\w+:", command.stdout)
    bad = subprocess.run([sys.executable, script, "--no_such_flag=1"], cwd=REPO,
                         env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: --no_such_flag: unknown flag" in bad.stderr

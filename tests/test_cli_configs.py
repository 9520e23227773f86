"""Configs by name and flagfile includes (nac_tf.cli.configs), and nac-train --config."""
import os
import subprocess
import sys

import pytest

from nac_tf.cli.configs import (available_configs, config_path, configs_dir,
                                expand_config_args)
from nac_tf.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, *lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def configs(tmp_path):
    """A configs folder: base <- middle <- top (top also includes a sub-folder's file)."""
    folder = tmp_path / "configs"
    (folder / "parts").mkdir(parents=True)
    _write(folder / "base.flags", "# the base", "--method=nac", "--batch_size=8",
           "--code_dim=16")
    _write(folder / "middle.flags", "// absl's other comment", "", "   ",
           "--flagfile=base.flags", "--batch_size=16", "--flagfile=parts/extra.flags")
    _write(folder / "parts" / "extra.flags", "--flip=false")
    _write(folder / "top.flags", "--method=simclr", "--flagfile=middle.flags",
           "--code_dim=32")
    return str(folder)


def test_configs_are_found_beside_the_package():
    folder = configs_dir()
    assert folder is not None
    assert os.path.samefile(folder, os.path.join(REPO, "configs"))
    names = available_configs()
    assert "quickstart" in names and "cifar10_nac_mq" in names
    assert config_path("quickstart") == os.path.join(folder, "quickstart.flags")
    assert config_path("quickstart.flags") == config_path("quickstart")


def test_nested_includes_are_inlined_in_order(configs):
    argv = expand_config_args(["prog", "--seed=1", "--config=top", "--seed=2"],
                              directory=configs)
    assert argv == ["prog", "--seed=1",
                    "--method=simclr",  # top, before its include: overridden by base's
                    "--method=nac", "--batch_size=8", "--code_dim=16",  # base
                    "--batch_size=16", "--flip=false",  # middle, then parts/extra
                    "--code_dim=32",  # top, after the include
                    "--seed=2"]


def test_later_flags_override_the_config(configs, tmp_path):
    from nac_tf.cli.train import config_from_args

    path = os.path.join(configs, "top.flags")
    parsed = config_from_args([f"--flagfile={path}", "--code_dim=64",
                               f"--model_dir={tmp_path}"])
    assert (parsed.method, parsed.batch_size, parsed.code_dim, parsed.flip) == \
        ("nac", 16, 64, False)
    # Flags before the config are overridden by it.
    parsed = config_from_args(["--code_dim=64", f"--flagfile={path}"])
    assert parsed.code_dim == 32
    # A shipped config including another (cifar10_nac_mq includes cifar10_nac.flags).
    parsed = config_from_args(["--config=cifar10_nac_mq", "--queue_size=4000",
                               "--batch_size=1000"])
    assert (parsed.method, parsed.encoder, parsed.flip_prob, parsed.queue_size) == \
        ("nac_mq", "resnet50", 0.1, 4000)


def test_two_token_forms_and_the_double_dash(configs):
    argv = expand_config_args(["prog", "--config", "middle", "--", "--config=top"],
                              directory=configs)
    assert argv[1:4] == ["--method=nac", "--batch_size=8", "--code_dim=16"]
    assert argv[-2:] == ["--", "--config=top"]  # after --: untouched


def test_without_configs_the_config_flag_is_left_to_absl(configs):
    argv = ["prog", "--config=top", f"--flagfile={os.path.join(configs, 'parts/extra.flags')}"]
    assert expand_config_args(argv, allow_config=False, directory=configs) == \
        ["prog", "--config=top", "--flip=false"]


def test_unknown_config_lists_the_available_ones(configs):
    with pytest.raises(ConfigError) as error:
        expand_config_args(["prog", "--config=bottom"], directory=configs)
    assert error.value.field == "config"
    assert str(error.value) == "config: unknown config 'bottom'; available: base, middle, top"
    with pytest.raises(ConfigError, match="is a path, not a config name"):
        expand_config_args(["prog", "--config=configs/top.flags"], directory=configs)
    with pytest.raises(ConfigError, match="config: needs a value"):
        expand_config_args(["prog", "--config"], directory=configs)


def test_missing_include_is_named(configs, tmp_path):
    including = _write(tmp_path / "configs" / "broken.flags", "--method=nac",
                       "--flagfile=nowhere.flags")
    with pytest.raises(ConfigError) as error:
        expand_config_args(["prog", "--config=broken"], directory=configs)
    message = str(error.value)
    assert error.value.field == "flagfile"
    assert message.startswith(f"flagfile: 'nowhere.flags', included from {including}, "
                              "is not a file")
    assert os.path.join(configs, "nowhere.flags") in message
    with pytest.raises(ConfigError, match=r"flagfile: '/no/such\.flags' is not a file"):
        expand_config_args(["prog", "--flagfile=/no/such.flags"], directory=configs)


def test_include_cycles_are_rejected(tmp_path):
    folder = tmp_path / "cycle"
    folder.mkdir()
    _write(folder / "a.flags", "--seed=1", "--flagfile=b.flags")
    _write(folder / "b.flags", "--config=c")  # configs include each other by name too
    _write(folder / "c.flags", "--flagfile=a.flags")
    _write(folder / "self.flags", "--flagfile=self.flags")
    with pytest.raises(ConfigError) as error:
        expand_config_args(["prog", "--config=a"], directory=str(folder))
    real = os.path.realpath(str(folder))
    cycle = " -> ".join(os.path.join(real, f"{name}.flags") for name in "abca")
    assert error.value.field == "flagfile" and "include cycle (in " in str(error.value)
    assert str(error.value).endswith(cycle)
    with pytest.raises(ConfigError, match="include cycle"):
        expand_config_args(["prog", "--config=self"], directory=str(folder))
    # Including one file twice without a cycle is fine.
    _write(folder / "twice.flags", "--flagfile=d.flags", "--flagfile=d.flags")
    _write(folder / "d.flags", "--seed=4")
    assert expand_config_args(["prog", "--config=twice"], directory=str(folder)) == \
        ["prog", "--seed=4", "--seed=4"]


def test_includes_fall_back_to_the_working_directory(tmp_path, monkeypatch):
    """absl's rule (paths relative to the working directory) still works inside files."""
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "shared.flags", "--seed=5")
    including = _write(tmp_path / "sub" / "run.flags", "--flagfile=shared.flags")
    monkeypatch.chdir(tmp_path)
    assert expand_config_args(["prog", f"--flagfile={including}"]) == ["prog", "--seed=5"]


def _train(*args, cwd):
    # From a directory outside the checkout: this checkout's nac_tf via PYTHONPATH, as an
    # installed package would be found.
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
               KERAS_BACKEND="tensorflow")
    return subprocess.run([sys.executable, "-m", "nac_tf.cli.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_line_config_errors_exit_2(tmp_path):
    result = _train("--config=nope", cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: --config: unknown config 'nope'; available: ")
    assert "quickstart" in result.stderr and "Traceback" not in result.stderr
    result = _train("--config=quickstart", "--flip_prob=0.7", f"--model_dir={tmp_path}/run",
                    cwd=str(tmp_path))
    assert result.returncode == 2
    assert "error: --flip_prob: 0.7 is outside the accepted range" in result.stderr


@pytest.mark.slow
def test_config_runs_from_any_directory(tmp_path):
    result = _train("--config=quickstart", "--train_steps=2", "--evaluate=false",
                    "--checkpoint_every_steps=2", "--model_dir=run", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"steps": 2' in result.stdout
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "checkpoint")
    import json

    with open(tmp_path / "run" / "flags.json") as f:
        recorded = json.load(f)
    assert (recorded["encoder"], recorded["code_dim"], recorded["train_steps"]) == \
        ("small_cnn", 64, 2)

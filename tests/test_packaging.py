"""Packaging: every package is listed, the configs and console scripts reach the wheel, and an
installed copy finds its configs from any directory."""
import configparser
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"nac-train": "nac_tf.cli.train", "nac-export": "nac_tf.cli.export",
           "nac-linear-eval": "nac_tf.cli.linear_eval",
           "nac-hash-retrieval": "nac_tf.cli.hash_retrieval",
           "nac-hash-index": "nac_tf.cli.hash_index", "nac-hash-search": "nac_tf.cli.hash_search"}


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    return parser


def _listed(value):
    return [line.strip() for line in value.strip().splitlines() if line.strip()]


def test_setup_cfg_lists_every_package_and_maps_the_configs():
    options = _setup_cfg()["options"]
    on_disk = {os.path.relpath(root, REPO).replace(os.sep, ".")
               for root, _, files in os.walk(os.path.join(REPO, "nac_tf"))
               if "__init__.py" in files}
    assert set(_listed(options["packages"])) == on_disk | {"nac_tf.configs"}
    mapping = dict(line.replace(" ", "").split("=") for line in _listed(options["package_dir"]))
    assert mapping == {"nac_tf.configs": "configs"}
    assert _setup_cfg()["options.package_data"]["nac_tf.configs"].strip() == "*.flags"
    # One copy of the configs: the top-level folder, none inside the package.
    assert not os.path.exists(os.path.join(REPO, "nac_tf", "configs"))


def test_console_scripts_point_at_the_cli_modules():
    scripts = dict(line.replace(" ", "").split("=") for line in
                   _listed(_setup_cfg()["options.entry_points"]["console_scripts"]))
    assert scripts == {name: f"{module}:run" for name, module in SCRIPTS.items()}
    for module in SCRIPTS.values():
        assert callable(importlib.import_module(module).run)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the package's sources (the checkout stays clean)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(REPO, name), source / name)
    for name in ("nac_tf", "configs"):
        shutil.copytree(os.path.join(REPO, name), source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(tmp / "dist"), str(source)],
        capture_output=True, text=True, timeout=300)
    if result.returncode and "No module named" in result.stderr:
        pytest.skip(f"cannot build without isolation here: {result.stderr[-500:]}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (path,) = (tmp / "dist").glob("nac_tf-*.whl")
    return str(path)


@pytest.mark.slow
def test_wheel_carries_the_configs_and_the_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    configs = sorted(name for name in os.listdir(os.path.join(REPO, "configs"))
                     if name.endswith(".flags"))
    assert {f"nac_tf/configs/{name}" for name in configs} <= names
    assert "nac_tf/cli/train.py" in names and "nac_tf/train.py" in names
    assert not any(name.startswith(("configs/", "tests/", "benchmarks/")) for name in names)
    for script, module in SCRIPTS.items():
        assert f"{script} = {module}:run" in scripts


@pytest.mark.slow
def test_installed_package_finds_its_configs_from_any_directory(wheel, tmp_path):
    target = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                             "--target", str(target), wheel],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    check = (
        "import nac_tf; from nac_tf.cli.configs import configs_dir, expand_config_args; "
        "print(nac_tf.__file__); print(configs_dir()); "
        "print(' '.join(expand_config_args(['nac-train', '--config=cifar10_nac_mq'])))")
    result = subprocess.run([sys.executable, "-c", check], cwd=str(empty),
                            env=dict(os.environ, PYTHONPATH=str(target)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    package, folder, argv = result.stdout.splitlines()
    assert package == str(target / "nac_tf" / "__init__.py")
    assert folder == str(target / "nac_tf" / "configs")
    # cifar10_nac_mq.flags includes cifar10_nac.flags, found beside it inside the package.
    assert "--encoder=resnet50" in argv.split() and argv.split()[-1] == \
        "--mq_negatives=batch_in_queue"

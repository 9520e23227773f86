"""The run state that long benchmark runs keep under results/ (benchmarks/experiments.py
`RunRegistry.save_state` / `restore_state`), so a fresh clone continues them."""
import json
import os
import shutil
import sys

import tensorflow as tf

from nac_tf import run_directory
from nac_tf.config import PretrainConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import experiments  # noqa: E402


def _run_directory(model_dir, steps):
    """A run directory's files: its JSON files, TensorBoard, a checkpoint per step."""
    os.makedirs(os.path.join(model_dir, "tensorboard"))
    for name, payload in (("flags.json", {"model_dir": model_dir, "data_dir": "/old/data"}),
                          ("trajectory.json", [{"step": steps[-1]}])):
        with open(os.path.join(model_dir, name), "w") as f:
            json.dump(payload, f)
    for step in steps:
        tf.train.Checkpoint(v=tf.Variable([float(step)])).write(
            os.path.join(model_dir, run_directory.CHECKPOINT_DIR, f"ckpt-{step}"))


def test_saved_state_continues_the_run_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(experiments, "RUNS_DIR", str(tmp_path / "runs"))
    registry = experiments.RunRegistry("long")
    _run_directory(registry.model_dir("nac"), steps=(3, 6))

    assert registry.save_state("nac") == 6
    state = registry.state_dir("nac")
    # The JSON files and the newest checkpoint only: no older checkpoint, no TensorBoard.
    assert {"flags.json", "trajectory.json"} == set(os.listdir(state)) - {"checkpoints"}
    assert set(run_directory.checkpoint_steps(state)) == {6}
    assert registry.save_state("missing") is None

    # A fresh clone: no run directory, this machine's paths.
    shutil.rmtree(registry.model_dir("nac"))
    monkeypatch.setattr(experiments, "RUNS_DIR", str(tmp_path / "elsewhere"))
    config = PretrainConfig(model_dir=registry.model_dir("nac"),
                            data_dir=str(tmp_path))
    registry.restore_state("nac", config)
    flags = run_directory.read_run_json(config.model_dir, run_directory.FLAGS_FILE)
    assert (flags["model_dir"], flags["data_dir"]) == (config.model_dir, config.data_dir)
    prefix = run_directory.intact_checkpoint(config.model_dir)
    assert prefix.endswith("ckpt-6")
    assert tf.train.load_checkpoint(prefix).get_tensor(
        "v/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [6.0]
    # A run directory that has checkpoints already is left alone.
    os.remove(os.path.join(config.model_dir, "trajectory.json"))
    registry.restore_state("nac", config)
    assert not os.path.exists(os.path.join(config.model_dir, "trajectory.json"))

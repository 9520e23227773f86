"""The run state that long benchmark runs keep under results/ (benchmarks/experiments.py
`RunRegistry.save_state` / `restore_state`), so a fresh clone continues them."""
import os
import shutil
import sys

from nac_tf import run_directory
from nac_tf.training import pretrain

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import experiments  # noqa: E402


def test_saved_state_continues_the_run_elsewhere(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(experiments, "RUNS_DIR", str(tmp_path / "runs"))
    registry = experiments.RunRegistry("long")
    shutil.copytree(tiny_run.model_dir, registry.model_dir("nac"))

    assert registry.save_state("nac") == tiny_run.config.train_steps
    state = registry.state_dir("nac")
    # The JSON files and the newest checkpoint only: no older checkpoint, no TensorBoard.
    assert {"flags.json", "results.json", "input_statistics.json"} <= set(os.listdir(state))
    assert "tensorboard" not in os.listdir(state)
    assert set(run_directory.checkpoint_steps(state)) == {tiny_run.config.train_steps}
    assert registry.save_state("missing") is None

    # A fresh clone: no run directory, the state at another place.
    shutil.rmtree(registry.model_dir("nac"))
    monkeypatch.setattr(experiments, "RUNS_DIR", str(tmp_path / "elsewhere"))
    config = tiny_run.config.replace(model_dir=registry.model_dir("nac"))
    registry.restore_state("nac", config)
    flags = run_directory.read_run_json(config.model_dir, run_directory.FLAGS_FILE)
    assert flags["model_dir"] == config.model_dir
    assert run_directory.intact_checkpoint(config.model_dir).endswith(
        f"ckpt-{tiny_run.config.train_steps}")
    # The trainer takes the directory as the finished run it is.
    results = pretrain(config)
    assert results["steps"] == tiny_run.config.train_steps
    assert results["knn_top1"] == tiny_run.results["knn_top1"]
    # A run directory that has checkpoints already is left alone.
    os.remove(os.path.join(config.model_dir, "results.json"))
    registry.restore_state("nac", config)
    assert not os.path.exists(os.path.join(config.model_dir, "results.json"))

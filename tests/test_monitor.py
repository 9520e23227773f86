"""Evaluation during training (--eval_every_steps): the monitor, the trajectory, resume."""
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from nac_tf.config import PretrainConfig
from nac_tf.data.splits import class_balanced_retrieval_split
from nac_tf.data.sources import load_digits_source, retrieval_source
from nac_tf.evaluation import retrieval
from nac_tf.evaluation.monitor import TrainingMonitor, query_subset, validation_split
from nac_tf.evaluation.evaluators import embed
from nac_tf.evaluation.report import EvaluationConfig, evaluate_model
from nac_tf.export import ExportedModel, build_export_module
from nac_tf import training
from nac_tf.methods.from_config import method_from_config
from nac_tf.run_directory import (TRAJECTORY_FILE, read_run_config, read_trajectory,
                                  restore_pretrained_method)
from nac_tf.training import TrainingInterrupted, pretrain


def _tiny(tmp_path, **changes):
    # The quickstart's shape (digits, small_cnn, 8 px), a few steps, no linear probe.
    fields = dict(method="nac", dataset="digits", image_size=8, encoder="small_cnn",
                  batch_size=32, train_steps=6, learning_rate=0.5, warmup_epochs=0.2,
                  code_dim=16, head_hidden_dim=32, crop_area_min=0.5, flip=False,
                  jitter_prob=0.0, grayscale_prob=0.0, knn_k=10, checkpoint_every_steps=3,
                  log_every_steps=2, linear_eval_epochs=0, eval_every_steps=2,
                  model_dir=str(tmp_path / "run"))
    fields.update(changes)
    return PretrainConfig(**fields)


def _digits_retrieval_source(seed=0):
    """Digits with a retrieval protocol: 100 queries, 300 training images, the other 1 697
    images (training images included) the database."""
    digits = load_digits_source(image_size=8, seed=seed)
    pool = np.concatenate([digits.train_images, digits.test_images])
    labels = np.concatenate([digits.train_labels, digits.test_labels])
    split = class_balanced_retrieval_split(labels, queries_per_class=10, train_per_class=30,
                                           seed=seed)
    return retrieval_source("digits", pool, labels, split, num_classes=10)


def _read(path):
    with open(path) as f:
        return json.load(f)


def _tensorboard_steps(run_dir, tag):
    steps = []
    directory = os.path.join(run_dir, "tensorboard")
    for name in sorted(os.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


def test_query_subset_is_fixed_by_the_seed():
    first = query_subset(100, 30, seed=0)
    assert len(first) == 30 and len(set(first)) == 30 and np.all(np.diff(first) > 0)
    assert first.min() >= 0 and first.max() < 100
    np.testing.assert_array_equal(first, query_subset(100, 30, seed=0))
    assert not np.array_equal(first, query_subset(100, 30, seed=1))
    np.testing.assert_array_equal(query_subset(100, 1000, seed=0), np.arange(100))
    with pytest.raises(ValueError, match="num_queries"):
        query_subset(100, 0, seed=0)


def test_trajectory_has_every_eval_step_and_matches_the_final_evaluation(tiny_run):
    # The session's shared run (tests/conftest.py). steps_per_loop=5 divides neither the
    # evaluation (2) nor the checkpoint (3) interval: the loop must still stop at 2, 3, 4, 6.
    config, results, messages = tiny_run.config, tiny_run.results, tiny_run.messages
    assert (config.train_steps, config.eval_every_steps, config.checkpoint_every_steps,
            config.steps_per_loop) == (6, 2, 3, 5)
    run = config.model_dir
    trajectory = results["trajectory"]
    assert [entry["step"] for entry in trajectory] == [2, 4, 6]
    assert _read(os.path.join(run, TRAJECTORY_FILE)) == trajectory
    assert _read(os.path.join(run, "results.json"))["trajectory"] == trajectory
    for entry in trajectory:
        assert 0.0 <= entry["knn_top1"] <= 1.0 and "map_all" not in entry  # no protocol
        assert entry["eval_seconds"] >= 0.0 and np.isfinite(entry["loss"])
        assert 0.0 <= entry["learning_rate"] and np.isfinite(entry["mi_bound"])
        assert 0.0 <= entry["code_norm_sq"] <= config.code_dim
    # Same weights (the last step) and the same kNN as the final evaluation.
    assert trajectory[-1]["knn_top1"] == results["knn_top1"]
    assert 0.0 <= results["final_metrics"]["code_norm_sq"] <= config.code_dim
    assert sum("eval at step" in m and "knn_top1" in m for m in messages) == 3
    assert _tensorboard_steps(run, "eval/knn_top1") == [2, 4, 6]
    checkpoints = tf.train.get_checkpoint_state(os.path.join(run, "checkpoints"))
    assert [int(p.rsplit("-", 1)[1]) for p in checkpoints.all_model_checkpoint_paths] == [3, 6]


def test_map_of_the_query_subset_is_the_retrieval_metric(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "load_source", lambda *args, **kwargs:
                        _digits_retrieval_source())
    config = _tiny(tmp_path, train_steps=4, eval_every_steps=4, checkpoint_every_steps=4,
                   eval_num_queries=30)
    results = pretrain(config)
    (entry,) = results["trajectory"]
    assert entry["step"] == 4 and 0.0 <= entry["map_all"] <= 1.0
    assert 0.0 <= entry["knn_top1"] <= 1.0
    assert _tensorboard_steps(config.model_dir, "eval/map_all") == [4]

    # The same weights, restored from the last checkpoint, through the SavedModel's path.
    _, method = restore_pretrained_method(config.model_dir)
    _, statistics = read_run_config(config.model_dir)
    model = ExportedModel.from_module(build_export_module(method, statistics["image_size"],
                                                          statistics))
    source = _digits_retrieval_source()
    arrays = source.retrieval
    subset = query_subset(arrays.num_queries, 30, seed=config.seed)
    queries = embed(model, arrays.query_images[subset], output="hash_codes")
    database = embed(model, arrays.database_images, output="hash_codes")
    assert entry["map_all"] == retrieval.mean_average_precision(
        queries, database, arrays.query_labels[subset], arrays.database_labels, packed=True)
    # With every query, the monitor gives the final evaluation's numbers.
    everything = TrainingMonitor(source, knn_k=config.knn_k, num_queries=10 ** 6,
                                 seed=config.seed).evaluate(model)
    assert everything["map_all"] == results["map_all"]
    assert everything["knn_top1"] == results["knn_top1"] == entry["knn_top1"]


def test_monitor_computes_the_final_evaluation_features_and_codes(tmp_path):
    # The monitor's numbers equal evaluate_model's on the same (randomly initialised)
    # networks: the same inference path, kNN and mAP.
    config = _tiny(tmp_path)
    source = _digits_retrieval_source()
    statistics = {"image_size": 8, "mean": [0.5] * 3, "std": [0.25] * 3}
    method = method_from_config(config, statistics)
    model = ExportedModel.from_module(build_export_module(method, 8, statistics))
    monitor = TrainingMonitor(source, knn_k=10, num_queries=10 ** 6)
    assert monitor.metric_names == ("knn_top1", "map_all")
    report = evaluate_model(model, source, EvaluationConfig(knn_k=10, linear=None))
    assert monitor.evaluate(model) == {"knn_top1": report["knn_top1"],
                                       "map_all": report["map_all"]}


def test_validation_queries_search_the_rest_of_the_database(tmp_path):
    # eval_queries=validation: seeded database images that are not pretraining images query
    # the rest of the database; the protocol's queries are never used.
    source = _digits_retrieval_source()
    arrays = source.retrieval
    queries, rest = validation_split(arrays, 40, seed=3)
    assert len(queries) == 40 and np.all(np.diff(queries) > 0)
    assert queries.min() >= arrays.num_train and queries.max() < len(arrays.database_images)
    assert sorted(np.concatenate([queries, rest])) == list(range(len(arrays.database_images)))
    # The benchmarks' hashing table chose its learning rates with this rule since before it
    # moved into the package: the same rows.
    rng = np.random.default_rng(np.random.SeedSequence([3, 0x76616C]))
    np.testing.assert_array_equal(queries, np.sort(rng.choice(
        np.arange(arrays.num_train, len(arrays.database_images)), 40, replace=False)))
    assert not np.array_equal(queries, validation_split(arrays, 40, seed=4)[0])

    config = _tiny(tmp_path)
    statistics = {"image_size": 8, "mean": [0.5] * 3, "std": [0.25] * 3}
    model = ExportedModel.from_module(build_export_module(
        method_from_config(config, statistics), 8, statistics))
    monitor = TrainingMonitor(source, knn_k=0, num_queries=40, seed=3, queries="validation")
    assert monitor.metric_names == ("map_all",)
    codes = embed(model, arrays.database_images, output="hash_codes")
    expected = retrieval.mean_average_precision(
        codes[queries], codes[rest], arrays.database_labels[queries],
        arrays.database_labels[rest], packed=True)
    assert monitor.evaluate(model) == {"map_all": expected}
    # ... which is not the protocol's number on the same networks.
    protocol = TrainingMonitor(source, knn_k=0, num_queries=40, seed=3).evaluate(model)
    assert protocol["map_all"] != expected

    with pytest.raises(ValueError, match="eval_queries='validation'.*retrieval protocol"):
        TrainingMonitor(load_digits_source(image_size=8), queries="validation")
    with pytest.raises(ValueError, match="queries must be one of protocol, validation"):
        TrainingMonitor(source, queries="test")
    with pytest.raises(ValueError, match="num_queries must be an integer in"):
        validation_split(arrays, len(arrays.database_images), seed=0)


def test_trajectory_survives_a_resume(tmp_path, caplog):
    config = _tiny(tmp_path, train_steps=8, evaluate=False)
    polls = []

    def stop_at_step_5():
        polls.append(1)
        return len(polls) > 5  # polled once per step (steps_per_loop=1): stops at step 5

    with pytest.raises(TrainingInterrupted) as stopped:
        pretrain(config, stop_requested=stop_at_step_5)
    assert stopped.value.step == 5
    first = read_trajectory(config.model_dir)
    assert [entry["step"] for entry in first] == [2, 4]
    # An evaluation after the last checkpoint (5) of a session that died: dropped on resume.
    path = os.path.join(config.model_dir, TRAJECTORY_FILE)
    with open(path, "w") as f:
        json.dump(first + [dict(first[-1], step=6, knn_top1=-1.0)], f)

    caplog.set_level(logging.INFO, logger="nac_tf")
    results = pretrain(config)
    assert any("Resumed from" in m and "at step 5" in m for m in caplog.messages)
    trajectory = results["trajectory"]
    assert [entry["step"] for entry in trajectory] == [2, 4, 6, 8]
    assert trajectory[:2] == first  # the first session's evaluations are kept as they were
    assert all(0.0 <= entry["knn_top1"] <= 1.0 for entry in trajectory)
    assert read_trajectory(config.model_dir) == trajectory


def test_eval_flags_reach_the_config(tmp_path):
    from absl import flags

    import nac_tf.cli.train as entry

    values = flags.FlagValues()
    entry.define_flags(values)
    values(["prog", "--eval_every_steps=300", "--eval_num_queries=50",
            "--eval_queries=validation", "--linear_eval_augment=false",
            f"--model_dir={tmp_path}"])
    config = entry.config_from_flags(values)
    assert config.eval_every_steps == 300 and config.eval_num_queries == 50
    assert config.eval_queries == "validation"
    assert not config.linear_eval_augment
    defaults = PretrainConfig()
    assert defaults.eval_every_steps == 0 and defaults.eval_num_queries == 1000
    assert defaults.eval_queries == "protocol"
    assert defaults.linear_eval_augment
    from nac_tf.config import RUN_DEFINING_FIELDS
    new = {"eval_every_steps", "eval_num_queries", "eval_queries", "linear_eval_augment"}
    assert not new & set(RUN_DEFINING_FIELDS)

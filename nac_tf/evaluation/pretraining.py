"""The evaluations a pretraining run makes, from its PretrainConfig: of the networks at
their initialisation and at the end (`evaluate_method`: `report.evaluate_model` with
`evaluation_config`), and every `eval_every_steps` during training (`TrainingEvaluation`:
the `TrainingMonitor` and the run's trajectory.json). Each evaluates the live online
networks through the export module, so these are the numbers the exported SavedModel
gives.
"""
import logging
import os
import time

import tensorflow as tf

from nac_tf.config import PretrainConfig
from nac_tf.evaluation.linear import LinearEvalConfig
from nac_tf.evaluation.mlp import MLPEvalConfig
from nac_tf.evaluation.monitor import TrainingMonitor
from nac_tf.evaluation.report import EvaluationConfig, evaluate_model
from nac_tf.export import ExportedModel, build_export_module
from nac_tf.run_directory import TRAJECTORY_FILE, path_in, read_trajectory, write_json

logger = logging.getLogger(__name__)

# The headline metrics of a run (`summary_table`; a results.json of an earlier version
# without "evaluated" was evaluated when it holds one of them).
SUMMARY_METRICS = ("knn_top1", "linear_top1", "mlp_top1", "map_all")


def evaluation_config(config: PretrainConfig):
    """The EvaluationConfig of the run's final evaluation (and of its initialisation)."""
    return EvaluationConfig(
        knn_k=config.knn_k, knn_temperature=config.knn_temperature,
        # By default the protocol's augmentation (pad-and-crop + flip of the training
        # images, afresh every epoch), as the linear-evaluation command's augment option.
        linear=LinearEvalConfig(epochs=config.linear_eval_epochs, seed=config.seed,
                                augment=config.linear_eval_augment)
        if config.linear_eval_epochs else None,
        # The MLP probe (off by default) trains on the linear probe's images.
        mlp=MLPEvalConfig(epochs=config.mlp_eval_epochs, seed=config.seed,
                          augment=config.linear_eval_augment)
        if config.mlp_eval_epochs else None)


def _exported(method, input_statistics):
    """The live online networks of `method` as the export serves them."""
    return ExportedModel.from_module(build_export_module(
        method, input_statistics["image_size"], input_statistics))


def evaluate_method(method, source, input_statistics, config: PretrainConfig, prefix=""):
    """kNN, linear probe and hash retrieval of the online networks (`evaluate_model` with
    `evaluation_config(config)`). Keys get `prefix` (e.g. "random_init_")."""
    report = evaluate_model(_exported(method, input_statistics), source,
                            evaluation_config(config))
    return {prefix + key: value for key, value in report.items()}


class TrainingEvaluation:
    """eval_every_steps on the chief: the `TrainingMonitor` over the live online networks
    and the run's trajectory (trajectory.json, rewritten atomically after every evaluation).

    On resume the trajectory is read back without the entries after the restored step
    (evaluated by a session that stopped before its next checkpoint). `monitor` is None when
    nothing is evaluated during training (then the trajectory is only carried along).
    """

    def __init__(self, monitor, model, model_dir, start_step):
        self.monitor, self.model = monitor, model
        self.path = path_in(model_dir, TRAJECTORY_FILE)
        self.entries = read_trajectory(model_dir, start_step)
        if os.path.exists(self.path) and len(self.entries) != len(read_trajectory(model_dir)):
            write_json(self.path, self.entries)

    def __call__(self, step, train_metrics, summaries):
        begin = time.time()
        values = self.monitor.evaluate(self.model)
        seconds = time.time() - begin
        entry = {**train_metrics, **values, "step": step, "eval_seconds": round(seconds, 3)}
        self.entries = [e for e in self.entries if e["step"] < step] + [entry]
        write_json(self.path, self.entries)
        with summaries.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar("eval/" + name, value)
        logger.info("eval at step %d: %s (%.2f s)", step,
                    ", ".join(f"{k} {v:.4f}" for k, v in values.items()), seconds)


def training_evaluation(config: PretrainConfig, method, source, input_statistics, start_step):
    """The chief's TrainingEvaluation of `config` (its monitor None unless
    eval_every_steps > 0 on a source held in memory with something to evaluate)."""
    monitor = model = None
    if config.eval_every_steps and not source.has_arrays:
        logger.info("eval_every_steps: %s is streamed, not held in memory; no evaluation "
                    "during training", config.dataset)
    elif config.eval_every_steps:
        monitor = TrainingMonitor(source, knn_k=config.knn_k,
                                  knn_temperature=config.knn_temperature,
                                  num_queries=config.eval_num_queries, seed=config.seed,
                                  queries=config.eval_queries)
        if not monitor.metric_names:
            logger.info("eval_every_steps: nothing to evaluate on %s (multi-label, no "
                        "retrieval protocol)", config.dataset)
            monitor = None
        else:
            # The final evaluation's inference path (export module over the live networks).
            model = _exported(method, input_statistics)
    return TrainingEvaluation(monitor, model, config.model_dir, start_step)


def summary_table(results):
    """The headline metrics, pretrained next to random initialisation, as text."""
    lines = [f"{'metric':<14}{'pretrained':>12}{'random init':>13}"]
    for name in SUMMARY_METRICS:
        if name in results:
            baseline = results.get("random_init_" + name, float("nan"))
            lines.append(f"{name:<14}{results[name]:>12.4f}{baseline:>13.4f}")
    return "\n".join(lines)

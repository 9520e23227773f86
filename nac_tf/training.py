"""The pretraining run: data, strategy, method, optimizer, checkpoints, logs, evaluation.

`pretrain(config)` is everything `python -m nac_tf.train` does after parsing flags. A run
directory holds `flags.json` (the resolved configuration), `checkpoints/` (model, optimizer,
step, momentum networks and queue; the same command resumes from the latest one),
`tensorboard/` (scalars every `log_every_steps`), and `results.json` at the end.
"""
import dataclasses
import json
import math
import os
import sys
import time

import keras
import tensorflow as tf

from nac_tf import distribute
from nac_tf.config import RUN_DEFINING_FIELDS, ConfigError, PretrainConfig, validate_config
from nac_tf.data.pipeline import make_pretrain_dataset
from nac_tf.data.sources import dataset_statistics, load_source
from nac_tf.data.views import AugmentationConfig, ViewPairAugmenter
from nac_tf.evaluation.linear import LinearEvalConfig
from nac_tf.evaluation.report import EvaluationConfig, evaluate_model
from nac_tf.export import ExportedModel, build_export_module
from nac_tf.methods import MethodConfig, build_method
from nac_tf.models import build_encoder, encoder_output_dim
from nac_tf.optim import LARS, WarmupCosineSchedule, scaled_learning_rate


INPUT_STATISTICS_FILE = "input_statistics.json"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- run directory
def prepare_run_directory(config: PretrainConfig):
    """Creates `model_dir` and writes flags.json, refusing a directory of another experiment.

    A directory whose flags.json differs in a run-defining field (RUN_DEFINING_FIELDS) holds
    a different experiment: resuming it would silently mix two runs, so it is refused unless
    `allow_flag_changes` is set.
    """
    os.makedirs(config.model_dir, exist_ok=True)
    path = os.path.join(config.model_dir, "flags.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        changed = {k: (previous.get(k), getattr(config, k)) for k in RUN_DEFINING_FIELDS
                   if previous.get(k) != getattr(config, k)}
        if changed and not config.allow_flag_changes:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ConfigError("model_dir", f"{config.model_dir!r} holds a run with different "
                              f"flags ({details}); use a new --model_dir, or pass "
                              "--allow_flag_changes to resume it with the new values")
    _write_json(path, config.to_dict())


def _write_json(path, payload):
    # Write-then-rename, so a crash never leaves a truncated file behind.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- building blocks
def resolve_stem(config, image_size):
    if config.stem != "auto":
        return config.stem
    return "cifar" if image_size <= 64 else "imagenet"


def augmentation_config(config: PretrainConfig, image_size):
    return AugmentationConfig(
        image_size=image_size, crop_area=(config.crop_area_min, 1.0), flip=config.flip,
        jitter_strength=config.jitter, jitter_prob=config.jitter_prob,
        grayscale_prob=config.grayscale_prob, blur_prob=config.blur_prob)


def method_config(config: PretrainConfig, representation_dim, num_replicas):
    return MethodConfig(
        code_dim=config.code_dim,
        head_hidden_dim=config.head_hidden_dim or representation_dim,
        head_batch_norm=config.head_batch_norm,
        head_scale_by_sqrt_dim=config.head_scale_by_sqrt_dim,
        synchronized_batch_norm=config.batch_norm == "sync" and num_replicas > 1,
        per_view_batch_norm=config.batch_norm == "per_view",
        flip_prob=config.flip_prob, queue_size=config.queue_size, momentum=config.momentum,
        l2_weight=config.l2_weight, temperature=config.temperature, seed=config.seed)


def build_pretraining_method(config: PretrainConfig, input_statistics, num_replicas=1):
    """The method of `config` (encoder, heads, momentum copies) with every variable created.

    `input_statistics` is the run's {"image_size", "mean", "std"} (`input_statistics.json`
    of the run directory): everything besides the flags that fixes the architecture, so a
    run directory alone rebuilds the model (export, evaluation tools). Call inside the
    strategy's scope when training distributed.
    """
    image_size = int(input_statistics["image_size"])
    sync_bn = config.batch_norm == "sync" and num_replicas > 1
    encoder = build_encoder(
        config.encoder, (image_size, image_size, 3), stem=resolve_stem(config, image_size),
        mean=input_statistics["mean"], std=input_statistics["std"],
        synchronized_batch_norm=sync_bn)
    method = build_method(
        config.method, encoder,
        method_config(config, encoder_output_dim(config.encoder), num_replicas))
    method.build_networks((image_size, image_size, 3))
    return method


def read_run_config(model_dir):
    """(PretrainConfig, input statistics) of a run directory written by `pretrain`."""
    paths = {name: os.path.join(model_dir, name)
             for name in ("flags.json", INPUT_STATISTICS_FILE)}
    for name, path in paths.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{model_dir!r} is not a pretraining run directory: "
                                    f"{name} is missing")
    with open(paths["flags.json"]) as f:
        flags = json.load(f)
    known = {field.name for field in dataclasses.fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in flags.items() if k in known})
    with open(paths[INPUT_STATISTICS_FILE]) as f:
        return config, json.load(f)


def restore_pretrained_method(model_dir, checkpoint=None):
    """The method of a run directory with the weights of its latest (or given) checkpoint."""
    config, statistics = read_run_config(model_dir)
    method = build_pretraining_method(config, statistics)
    path = checkpoint or tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if path is None:
        raise FileNotFoundError(f"{model_dir!r} has no checkpoint in checkpoints/")
    # expect_partial: the optimizer slots in the checkpoint are not needed here.
    tf.train.Checkpoint(method=method).restore(path).expect_partial()
    return config, method


def schedule_lengths(config, num_train):
    """(steps_per_epoch, total_steps, warmup_steps) for the global batch."""
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch < 1:
        raise ConfigError("batch_size", f"{config.batch_size} is larger than the "
                          f"{num_train} training images of --dataset={config.dataset}")
    total = config.train_steps or config.epochs * steps_per_epoch
    warmup = min(total, int(round(config.warmup_epochs * steps_per_epoch)))
    return steps_per_epoch, total, warmup


# ----------------------------------------------------------------------------- evaluation
def evaluation_config(config: PretrainConfig):
    return EvaluationConfig(
        knn_k=config.knn_k, knn_temperature=config.knn_temperature,
        linear=LinearEvalConfig(epochs=config.linear_eval_epochs, seed=config.seed)
        if config.linear_eval_epochs else None)


def evaluate_method(method, source, input_statistics, config, prefix=""):
    """kNN, linear probe and hash retrieval of the online networks (`evaluate_model`).

    The networks are wrapped in the export module, so these are the numbers the exported
    SavedModel gives. Keys get `prefix` (e.g. "random_init_").
    """
    model = ExportedModel.from_module(build_export_module(
        method, input_statistics["image_size"], input_statistics))
    report = evaluate_model(model, source, evaluation_config(config))
    return {prefix + key: value for key, value in report.items()}


# ----------------------------------------------------------------------------- the run
def pretrain(config: PretrainConfig, log=print, strategy=None):
    """Pretrains (or resumes) the run described by `config`; returns the results dict.

    `strategy`: a tf.distribute strategy to use instead of making one from
    `config.strategy`. TensorFlow's collective ops allow one MirroredStrategy per device set
    and process (a second one reuses its collective keys and aborts), so a process that
    runs several pretrainings passes the same strategy to each.
    """
    validate_config(config)
    if strategy is None:
        strategy = distribute.make_strategy(config.strategy, config.tpu)
    replicas = strategy.num_replicas_in_sync
    validate_config(config, num_replicas=replicas)
    prepare_run_directory(config)
    keras.utils.set_random_seed(config.seed)
    if config.precision != "float32":
        keras.config.set_dtype_policy(config.precision)

    source = load_source(config.dataset, data_dir=config.data_dir,
                         image_size=config.image_size or None, seed=config.seed)
    image_size = config.image_size or source.image_shape[0]
    steps_per_epoch, total_steps, warmup_steps = schedule_lengths(config, source.num_train)
    augmenter = ViewPairAugmenter(augmentation_config(config, image_size), seed=config.seed)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: make_pretrain_dataset(source, augmenter, config.batch_size, context,
                                              seed=config.seed))

    mean, std = dataset_statistics(config.dataset, source)
    input_statistics = {"image_size": image_size, "mean": list(mean), "std": list(std)}
    _write_json(os.path.join(config.model_dir, INPUT_STATISTICS_FILE), input_statistics)
    with strategy.scope():
        method = build_pretraining_method(config, input_statistics, replicas)
        peak_lr = scaled_learning_rate(config.learning_rate, config.batch_size,
                                       config.learning_rate_scaling)
        optimizer = LARS(WarmupCosineSchedule(peak_lr, total_steps, warmup_steps),
                         momentum=config.lars_momentum, weight_decay=config.weight_decay,
                         trust_coefficient=config.lars_trust_coefficient)
        if config.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        method.compile(optimizer=optimizer)
        optimizer.build(method.optimized_variables)

    checkpoint = tf.train.Checkpoint(method=method, optimizer=optimizer)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(config.model_dir, "checkpoints"),
        max_to_keep=config.keep_checkpoints)
    initial_eval_path = os.path.join(config.model_dir, "random_init_eval.json")
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"Resumed from {manager.latest_checkpoint} at step "
            f"{int(optimizer.iterations.numpy())}")
    elif config.evaluate and source.has_arrays:
        # The same networks at their random initialisation: the baseline the run must beat.
        log("Evaluating the networks at their random initialisation")
        _write_json(initial_eval_path, evaluate_method(
            method, source, input_statistics, config, prefix="random_init_"))

    log(f"{config.method} on {config.dataset}: encoder {config.encoder}, {replicas} "
        f"replica(s), global batch {config.batch_size}, {total_steps} steps "
        f"({steps_per_epoch}/epoch), peak lr {peak_lr:g}, warm-up {warmup_steps} steps")

    metrics, train_seconds = _train_loop(config, strategy, method, optimizer, dataset,
                                         manager, total_steps, log)

    results = {"method": config.method, "dataset": config.dataset,
               "encoder": config.encoder, "steps": int(optimizer.iterations.numpy()),
               "train_seconds_this_session": round(train_seconds, 2),
               "final_metrics": metrics}
    if config.evaluate and source.has_arrays:
        log("Evaluating the pretrained networks")
        results.update(evaluate_method(method, source, input_statistics, config))
        if os.path.exists(initial_eval_path):
            with open(initial_eval_path) as f:
                results.update(json.load(f))
        log(summary_table(results))
    _write_json(os.path.join(config.model_dir, "results.json"), results)
    return results


def _train_loop(config, strategy, method, optimizer, dataset, manager, total_steps, log):
    replica_step = method.train_step
    if config.jit_compile:
        replica_step = tf.function(method.train_step, jit_compile=True)

    def reduce(logs):
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in logs.items()}

    @tf.function
    def run_steps(iterator, num_steps):
        logs = strategy.run(replica_step, args=(next(iterator),))
        for _ in tf.range(num_steps - 1):
            logs = strategy.run(replica_step, args=(next(iterator),))
        return reduce(logs)

    writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "tensorboard"))
    step = int(optimizer.iterations.numpy())
    # A live bar on a terminal; in logs (CI, batch jobs) one line per checkpoint instead.
    interactive = sys.stdout.isatty()
    progbar = keras.utils.Progbar(total_steps, verbose=1 if interactive else 2,
                                  unit_name="step")
    iterator = iter(dataset)
    metrics = {}
    start = time.time()
    while step < total_steps:
        num_steps = min(config.steps_per_loop, total_steps - step)
        logs = run_steps(iterator, tf.constant(num_steps))
        step = int(optimizer.iterations.numpy())
        metrics = {k: float(v.numpy()) for k, v in logs.items()}
        if not math.isfinite(metrics["loss"]):
            raise NonFiniteLossError(
                f"loss is {metrics['loss']} at step {step}; stopped without saving, the last "
                f"good checkpoint is {manager.latest_checkpoint}. Lower --learning_rate or "
                "check the input data.")
        progbar.update(step, [(k, v) for k, v in metrics.items()])
        if step % config.log_every_steps == 0 or step == total_steps:
            with writer.as_default(step=step):
                for name, value in metrics.items():
                    tf.summary.scalar(name, value)
                tf.summary.scalar("learning_rate", _current_learning_rate(optimizer))
        if step % config.checkpoint_every_steps == 0 or step == total_steps:
            manager.save(checkpoint_number=step)
            if not interactive:
                log(f"step {step}/{total_steps}: " +
                    ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    writer.flush()
    return metrics, time.time() - start


SUMMARY_METRICS = ("knn_top1", "linear_top1", "map_all")


def summary_table(results):
    """The headline metrics, pretrained next to random initialisation, as text."""
    lines = [f"{'metric':<14}{'pretrained':>12}{'random init':>13}"]
    for name in SUMMARY_METRICS:
        if name in results:
            baseline = results.get("random_init_" + name, float("nan"))
            lines.append(f"{name:<14}{results[name]:>12.4f}{baseline:>13.4f}")
    return "\n".join(lines)


def _current_learning_rate(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(inner.learning_rate))

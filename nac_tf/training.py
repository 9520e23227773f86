"""The pretraining run: data, strategy, method, optimizer, checkpoints, logs, evaluation.

`pretrain(config)` is everything `nac-train` does after parsing flags, in four parts: setup
(data, strategy, method and optimizer from `nac_tf.recipes`), restore (the newest intact
checkpoint), the loop of steps (metrics, checkpoints, evaluations every
`eval_every_steps`) and the final evaluation (`nac_tf.evaluation.pretraining`). It
writes the run directory (`nac_tf.run_directory`): flags.json, checkpoints/, tensorboard/
(scalars and a histogram of the code pre-activations every `log_every_steps`, augmented view
pairs at the start, the final evaluation under final/...: `nac_tf.summaries`), and
results.json at the end. With `eval_every_steps`, the chief also evaluates the current
networks during training (`nac_tf.evaluation.monitor`: kNN top-1, subset Hamming mAP@all)
into TensorBoard (eval/...) and `trajectory.json`, which `results.json` repeats as
"trajectory".

Checkpoints (every `checkpoint_every_steps`, at the end, and on a stop request such as
SIGTERM) hold the model, the optimizer (slots, step, loss scale), the momentum networks and
the queue, and the input position (`input_position`: global batches consumed). Every
random draw of a run is stateless and indexed (initialisation by the seed, views and image
order by (seed, batch index), channel noise by (seed, step)), so this is the whole state:
the same command resumes from the newest intact checkpoint
(`run_directory.intact_checkpoint`) and, with `deterministic`, ends with the weights of an
uninterrupted run, bit for bit in nearly every run (rare resumes have ended a rounding
error away; tests/test_resume.py) (in-memory datasets; see `nac_tf.data.pipeline` for
streamed ones). The command of a finished run returns its stored results and writes
nothing. Messages go to the `nac_tf.training` logger (the commands print them).

Multi-worker (MultiWorkerMirroredStrategy; `distribute.worker_role`): every worker runs
this function; only the chief writes the run directory (flags.json, input statistics,
TensorBoard, checkpoints, results.json) and evaluates. The other workers save their
checkpoints to a temporary directory that is deleted again (all workers must take part in a
save), and all restore from the chief's checkpoints (a shared filesystem, as TensorFlow's
multi-worker recipe assumes).
"""
import logging
import math
import os
import sys
import time

import keras
import tensorflow as tf

from nac_tf import distribute
from nac_tf.checkpointing import CheckpointWriter, restore_training_state
from nac_tf.config import ConfigError, PretrainConfig, validate_config
from nac_tf.data.catalog import load_source
from nac_tf.data.pipeline import first_training_images, make_pretrain_dataset
from nac_tf.evaluation.pretraining import (SUMMARY_METRICS, evaluate_method, summary_table,
                                           training_evaluation)
from nac_tf.methods.from_config import method_from_config
from nac_tf.recipes import (compile_method, input_augmentation, input_statistics_of,
                            run_image_size, schedule_lengths, use_view_stage,
                            view_augmenter, with_resolved_precision)
from nac_tf.run_directory import (
    FLAGS_FILE, INPUT_STATISTICS_FILE, RANDOM_INIT_EVAL_FILE, RESULTS_FILE, TENSORBOARD_DIR,
    check_run_directory, checkpoint_step, intact_checkpoint, latest_checkpoint, path_in,
    read_json, read_run_json, write_json, write_run_settings)
from nac_tf.summaries import (PROBE_SIZE, CodeHistogram, write_final_metrics,
                              write_view_pairs)

logger = logging.getLogger(__name__)

# XLA's CPU backend compiles convolutions to its own kernels, not to the oneDNN ones
# TensorFlow's CPU kernels use (benchmarks/step_throughput.py, docs/speed.md).
CPU_XLA_WARNING = (
    "warning: jit_compile on a machine without GPU or TPU: XLA's CPU step is slower than "
    "TensorFlow's own (ResNet-50, batch 32: 0.65x; measured with "
    "benchmarks/step_throughput.py); XLA pays off on GPUs and TPUs")


class NonFiniteLossError(RuntimeError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept and
    nothing after it is written."""


class TrainingInterrupted(RuntimeError):
    """A stop was requested (e.g. SIGTERM on preemption); a checkpoint of the current step
    was written and the same command resumes from it. `.step`, `.checkpoint`."""

    def __init__(self, message, step, checkpoint):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


def pretrain(config: PretrainConfig, strategy=None, stop_requested=None):
    """Pretrains (or resumes) the run described by `config`; returns the results dict.

    `strategy`: a tf.distribute strategy to use instead of making one from
    `config.strategy`. TensorFlow's collective ops allow one MirroredStrategy per device set
    and process (a second one reuses its collective keys and aborts), so a process that
    runs several pretrainings passes the same strategy to each.
    `stop_requested`: a function polled between steps (e.g. set by a SIGTERM handler); when
    it returns True the run checkpoints its current step and raises TrainingInterrupted.
    Raises NonFiniteLossError when the loss or the weights stop being finite, and
    WorkerLostError (`nac_tf.distribute`) when a worker of a multi-worker run is lost.
    """
    validate_config(config)
    _check_init_weights_file(config)
    if strategy is None:
        # First: MultiWorkerMirroredStrategy configures the runtime's collective ops, which
        # must happen before anything else touches it.
        strategy = distribute.make_strategy(config.strategy, config.tpu)
    try:
        return _pretrain(config, strategy, stop_requested or (lambda: False))
    except tf.errors.OpError as error:
        # From the initial weights' broadcast to the last step: a lost worker aborts the
        # collectives of all the others.
        lost = distribute.worker_role(strategy).num_workers > 1 and \
            distribute.worker_lost_error(error, latest_checkpoint(config.model_dir))
        if not lost:
            raise
        raise lost from error


def _pretrain(config, strategy, stopping):
    """`pretrain` once the strategy is made: setup, restore, loop, final evaluation."""
    # ------------------------------------------------------------------------------ setup
    replicas = _check_devices(config, strategy)
    role = distribute.worker_role(strategy)
    # Nothing is written before the directory is known to take this run and its checkpoint
    # to restore: a refused or damaged directory is left exactly as it was.
    changed = check_run_directory(config)
    latest = intact_checkpoint(config.model_dir)
    keras.utils.set_random_seed(config.seed)
    run_config, config = config, with_resolved_precision(config)
    source = _load_source(config)
    image_size = run_image_size(config, source)
    steps_per_epoch, total_steps, warmup_steps = schedule_lengths(config, source.num_train)
    evaluates = config.evaluate and source.has_arrays
    finished = _finished_results(config.model_dir, latest, total_steps, evaluates)
    if finished is not None and not changed:
        logger.info("%s finished this run already (step %d); nothing to do. Its results "
                    "(%s):", config.model_dir, finished["steps"], RESULTS_FILE)
        return finished
    if latest is None and role.is_chief:
        # Once the data is known to be usable (a refused data_dir leaves no run behind to
        # refuse the corrected command); a resumed run writes its settings once restored.
        write_run_settings(run_config, changed)  # flags.json keeps precision="auto"
    input_statistics = input_statistics_of(config, source, image_size)
    # A new run starts from init_weights (when set); a resumed one from its checkpoint.
    with strategy.scope():
        method = method_from_config(config, input_statistics, replicas,
                                    load_init_weights=latest is None)
        optimizer, peak_lr = compile_method(method, config, total_steps, warmup_steps)
    # Global batches consumed. Not optimizer.iterations: a LossScaleOptimizer does not count
    # the steps it skips for non-finite gradients, which still consume a batch.
    input_position = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_position")
    checkpoint = tf.train.Checkpoint(method=method, optimizer=optimizer,
                                     input_position=input_position)

    # ---------------------------------------------------------------------------- restore
    if latest:
        restore_training_state(checkpoint, latest, input_position, optimizer)
        logger.info("Resumed from %s at step %d", latest, int(optimizer.iterations.numpy()))
        if role.is_chief:
            write_run_settings(run_config, changed, int(optimizer.iterations.numpy()))
    if role.is_chief:
        write_json(path_in(config.model_dir, INPUT_STATISTICS_FILE), input_statistics)
    writer = CheckpointWriter(checkpoint, config.model_dir, config.keep_checkpoints, role,
                              latest)
    start_step = int(optimizer.iterations.numpy())
    initial_eval_path = path_in(config.model_dir, RANDOM_INIT_EVAL_FILE)
    if evaluates and role.is_chief and start_step == 0 and \
            not os.path.exists(initial_eval_path) and not stopping():
        # The same networks at their initialisation: the baseline to beat (with
        # init_weights, the file's encoder under random heads; keys stay random_init_).
        logger.info("Evaluating the networks at their initialisation%s",
                    " (encoder from init_weights)" if config.init_weights else " (random)")
        write_json(initial_eval_path, evaluate_method(
            method, source, input_statistics, config, prefix="random_init_"))
    evaluation = training_evaluation(config, method, source, input_statistics,
                                     start_step) if role.is_chief else None
    augmenter = view_augmenter(config, image_size)
    use_view_stage(config, method, augmenter)
    start_batch = int(input_position.numpy())
    dataset = strategy.distribute_datasets_from_function(
        lambda context: make_pretrain_dataset(
            source, input_augmentation(config, augmenter), config.batch_size, context,
            seed=config.seed, start_batch=start_batch))
    summaries = _summary_writer(config, role)
    code_histogram = None
    if role.is_chief:
        code_histogram = CodeHistogram(method, image_size,
                                       first_training_images(source, PROBE_SIZE))
        if start_step == 0:
            # A new run: what it starts from (resumed runs wrote these already).
            with summaries.as_default(step=0):
                # The whole augmenter: with augment_on="device" too, these are the views
                # the step makes (the same numbers, tests/test_data.py).
                write_view_pairs(source, augmenter, config.batch_size, config.seed)
                code_histogram.write()

    # ------------------------------------------------------------------------------- loop
    logger.info("%s on %s: encoder %s, %d replica(s), global batch %d, %d steps (%d/epoch), "
                "%s, peak lr %g, warm-up %d steps, %s", config.method, config.dataset,
                config.encoder, replicas, config.batch_size, total_steps, steps_per_epoch,
                config.optimizer, peak_lr, warmup_steps, config.lr_schedule)
    metrics, train_seconds = _train_loop(
        config, strategy, method, optimizer, dataset, writer, input_position,
        total_steps, stopping, summaries, code_histogram,
        # Every worker stops at the evaluation steps; only the chief evaluates.
        eval_every_steps=config.eval_every_steps if source.has_arrays else 0,
        on_eval=evaluation if evaluation is not None and evaluation.monitor else None)

    # --------------------------------------------------------------- results, final evaluation
    results_path = path_in(config.model_dir, RESULTS_FILE)
    if not metrics and os.path.exists(results_path):
        # Nothing trained in this session (it resumed at the last step, e.g. to evaluate):
        # the last step's metrics are those the earlier session recorded.
        metrics = read_run_json(config.model_dir, RESULTS_FILE).get("final_metrics", {})
    results = {"method": config.method, "dataset": config.dataset,
               "encoder": config.encoder, "steps": int(optimizer.iterations.numpy()),
               "total_steps": total_steps, "evaluated": False,
               "train_seconds_this_session": round(train_seconds, 2),
               "num_skipped_images": source.num_skipped,
               "final_metrics": metrics}
    if config.init_weights:
        results["init_weights"] = config.init_weights
    if not role.is_chief:
        return results
    if evaluation.monitor is not None or evaluation.entries:
        results["trajectory"] = evaluation.entries
    # Written before the final evaluation too, so that a session that dies in it keeps the
    # training's results and the same command only evaluates.
    write_json(results_path, results)
    if evaluates:
        if stopping():
            raise TrainingInterrupted(
                "stop requested after training, before the final evaluation; run the same "
                "command again to evaluate", results["steps"], writer.latest)
        logger.info("Evaluating the pretrained networks")
        results.update(evaluate_method(method, source, input_statistics, config))
        if os.path.exists(initial_eval_path):
            results.update(read_json(initial_eval_path))
        logger.info("%s", summary_table(results))
        results["evaluated"] = True
        with summaries.as_default(step=results["steps"]):
            write_final_metrics(results)
        summaries.flush()
        write_json(results_path, results)
    return results


def _check_devices(config, strategy):
    """The number of replicas, once `config` is known to run on them (op determinism
    switched on when asked)."""
    if config.deterministic:
        # Process-wide: kernels with a nondeterministic implementation (GPU atomics, some
        # cuDNN algorithms) switch to deterministic ones or raise.
        tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    validate_config(config, num_replicas=replicas)
    cpu_only = not tf.config.list_logical_devices("GPU") and \
        not tf.config.list_logical_devices("TPU")
    if config.jit_compile and replicas > 1 and cpu_only:
        # XLA-compiled replica steps over several CPU devices fail in TF 2.21 ("Trying to
        # access resource .../replica_1 located in device CPU:1 from device CPU:0").
        raise ConfigError("jit_compile", f"XLA cannot compile the step of {replicas} CPU "
                          "replicas; turn jit_compile off or use a single CPU device")
    if config.jit_compile and cpu_only:
        logger.warning("%s", CPU_XLA_WARNING)
    return replicas


def _check_init_weights_file(config: PretrainConfig):
    """A new run with init_weights needs the file (a resumed one restores its checkpoint):
    checked before anything is built or written."""
    if config.init_weights and latest_checkpoint(config.model_dir) is None and \
            not os.path.isfile(os.path.expanduser(config.init_weights)):
        raise ConfigError("init_weights", f"{config.init_weights!r} does not exist or is not "
                          "a file (a new run loads the encoder's weights from it)")


def _load_source(config):
    """The run's ImageSource; a loader's complaint about the data becomes a ConfigError
    naming data_dir (the command line prints it without a traceback)."""
    try:
        source = load_source(config.dataset, data_dir=config.data_dir,
                             image_size=config.image_size or None, seed=config.seed,
                             on_corrupt=config.on_corrupt)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError("data_dir", str(error)) from error
    if source.num_skipped:
        logger.info("%d image file(s) in %s could not be decoded and were skipped "
                    "(on_corrupt='skip'; on_corrupt='raise' stops at the first one)",
                    source.num_skipped, config.data_dir)
    return source


def _finished_results(model_dir, latest, total_steps, evaluates):
    """The stored results (results.json) of a run in `model_dir` that has done all that a
    run of `total_steps` steps asks, evaluation included when `evaluates`: written at the
    step of its newest intact checkpoint `latest`, that step being `total_steps`. Else
    None (there is training or evaluation left to do, or no flags.json to say that these
    results are of this run's settings)."""
    if latest is None or not all(os.path.exists(path_in(model_dir, name))
                                 for name in (RESULTS_FILE, FLAGS_FILE)):
        return None
    results = read_run_json(model_dir, RESULTS_FILE)
    done = results.get("steps") == checkpoint_step(latest) == total_steps
    # Results of earlier versions have no "evaluated": their metrics tell.
    evaluated = results.get("evaluated", any(name in results for name in SUMMARY_METRICS))
    return results if done and (evaluated or not evaluates) else None


def _all_finite(variables):
    """Whether every floating-point variable is finite (checked before each save, so that no
    checkpoint ever holds the NaN or inf weights of a step whose loss was still finite)."""
    values = [tf.convert_to_tensor(v) for v in variables]
    checks = [tf.reduce_all(tf.math.is_finite(v)) for v in values if v.dtype.is_floating]
    return bool(tf.reduce_all(tf.stack(checks)).numpy()) if checks else True


def _summary_writer(config, role):
    """The run's TensorBoard writer (tensorboard/) on the chief, a no-op one elsewhere."""
    if role.is_chief:
        return tf.summary.create_file_writer(path_in(config.model_dir, TENSORBOARD_DIR))
    return tf.summary.create_noop_writer()


def step_loop(strategy, method, jit_compile=False):
    """The trainer's step function: `run_steps(iterator, num_steps)` runs `num_steps`
    optimizer steps of `method` on batches of the distributed `iterator` in one tf.function
    (a graph loop, so the host's per-step overhead is paid once per call) and returns the
    last step's logs averaged over replicas. `jit_compile` XLA-compiles the replica step.
    benchmarks/step_throughput.py times exactly this function."""
    replica_step = method.train_step
    if jit_compile:
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

    return run_steps


def _train_loop(config, strategy, method, optimizer, dataset, writer, input_position,
                total_steps, stop_requested, summaries, code_histogram=None,
                eval_every_steps=0, on_eval=None):
    """Runs the steps up to `total_steps`; (last metrics, seconds spent training).

    Every `log_every_steps` the step's metrics and the learning rate go to `summaries`, and
    `code_histogram` (a CodeHistogram, or None) writes its histogram.
    `on_eval(step, metrics, summaries)` runs every `eval_every_steps` steps (the loop stops
    there); its time is not counted as training time.
    """
    role = writer.role
    run_steps = step_loop(strategy, method, config.jit_compile)

    step = int(optimizer.iterations.numpy())
    saved_step = step if writer.latest else None
    # A live bar on a terminal; in logs (CI, batch jobs) one line per checkpoint instead.
    interactive = sys.stdout.isatty()
    progbar = keras.utils.Progbar(total_steps, verbose=1 if interactive else 2,
                                  unit_name="step")
    iterator = iter(dataset)
    metrics = {}
    start = time.time()
    eval_seconds = 0.0

    def save(step):
        if not _all_finite(method.variables + optimizer.variables):
            raise NonFiniteLossError(
                f"the weights became non-finite by step {step} (the loss was still finite); "
                f"stopped without saving, the last good checkpoint is "
                f"{writer.latest or 'none (no checkpoint was written)'}. Lower "
                "learning_rate or check the input data.")
        writer.save(step)

    agree = distribute.stop_agreement(strategy, role)
    while step < total_steps:
        if agree(bool(stop_requested())):
            if saved_step != step:
                save(step)
            path = writer.latest
            raise TrainingInterrupted(
                f"stop requested at step {step}/{total_steps}: checkpoint {path} written; run "
                "the same command again to resume from it", step, path)
        # Stop at every checkpoint step even when steps_per_loop does not divide it.
        next_checkpoint = (step // config.checkpoint_every_steps + 1) * \
            config.checkpoint_every_steps
        num_steps = min(config.steps_per_loop, total_steps - step, next_checkpoint - step)
        if eval_every_steps:
            # ... and at every evaluation step.
            next_eval = (step // eval_every_steps + 1) * eval_every_steps
            num_steps = min(num_steps, next_eval - step)
        logs = run_steps(iterator, tf.constant(num_steps))
        input_position.assign_add(num_steps)
        step = int(optimizer.iterations.numpy())
        metrics = {k: float(v.numpy()) for k, v in logs.items()}
        if not math.isfinite(metrics["loss"]):
            raise NonFiniteLossError(
                f"loss is {metrics['loss']} at step {step}; stopped without saving, the last "
                f"good checkpoint is {writer.latest or 'none (no checkpoint was written)'}. "
                "Lower learning_rate or check the input data.")
        progbar.update(step, [(k, v) for k, v in metrics.items()])
        if step % config.log_every_steps == 0 or step == total_steps:
            with summaries.as_default(step=step):
                for name, value in metrics.items():
                    tf.summary.scalar(name, value)
                tf.summary.scalar("learning_rate", _current_learning_rate(optimizer))
                if code_histogram is not None:
                    code_histogram.write()
        if on_eval is not None and step % eval_every_steps == 0:
            # Before the checkpoint: an evaluation after the last checkpoint of a session
            # that dies is dropped on resume (and redone).
            begin = time.time()
            on_eval(step, dict(metrics, learning_rate=_current_learning_rate(optimizer)),
                    summaries)
            eval_seconds += time.time() - begin
        if step % config.checkpoint_every_steps == 0 or step == total_steps:
            save(step)
            saved_step = step
            if not interactive:
                logger.info("step %d/%d: %s", step, total_steps,
                            ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    summaries.flush()
    return metrics, time.time() - start - eval_seconds


def _current_learning_rate(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(inner.learning_rate))

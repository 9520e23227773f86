"""The pretraining run: data, strategy, method, optimizer, checkpoints, logs, evaluation.

`pretrain(config)` is everything `nac-train` does after parsing flags; `build_method` and
`view_pair_dataset` give the same method, optimizer and input pipeline for `model.fit`. It
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
nothing.

Multi-worker (MultiWorkerMirroredStrategy): every worker runs this function; only the chief
writes the run directory (flags.json, input statistics, TensorBoard, checkpoints,
results.json) and evaluates. The other workers save their checkpoints to a temporary
directory that is deleted again (all workers must take part in a save), and all restore
from the chief's checkpoints (a shared filesystem, as TensorFlow's multi-worker recipe
assumes).
"""
import dataclasses
import math
import os
import sys
import time

import keras
import tensorflow as tf

from nac_tf import distribute
from nac_tf.checkpointing import CheckpointWriter, restore_training_state
from nac_tf.config import DATASETS, ConfigError, PretrainConfig, validate_config
from nac_tf.data.catalog import dataset_statistics, load_source
from nac_tf.data.pipeline import first_training_images, make_pretrain_dataset
from nac_tf.data.views import AugmentationConfig, ViewPairAugmenter, amdim_recipe
from nac_tf.evaluation.linear import LinearEvalConfig
from nac_tf.evaluation.mlp import MLPEvalConfig
from nac_tf.evaluation.monitor import TrainingMonitor
from nac_tf.evaluation.report import EvaluationConfig, evaluate_model
from nac_tf.export import ExportedModel, build_export_module
from nac_tf.methods.from_config import method_from_config
from nac_tf.models import encoder_input_statistics
from nac_tf.optim import (LARS, AdamL2, WarmupCosineSchedule, WarmupStepSchedule,
                          lars_rule_arguments, scaled_learning_rate)
from nac_tf.precision import resolve_precision
from nac_tf.run_directory import (
    FLAGS_FILE, INPUT_STATISTICS_FILE, RANDOM_INIT_EVAL_FILE, RESULTS_FILE, TENSORBOARD_DIR,
    TRAJECTORY_FILE, check_run_directory, checkpoint_step, intact_checkpoint,
    latest_checkpoint, path_in, read_json, read_run_json, read_trajectory, write_json,
    write_run_settings)
from nac_tf.summaries import (PROBE_SIZE, CodeHistogram, write_final_metrics,
                              write_view_pairs)


# XLA's CPU backend compiles convolutions to its own kernels, not to the oneDNN ones
# TensorFlow's CPU kernels use (benchmarks/step_throughput.py, README "Speed").
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


# ----------------------------------------------------------------------------- building blocks
def augmentation_config(config: PretrainConfig, image_size):
    """The view recipe of `config.augmentation` at `image_size`: AMDIM's (`amdim_recipe`,
    the authors' CIFAR recipe up to 32 px) or the SimCLR family's, from the fields."""
    if config.augmentation == "amdim":
        return amdim_recipe(image_size)
    return AugmentationConfig(
        image_size=image_size, crop_area=(config.crop_area_min, 1.0), flip=config.flip,
        jitter_strength=config.jitter, jitter_prob=config.jitter_prob,
        grayscale_prob=config.grayscale_prob, blur_prob=config.blur_prob)


def view_augmenter(config: PretrainConfig, image_size):
    """The run's ViewPairAugmenter: `config`'s recipe at `image_size`, seeded by the run."""
    return ViewPairAugmenter(augmentation_config(config, image_size), seed=config.seed)


def input_augmentation(config: PretrainConfig, augmenter):
    """What the input pipeline makes of a batch (`make_pretrain_dataset`'s augmenter): the
    view pairs (augment_on="host"), or the crops with the random parameters of the later
    stages (device: `crop_pair`; `use_view_stage` gives the method the rest)."""
    return augmenter if config.augment_on == "host" else augmenter.crop_pair


def use_view_stage(config: PretrainConfig, method, augmenter):
    """augment_on="device": `method` finishes the views in its train step
    (`TwoViewMethod.input_views`); host: its input elements are the views."""
    method.view_stage = augmenter.colour_pair if config.augment_on == "device" else None


def learning_rate_schedule(config: PretrainConfig, peak_lr, total_steps, warmup_steps):
    """The schedule of `config.lr_schedule` (LR_SCHEDULES): a linear warm-up over
    `warmup_steps`, then cosine decay to 0 at `total_steps` (warmup_cosine), or the peak
    multiplied by `lr_decay_factor` at each of `lr_decay_fractions` of `total_steps`
    (warmup_step, the AMDIM authors')."""
    if config.lr_schedule == "warmup_step":
        decay_steps = [max(1, int(round(f * total_steps)))
                       for f in config.lr_decay_fraction_values]
        return WarmupStepSchedule(peak_lr, total_steps, warmup_steps, decay_steps,
                                  config.lr_decay_factor)
    return WarmupCosineSchedule(peak_lr, total_steps, warmup_steps)


def make_optimizer(config: PretrainConfig, schedule):
    """The optimizer of `config.optimizer` (OPTIMIZERS) on `schedule`, both with coupled
    weight decay `config.weight_decay`: LARS (`config.lars_rule` and its hyperparameters) or
    torch's Adam (`AdamL2`, `adam_beta1`, `adam_beta2`, epsilon 1e-8)."""
    if config.optimizer == "adam":
        return AdamL2(schedule, beta_1=config.adam_beta1, beta_2=config.adam_beta2,
                      epsilon=1e-8, weight_decay=config.weight_decay)
    return LARS(schedule, momentum=config.lars_momentum, weight_decay=config.weight_decay,
                trust_coefficient=config.lars_trust_coefficient,
                **lars_rule_arguments(config.lars_rule))


def compile_method(method, config: PretrainConfig, total_steps, warmup_steps,
                   jit_compile="auto"):
    """Compiles `method` with the run's optimizer; returns (optimizer, peak learning rate).

    `make_optimizer` (LARS by default) on `learning_rate_schedule` (by default a linear
    warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps`) from the scaled
    peak rate; wrapped in a LossScaleOptimizer for mixed_float16. The optimizer is built on
    the optimized variables only (not the momentum copies). `jit_compile` is Keras' (for
    `model.fit`; `pretrain` runs its own step, XLA per `config.jit_compile`). Call inside
    the strategy's scope when training distributed.
    """
    peak_lr = scaled_learning_rate(config.learning_rate, config.batch_size,
                                   config.learning_rate_scaling)
    optimizer = make_optimizer(config, learning_rate_schedule(config, peak_lr, total_steps,
                                                              warmup_steps))
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    method.compile(optimizer=optimizer, jit_compile=jit_compile)
    optimizer.build(method.optimized_variables)
    return optimizer, peak_lr


def _with_resolved_precision(config: PretrainConfig, log):
    """`config` with precision="auto" replaced by the precision it picks here; sets Keras'
    global dtype policy for a mixed precision."""
    precision, reason = resolve_precision(config.precision)
    if reason is not None and log is not None:
        log(f"precision auto: {precision} ({reason})")
    if precision != "float32":
        keras.config.set_dtype_policy(precision)
    return dataclasses.replace(config, precision=precision)


def _check_source(config: PretrainConfig, source):
    if source.name in DATASETS and source.name != config.dataset:
        # The dataset picks the input normalisation (published statistics for CIFAR-10 and
        # ImageNet): a mismatch would silently normalise with another dataset's values.
        raise ValueError(f"`source` holds {source.name!r} but config.dataset is "
                         f"{config.dataset!r}; set dataset={source.name!r} in the config")


def input_statistics_of(config: PretrainConfig, source, image_size):
    """The run's input statistics {"image_size", "mean", "std"} (input_statistics.json, the
    encoder's input normalisation, the export's metadata): the encoder's own when the
    weights it is made for fix them (vgg16: keras' VGG16 preprocessing), otherwise the
    dataset's (`dataset_statistics`)."""
    mean, std = (encoder_input_statistics(config.encoder)
                 or dataset_statistics(config.dataset, source))
    return {"image_size": image_size, "mean": list(mean), "std": list(std)}


def _check_init_weights_file(config: PretrainConfig):
    """A new run with init_weights needs the file (a resumed one restores its checkpoint):
    checked before anything is built or written."""
    if config.init_weights and latest_checkpoint(config.model_dir) is None and \
            not os.path.isfile(os.path.expanduser(config.init_weights)):
        raise ConfigError("init_weights", f"{config.init_weights!r} does not exist or is not "
                          "a file (a new run loads the encoder's weights from it)")


def build_method(config: PretrainConfig, source):
    """The method of `config` as a compiled keras.Model, for `model.fit` on
    `view_pair_dataset(config, source)`: what `pretrain` trains, without its run directory,
    checkpoints, distribution or evaluation.

    `source`: the training data (an ImageSource, e.g. `load_source("digits", image_size=8)`),
    which fixes the image size (`config.image_size`, 0: the source's), the input
    normalisation (`input_statistics_of`), the encoder's initial weights
    (`config.init_weights`, when set) and, with `config.train_steps`
    or `config.epochs`, the learning-rate schedule of the optimizer (`compile_method`).
    As `pretrain`, it seeds Keras' global random state with `config.seed` and sets the
    global dtype policy for a mixed `config.precision`. The bare method around an encoder of
    your own is `nac_tf.methods.build_method`.
    """
    validate_config(config, require_model_dir=False)
    _check_source(config, source)
    keras.utils.set_random_seed(config.seed)
    config = _with_resolved_precision(config, log=None)
    image_size = config.image_size or source.image_shape[0]
    statistics = input_statistics_of(config, source, image_size)
    _, total_steps, warmup_steps = schedule_lengths(config, source.num_train)
    method = method_from_config(config, statistics, load_init_weights=True)
    use_view_stage(config, method, view_augmenter(config, image_size))
    compile_method(method, config, total_steps, warmup_steps,
                   jit_compile=config.jit_compile)
    return method


def view_pair_dataset(config: PretrainConfig, source, start_batch=0):
    """Endless batches (view1, view2) of `config.batch_size` images of `source`, augmented
    by `config`'s recipe: `pretrain`'s input pipeline on one device (every batch a function
    of `config.seed` and its index), for `model.fit(..., steps_per_epoch=N)`. With
    augment_on="device" the batches are CropPairs, which `build_method(config, ...)`'s
    method turns into the same views in its step."""
    _check_source(config, source)
    image_size = config.image_size or source.image_shape[0]
    augmenter = view_augmenter(config, image_size)
    return make_pretrain_dataset(source, input_augmentation(config, augmenter),
                                 config.batch_size, seed=config.seed, start_batch=start_batch)


def schedule_lengths(config, num_train):
    """(steps_per_epoch, total_steps, warmup_steps) for the global batch."""
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch < 1:
        raise ConfigError("batch_size", f"{config.batch_size} is larger than the "
                          f"{num_train} training images of dataset={config.dataset!r}")
    total = config.train_steps or config.epochs * steps_per_epoch
    warmup = min(total, int(round(config.warmup_epochs * steps_per_epoch)))
    return steps_per_epoch, total, warmup


# ----------------------------------------------------------------------------- evaluation
def evaluation_config(config: PretrainConfig):
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


def evaluate_method(method, source, input_statistics, config, prefix=""):
    """kNN, linear probe and hash retrieval of the online networks (`evaluate_model`).

    The networks are wrapped in the export module, so these are the numbers the exported
    SavedModel gives. Keys get `prefix` (e.g. "random_init_").
    """
    model = ExportedModel.from_module(build_export_module(
        method, input_statistics["image_size"], input_statistics))
    report = evaluate_model(model, source, evaluation_config(config))
    return {prefix + key: value for key, value in report.items()}


class _TrainingEvaluation:
    """eval_every_steps on the chief: the `TrainingMonitor` over the live online networks
    and the run's trajectory (trajectory.json, rewritten atomically after every evaluation).

    On resume the trajectory is read back without the entries after the restored step
    (evaluated by a session that stopped before its next checkpoint). `monitor` is None when
    nothing is evaluated during training (then the trajectory is only carried along).
    """

    def __init__(self, monitor, model, model_dir, start_step, log):
        self.monitor, self.model, self.log = monitor, model, log
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
        self.log(f"eval at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items())
                 + f" ({seconds:.2f} s)")


def _training_evaluation(config, method, source, input_statistics, start_step, log):
    """The chief's _TrainingEvaluation of `config` (its monitor None unless
    eval_every_steps > 0 on a source held in memory with something to evaluate)."""
    monitor = model = None
    if config.eval_every_steps and not source.has_arrays:
        log(f"eval_every_steps: {config.dataset} is streamed, not held in memory; no "
            "evaluation during training")
    elif config.eval_every_steps:
        monitor = TrainingMonitor(source, knn_k=config.knn_k,
                                  knn_temperature=config.knn_temperature,
                                  num_queries=config.eval_num_queries, seed=config.seed)
        if not monitor.metric_names:
            log(f"eval_every_steps: nothing to evaluate on {config.dataset} (multi-label, "
                "no retrieval protocol)")
            monitor = None
        else:
            # The final evaluation's inference path (export module over the live networks).
            model = ExportedModel.from_module(build_export_module(
                method, input_statistics["image_size"], input_statistics))
    return _TrainingEvaluation(monitor, model, config.model_dir, start_step, log)


# ----------------------------------------------------------------------------- the run
@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster: chief (writes the run directory) or not."""

    is_chief: bool = True
    task_id: int = 0
    num_workers: int = 1


def worker_role(strategy):
    """The WorkerRole of this process under `strategy` (the chief unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return WorkerRole()
    cluster = resolver.cluster_spec().as_dict()
    num_workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    # should_checkpoint is TensorFlow's own notion of the chief (task "chief", or worker 0
    # of a cluster without one).
    return WorkerRole(is_chief=bool(strategy.extended.should_checkpoint),
                      task_id=int(resolver.task_id or 0), num_workers=max(num_workers, 1))


def _load_source(config, log):
    """The run's ImageSource; a loader's complaint about the data becomes a ConfigError
    naming data_dir (the command line prints it without a traceback)."""
    try:
        source = load_source(config.dataset, data_dir=config.data_dir,
                             image_size=config.image_size or None, seed=config.seed,
                             on_corrupt=config.on_corrupt)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError("data_dir", str(error)) from error
    if source.num_skipped:
        log(f"{source.num_skipped} image file(s) in {config.data_dir} could not be decoded "
            "and were skipped (on_corrupt='skip'; on_corrupt='raise' stops at the first one)")
    return source


def pretrain(config: PretrainConfig, log=print, strategy=None, stop_requested=None):
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
        return _pretrain(config, log, strategy, stop_requested)
    except tf.errors.OpError as error:
        # From the initial weights' broadcast to the last step: a lost worker aborts the
        # collectives of all the others.
        lost = worker_role(strategy).num_workers > 1 and distribute.worker_lost_error(
            error, latest_checkpoint(config.model_dir))
        if not lost:
            raise
        raise lost from error


def _pretrain(config, log, strategy, stop_requested):
    """`pretrain` once the strategy is made."""
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
        log(CPU_XLA_WARNING)
    role = worker_role(strategy)
    # Nothing is written before the directory is known to take this run and its checkpoint
    # to restore: a refused or damaged directory is left exactly as it was.
    changed = check_run_directory(config)
    latest = intact_checkpoint(config.model_dir)
    new_run = latest is None
    keras.utils.set_random_seed(config.seed)
    run_config = config
    config = _with_resolved_precision(config, log)

    source = _load_source(config, log)
    image_size = config.image_size or source.image_shape[0]
    steps_per_epoch, total_steps, warmup_steps = schedule_lengths(config, source.num_train)
    evaluates = config.evaluate and source.has_arrays
    finished = _finished_results(config.model_dir, latest, total_steps, evaluates)
    if finished is not None and not changed:
        log(f"{config.model_dir} finished this run already (step {finished['steps']}); "
            f"nothing to do. Its results ({RESULTS_FILE}):")
        return finished
    if new_run and role.is_chief:
        # Once the data is known to be usable (a refused data_dir leaves no run behind to
        # refuse the corrected command); a resumed run writes its settings once restored.
        write_run_settings(run_config, changed)  # flags.json keeps precision="auto"
    input_statistics = input_statistics_of(config, source, image_size)
    # A new run starts from init_weights (when set); a resumed one from its checkpoint.
    with strategy.scope():
        method = method_from_config(config, input_statistics, replicas,
                                    load_init_weights=new_run, log=log)
        optimizer, peak_lr = compile_method(method, config, total_steps, warmup_steps)
    # Global batches consumed. Not optimizer.iterations: a LossScaleOptimizer does not count
    # the steps it skips for non-finite gradients, which still consume a batch.
    input_position = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_position")
    checkpoint = tf.train.Checkpoint(method=method, optimizer=optimizer,
                                     input_position=input_position)
    if latest:
        restore_training_state(checkpoint, latest, input_position, optimizer)
        log(f"Resumed from {latest} at step {int(optimizer.iterations.numpy())}")
        if role.is_chief:
            write_run_settings(run_config, changed, int(optimizer.iterations.numpy()))
    if role.is_chief:
        write_json(path_in(config.model_dir, INPUT_STATISTICS_FILE), input_statistics)
    writer = CheckpointWriter(checkpoint, config.model_dir, config.keep_checkpoints, role,
                               latest)
    evaluation = None
    initial_eval_path = path_in(config.model_dir, RANDOM_INIT_EVAL_FILE)
    stopping = stop_requested or (lambda: False)
    if evaluates and role.is_chief and int(optimizer.iterations.numpy()) == 0 and \
            not os.path.exists(initial_eval_path) and not stopping():
        # The same networks at their initialisation: the baseline to beat (with
        # init_weights, the file's encoder under random heads; keys stay random_init_).
        log("Evaluating the networks at their initialisation" +
            (" (encoder from init_weights)" if config.init_weights else " (random)"))
        write_json(initial_eval_path, evaluate_method(
            method, source, input_statistics, config, prefix="random_init_"))

    if role.is_chief:
        evaluation = _training_evaluation(config, method, source, input_statistics,
                                          int(optimizer.iterations.numpy()), log)
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
        if int(optimizer.iterations.numpy()) == 0:
            # A new run: what it starts from (resumed runs wrote these already).
            with summaries.as_default(step=0):
                # The whole augmenter: with augment_on="device" too, these are the views
                # the step makes (the same numbers, tests/test_data.py).
                write_view_pairs(source, augmenter, config.batch_size, config.seed)
                code_histogram.write()

    log(f"{config.method} on {config.dataset}: encoder {config.encoder}, {replicas} "
        f"replica(s), global batch {config.batch_size}, {total_steps} steps "
        f"({steps_per_epoch}/epoch), {config.optimizer}, peak lr {peak_lr:g}, warm-up "
        f"{warmup_steps} steps, {config.lr_schedule}")

    metrics, train_seconds = _train_loop(
        config, strategy, method, optimizer, dataset, writer, input_position,
        total_steps, log, stopping, summaries, code_histogram,
        # Every worker stops at the evaluation steps; only the chief evaluates.
        eval_every_steps=config.eval_every_steps if source.has_arrays else 0,
        on_eval=evaluation if evaluation is not None and evaluation.monitor else None)

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
        log("Evaluating the pretrained networks")
        results.update(evaluate_method(method, source, input_statistics, config))
        if os.path.exists(initial_eval_path):
            results.update(read_json(initial_eval_path))
        log(summary_table(results))
        results["evaluated"] = True
        with summaries.as_default(step=results["steps"]):
            write_final_metrics(results)
        summaries.flush()
        write_json(results_path, results)
    return results


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


def _stop_agreement(strategy, role):
    """`agree(flag)`: `flag` OR-ed over all workers with one scalar all-reduce, so that every
    worker stops at the same step when one of them is asked to (a lone worker stopping would
    leave the others waiting in their next collective)."""
    if role.num_workers == 1:
        return bool

    @tf.function
    def votes(flag):
        per_replica = strategy.run(lambda value: value, args=(flag,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return lambda flag: float(votes(tf.constant(1.0 if flag else 0.0))) > 0


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
                total_steps, log, stop_requested, summaries, code_histogram=None,
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

    agree = _stop_agreement(strategy, role)
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
                log(f"step {step}/{total_steps}: " +
                    ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    summaries.flush()
    return metrics, time.time() - start - eval_seconds


SUMMARY_METRICS = ("knn_top1", "linear_top1", "mlp_top1", "map_all")


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

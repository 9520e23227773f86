"""nac-train: pretrains NAC, NAC-MQ, SimCLR, MoCo-v2 or AMDIM (`nac_tf.training.pretrain`).

    nac-train --config=NAME [--flag=value ...]
    nac-train --flagfile=path/to/file.flags [--flag=value ...]
    python -m nac_tf.cli.train ...        (also: python -m nac_tf.train ...)

--config=NAME runs a config shipped with the package (the flagfiles of the repository's
configs/ folder, e.g. --config=quickstart or --config=cifar10_nac_mq; --help lists them).
Its flags are inlined where --config stands, so later flags override them. Flags are parsed
into a PretrainConfig (the only place they are read), every value is validated before any
graph is built, and the run goes to --model_dir (run the same command again to resume).

Running the command of a finished run again changes nothing and prints its stored results;
docs/robustness.md says what survives which fault.

Exit codes: 0 trained (and evaluated), or finished already; 1 a fault during training: the
loss or the weights became non-finite, or a checkpoint or result could not be written (full
disk): the last good checkpoint is kept; 2 a flag, the data behind --data_dir or the run
directory is unusable (one line `error: --flag: ...` on stderr, no traceback, nothing
written); 75 a worker of a multi-worker run was lost (one line `error: lost worker N
(/job:worker/replica:0/task:N) ...` naming the checkpoint that the same command on every
worker resumes from: rerun them); 130 (128 + SIGINT) stopped by Ctrl-C and 143 (128 +
SIGTERM) stopped by SIGTERM, e.g. on preemption: both after writing a checkpoint of the
current step (run the same command again to resume); a second Ctrl-C exits at once with
130, without one. 75 is sysexits.h's EX_TEMPFAIL (a temporary failure, retry later): a job
runner that retries on it gets this right, whereas retrying after 1 repeats the failure.

A worker whose peers never start, or die before they join the cluster, waits for them as
TensorFlow does (it cannot tell a dead peer from a late one): the chief without a limit,
the others up to an hour; Ctrl-C twice ends it.
"""
import dataclasses
import json
import os
import signal
import sys
import threading

from absl import flags

from nac_tf.cli import common
from nac_tf.cli.configs import available_configs, expand_config_args
from nac_tf.config import ConfigError, PretrainConfig, TFDS_SOURCE_FILES, validate_config
from nac_tf.errors import cannot_write

WORKER_LOST_EXIT_CODE = 75  # sysexits.h's EX_TEMPFAIL (see the docstring)

_HELP = {
    "method": "Pretraining method: nac, nac_mq, simclr, moco_v2 or amdim (needs an amdim_* "
              "encoder).",
    "dataset": "digits (bundled with scikit-learn), cifar10 / imagenet2012 (TFDS), npz "
               "(archive with x_train, y_train, x_test, y_test), image_folder (root/<class>/), "
               "cifar10_hashing (CIFAR-10 retrieval split: trains on 500 images per class, "
               "1000 queries per class) or flickr25k (MIRFLICKR-25000 from --data_dir: trains "
               "on 5000 images, 2000 queries).",
    "data_dir": "npz: the .npz file; image_folder: the root; imagenet2012: the TFDS manual dir "
                f"holding {' and '.join(TFDS_SOURCE_FILES['imagenet2012'])}; cifar10: "
                "optional TFDS data_dir; cifar10_hashing: optional .npz archive or TFDS "
                "data_dir; flickr25k: the dir holding mirflickr/ and "
                "mirflickr25k_annotations_v080/. A TFDS data_dir holding "
                f"{' and '.join(TFDS_SOURCE_FILES['cifar10'])} (copied by hand, no internet "
                "needed) prepares CIFAR-10 from it; else TFDS downloads it.",
    "image_size": "Training resolution; 0 keeps the dataset's native size.",
    "on_corrupt": "Image files that cannot be decoded (image_folder, flickr25k): skip (left "
                  "out, counted in the log and in results.json as num_skipped_images) or "
                  "raise (stop with the file's name).",
    "encoder": "resnet18, resnet34, resnet50, resnet_tiny, vgg16_bn, vgg16, small_cnn, "
               "amdim_small, amdim_large or amdim_xs. "
               "vgg16 is keras.applications' VGG16 without BatchNorm (its layer names and "
               "weight shapes, its preprocessing: RGB -> BGR and ImageNet mean subtraction "
               "whatever the dataset), for --init_weights with its ImageNet weights. The "
               "amdim_* encoders (AMDIM paper Sec. 3.6; ndf/nrkhs/ndepth 128/1024/10, "
               "256/2048/10, 32/256/2) take 32, 64 or 128 px images only.",
    "init_weights": "A Keras weights file to initialise the encoder of a new run from "
                    "(ignored on resume: the checkpoint has the weights): .weights.h5 written "
                    "by save_weights, or a Keras 2 .h5 such as keras.applications' "
                    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 for --encoder=vgg16. "
                    "Layers are matched by name; every encoder layer with weights must be in "
                    "the file with the same shapes (layers of the file the encoder lacks are "
                    "reported, not an error). ~ is expanded. Empty: random initialisation.",
    "stem": "ResNet stem: cifar (3x3, no max-pool), imagenet (7x7 + max-pool), or auto (cifar "
            "up to 64 px).",
    "code_dim": "Code dimension D (bits of the activation code).",
    "head_hidden_dim": "Hidden width of the projection head and inference network; 0: the "
                       "encoder's output width.",
    "head_batch_norm": "BatchNorm in the heads (off on CIFAR, as the authors do).",
    "head_scale_by_sqrt_dim": "Divide head outputs by sqrt(D) before tanh / sigmoid (authors' "
                              "code).",
    "batch_norm": "sync (statistics over the global batch), per_replica, or per_view (separate "
                  "passes for the two views, the authors' behaviour).",
    "batch_size": "Global batch size K (images; each gives two views).",
    "epochs": "Training epochs (ignored when --train_steps > 0).",
    "train_steps": "Total optimizer steps; 0: epochs x steps per epoch.",
    "learning_rate": "Peak learning rate before scaling.",
    "learning_rate_scaling": "none, linear (x batch/256) or sqrt (x sqrt(batch)).",
    "warmup_epochs": "Linear warm-up length in epochs (per-step), then the --lr_schedule.",
    "weight_decay": "Coupled (L2) weight decay, added to the gradient: LARS's (BatchNorm "
                    "parameters and biases excluded under --lars_rule=simclr) or Adam's "
                    "(every variable, as torch.optim.Adam's weight_decay; the AMDIM "
                    "authors: 1e-5).",
    "optimizer": "lars (LARS on the trust ratio, --lars_*) or adam (torch.optim.Adam's "
                 "update with coupled L2 weight decay, epsilon 1e-8, --adam_beta1/2; the "
                 "AMDIM authors' optimizer).",
    "adam_beta1": "Adam's first-moment decay beta_1 (--optimizer=adam; the AMDIM authors: "
                  "0.8).",
    "adam_beta2": "Adam's second-moment decay beta_2 (--optimizer=adam).",
    "lr_schedule": "warmup_cosine (linear warm-up over --warmup_epochs, then cosine decay to "
                   "0) or warmup_step (linear warm-up, then constant, multiplied by "
                   "--lr_decay_factor at each of --lr_decay_fractions; the AMDIM authors').",
    "lr_decay_fractions": "--lr_schedule=warmup_step: comma-separated fractions of the "
                          "training steps at which the learning rate is multiplied by "
                          "--lr_decay_factor, e.g. 0.8333333,0.9333333 (epochs 250 and 280 "
                          "of 300); empty: no decay.",
    "lr_decay_factor": "--lr_schedule=warmup_step: the factor of each decay (the AMDIM "
                       "authors: 0.2).",
    "lars_momentum": "LARS momentum.",
    "lars_trust_coefficient": "LARS trust coefficient eta.",
    "lars_rule": "Which variables LARS adapts: simclr (BatchNorm parameters and biases get raw "
                 "lr*g steps, no weight decay; the reference TF SimCLR), all (every variable "
                 "gets weight decay and the trust ratio), authors (all, and zero-initialised "
                 "variables never move, as in the NAC authors' LARS).",
    "head_init": "Initialisation of the heads' Dense layers: keras (Glorot kernel, zero "
                 "bias) or pytorch (U(+-1/sqrt(fan_in)) for kernel and bias, as the authors' "
                 "torch.nn.Linear heads).",
    "queue_init_scale": "Standard deviation of the Gaussian initial queue entries (the "
                        "authors: 1e-3).",
    "mq_negatives": "What the NAC-MQ denominator holds: batch_in_queue (the current batch's "
                    "momentum codes written into the queue before the loss, the authors' "
                    "CIFAR code), positive_key (each row's positive momentum key prepended to "
                    "the queue, their ImageNet code / MoCo), queue_only (the stored queue).",
    "flip_prob": "Bit-flip probability p of the noisy channel, 0 < p < 0.5.",
    "queue_size": "Queue length M (nac_mq, moco_v2); a multiple of 2 x batch_size.",
    "momentum": "EMA decay of the momentum networks (nac_mq, moco_v2).",
    "l2_weight": "lambda of the ||z||^2 term of NAC-MQ (Eq. 20).",
    "temperature": "Softmax temperature of SimCLR / MoCo-v2.",
    "amdim_regularization_weight": "AMDIM: weight lambda of the squared-score regulariser "
                                   "(the paper's 4e-2; the authors' code computes 5e-2).",
    "amdim_clip_value": "AMDIM: soft clipping c of the NCE scores, c tanh(s / c) (20).",
    "amdim_mixture_components": "AMDIM: mixture components k of the mixture-based 1->7 task "
                                "(paper Sec. 3.7); 0: off (the plain 1->7 task).",
    "amdim_mixture_entropy_weight": "AMDIM with mixture components: the entropy weight alpha "
                                    "of the paper's Eq. 6 (q = softmax(s_nce / alpha)).",
    "augmentation": "The view recipe: simclr (set by --crop_area_min, --flip, "
                    "--jitter_strength, --jitter_prob, --grayscale_prob, --blur_prob: the "
                    "CIFAR and MoCo-v2 recipes) or amdim (the AMDIM authors': a flip shared "
                    "by both views, then per view a reflect-filled translation by up to 4 px "
                    "with p = 0.8 up to 32 px, a random-resized crop (0.3-1) above, colour "
                    "jitter 0.4/0.4/0.4 and hue 0.2 (0.1 above 64 px) with p = 0.8, grayscale "
                    "p = 0.25; those six flags must then stay at their defaults).",
    "crop_area_min": "Smallest random-resized-crop area fraction (0.08 CIFAR, 0.2 MoCo-v2).",
    "flip": "Random horizontal flips.",
    "jitter_strength": "Scales colour jitter (0.4, 0.4, 0.4, 0.1).",
    "jitter_prob": "Probability of colour jitter.",
    "grayscale_prob": "Probability of grayscale.",
    "blur_prob": "Probability of Gaussian blur (0 on CIFAR, 0.5 in the MoCo-v2 recipe).",
    "augment_on": "Where the views are augmented: host (all of it in the tf.data input "
                  "pipeline on the CPUs) or device (the crop and every random draw on the "
                  "host, colour jitter, grayscale and blur inside the train step on the "
                  "accelerator, for hosts whose CPUs cannot keep up). The same views either "
                  "way (bit for bit on CPU; within float rounding under XLA). Device sends "
                  "float32 crops, as many bytes as the host's views. Its speed on GPUs and "
                  "TPUs is unmeasured.",
    "model_dir": "Run directory: flags.json, checkpoints/, tensorboard/, results.json.",
    "seed": "Random seed (initialisation, data order, augmentation, channel noise).",
    "strategy": "auto, one_device, mirrored, multi_worker or tpu.",
    "tpu": "TPU name or address for --strategy=tpu (empty: the local TPU VM).",
    "precision": "float32, mixed_bfloat16, mixed_float16 (losses stay float32) or auto: the "
                 "fastest one with native hardware support here (TPU and GPUs of compute "
                 "capability >= 8.0: mixed_bfloat16; 7.x: mixed_float16; CPUs with avx512_bf16 "
                 "or amx_bf16: mixed_bfloat16, 1.35-1.66x float32's step on a Zen 4, README "
                 "Speed; otherwise float32). The run logs what auto picked.",
    "jit_compile": "XLA-compile the per-replica step: for GPUs and TPUs; on CPUs XLA's step "
                   "is slower than TensorFlow's oneDNN one (0.65x, ResNet-50; README Speed) "
                   "and the trainer says so.",
    "deterministic": "Op determinism (tf.config.experimental.enable_op_determinism): reruns "
                     "and resumed runs give bit-identical weights (nearly always on CPU: rare "
                     "resumes end a rounding error away). Cost: none measurable on "
                     "CPU (quickstart, 300 steps on 2 cores: 28-39 s against 30-32 s without, "
                     "within run-to-run noise); on GPUs deterministic kernels (cuDNN "
                     "algorithms, scatter and segment sums without atomics) can be markedly "
                     "slower.",
    "steps_per_loop": "Optimizer steps per tf.function call (larger amortises host overhead).",
    "checkpoint_every_steps": "Checkpoint interval in steps.",
    "keep_checkpoints": "How many recent checkpoints to keep.",
    "log_every_steps": "Interval in steps of the TensorBoard scalars and of the histogram of the "
                       "code pre-activations.",
    "knn_k": "Neighbours of the kNN monitor.",
    "knn_temperature": "Vote temperature of the kNN monitor.",
    "linear_eval_epochs": "Epochs of each linear-probe fit in the final evaluation (learning rate "
                          "searched over 0.01, 0.1, 1, 10); 0 skips the linear probe.",
    "linear_eval_augment": "Train the final linear probe on training images padded by 4 pixels, "
                           "randomly cropped back and flipped, afresh every epoch (the "
                           "linear-evaluation protocol, as nac-linear-eval --augment; test "
                           "images unaugmented). The encoder then runs inside the probe's "
                           "training loop (quickstart: 36 s instead of 4.5 s per evaluation "
                           "on 2 CPU cores), and the 4-pixel shift is meant for 32 px and "
                           "larger images: on the quickstart's 8 px digits it drops linear "
                           "top-1 from 96 % to 57 %. The MLP probe (--mlp_eval_epochs) "
                           "follows this setting too.",
    "mlp_eval_epochs": "Epochs of each MLP-probe fit in the final evaluation (AMDIM's MLP "
                       "evaluation: dropout 0.2, 1024 hidden units with BatchNorm and ReLU; "
                       "learning rate searched over 0.01, 0.1, 1); 0 (the default) skips it.",
    "evaluate": "Evaluate the encoder (and its random initialisation) when training ends.",
    "eval_every_steps": "Evaluate the current online networks every this many steps (0: "
                        "never; chief only, datasets held in memory): kNN top-1 of the test "
                        "split against the train split (--knn_k, --knn_temperature; not for "
                        "multi-label data) and, on cifar10_hashing and flickr25k, the Hamming "
                        "mAP@all of --eval_num_queries fixed queries against the whole "
                        "database. TensorBoard eval/knn_top1, eval/map_all; trajectory.json "
                        "and results.json[\"trajectory\"] (kept across resumes). Cost on "
                        "the quickstart (digits, 2 CPU cores): 0.04-0.5 s per evaluation.",
    "eval_num_queries": "Queries (a fixed, seeded subset of the retrieval queries) of the "
                        "mAP of --eval_every_steps.",
    "allow_flag_changes": "Resume a model_dir whose flags.json differs in the length of "
    "training, the learning-rate schedule, the optimizer's hyperparameters or data_dir "
    "(config.RESUMABLE_RUN_FIELDS; recorded in flag_changes.json). Changes to the networks, "
    "method, objective, data, views, batch, seed or precision are refused even so.",
}


def define_flags(flag_values=flags.FLAGS):
    """--config, and one absl flag per PretrainConfig field, typed by the field's default."""
    names = available_configs()
    flags.DEFINE_string(
        "config", None, "A config shipped with nac_tf, by name: "
        f"{', '.join(names) if names else '(none found)'}. Its flags are inlined at this "
        "position: flags after it override them.", flag_values=flag_values)
    for field in dataclasses.fields(PretrainConfig):
        default, help_text = field.default, _HELP[field.name]
        if isinstance(default, bool):
            flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif isinstance(default, int):
            flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif isinstance(default, float):
            flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS):
    return PretrainConfig(**{f.name: flag_values[f.name].value
                             for f in dataclasses.fields(PretrainConfig)})


def config_from_args(args):
    """The PretrainConfig that `nac-train ARGS` would run (not validated), e.g.
    `config_from_args(["--config=quickstart", "--train_steps=5"])`. Raises ConfigError for
    an unknown config or include, absl's flags.Error for a bad flag."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(expand_config_args(["nac-train", *args]))
    return config_from_flags(flag_values)


class _StopOnSignal:
    """SIGTERM and Ctrl-C (SIGINT) ask the training loop to checkpoint the current step and
    stop (`requested`, polled between steps); a second Ctrl-C exits at once.

    The signals are blocked in the main thread, and so in every thread it starts later
    (TensorFlow's too), and taken by a thread of their own with sigwait: Python runs signal
    handlers only between bytecodes of the main thread, which a long TensorFlow call (a
    graph loop of many steps, a worker waiting for its cluster) keeps from them, so a
    handler could not exit "at once".
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal = None
        self._event = threading.Event()
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        threading.Thread(target=self._wait, name="nac_tf-stop-signals", daemon=True).start()

    def requested(self):
        return self._event.is_set()

    def _wait(self):
        while True:
            signum = signal.Signals(signal.sigwait(self.SIGNALS))
            if signum == signal.SIGINT and self._event.is_set():
                print("Ctrl-C again: exiting at once, without a checkpoint of the current "
                      "step", file=sys.stderr, flush=True)
                os._exit(128 + signal.SIGINT)
            self.signal = self.signal or signum
            self._event.set()
            if signum == signal.SIGINT:
                print("Ctrl-C: stopping after the current step with a checkpoint (Ctrl-C "
                      "again exits at once)", file=sys.stderr, flush=True)


def main(argv):
    common.reject_arguments(argv)
    # Before anything else: a stop requested while TensorFlow loads is honoured at the
    # first step boundary, not answered with a KeyboardInterrupt traceback.
    stop = _StopOnSignal()
    config = config_from_flags()
    # Before validate_config: checking the encoder and strategy names imports Keras, and
    # with it TensorFlow.
    common.import_tensorflow()
    try:
        validate_config(config)
    except ConfigError as error:
        common.exit_with_flag_error(error)
    from nac_tf.checkpointing import CheckpointWriteError
    from nac_tf.distribute import WorkerLostError
    from nac_tf.training import NonFiniteLossError, TrainingInterrupted, pretrain

    try:
        results = pretrain(config, stop_requested=stop.requested)
    except ConfigError as error:
        common.exit_with_flag_error(error)
    except (NonFiniteLossError, CheckpointWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except WorkerLostError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(WORKER_LOST_EXIT_CODE)
    except OSError as error:  # a result or log file the disk refused (full, read-only)
        print(f"error: {cannot_write(error.filename or config.model_dir, error)}; the "
              f"newest checkpoint in {config.model_dir} is intact: fix the cause and run the "
              "same command again to resume", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as error:
        print(f"{stop.signal.name if stop.signal else 'stopped'}: {error}", file=sys.stderr)
        sys.exit(128 + (stop.signal or signal.SIGTERM))
    print(json.dumps(results, indent=2, sort_keys=True))


def run(argv=None):
    """The `nac-train` console script."""
    common.run(main, define_flags, __doc__, argv=argv, configs=True)


if __name__ == "__main__":
    run()

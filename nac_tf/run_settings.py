"""The settings every pretraining run has, whatever its method: their declarations (default,
accepted values, help text, whether they define the run) and the lists of accepted values.

A method's own hyperparameters are declared with the method (`nac_tf.methods.registry`);
`nac_tf.config.PretrainConfig` has a field for each setting of both. In help texts a name in
backquotes is another setting, which the command line shows as its flag.
"""
from nac_tf.settings import (FIXED, RESUMABLE, Setting, alternatives, non_negative, positive,
                             unit_interval)
from nac_tf.specs.datasets import DATASET_SPECS, DATASETS
from nac_tf.specs.encoders import ENCODERS

ENCODER_STEMS = ("cifar", "imagenet")  # the ResNet stems (nac_tf.models.layers)
STEMS = ("auto",) + ENCODER_STEMS  # auto: cifar up to 64 px, imagenet above

LR_SCALINGS = ("none", "linear", "sqrt")  # nac_tf.optim.scaled_learning_rate
LARS_RULES = ("simclr", "all", "authors")  # nac_tf.optim.lars_rule_arguments
# nac_tf.recipes.make_optimizer: lars (nac_tf.optim.LARS, the default), adam
# (nac_tf.optim.AdamL2: torch's Adam with coupled L2, the AMDIM authors' optimizer).
OPTIMIZERS = ("lars", "adam")
# nac_tf.recipes.learning_rate_schedule: warmup_cosine (nac_tf.optim.WarmupCosineSchedule,
# the default), warmup_step (nac_tf.optim.WarmupStepSchedule: constant after the warm-up,
# multiplied by lr_decay_factor at each of lr_decay_fractions of training; the AMDIM authors').
LR_SCHEDULES = ("warmup_cosine", "warmup_step")
HEAD_INITIALIZERS = ("keras", "pytorch")  # nac_tf.models.heads.ProjectionHead
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")  # nac_tf.distribute
BATCH_NORM_MODES = ("sync", "per_replica", "per_view")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")  # nac_tf.precision
# What loaders of image files do with a file they cannot decode.
ON_CORRUPT = ("skip", "raise")
# The view recipe (nac_tf.recipes.augmentation_config): simclr, SimCLR's family set by the
# fields crop_area_min, flip, jitter_strength, jitter_prob, grayscale_prob, blur_prob (the
# CIFAR and MoCo-v2 recipes); amdim, the AMDIM authors' (nac_tf.data.views.amdim_recipe at
# the run's image size), which fixes all of those itself.
AUGMENTATIONS = ("simclr", "amdim")
# Where the views are augmented (nac_tf.recipes.input_augmentation): host, all of it in the
# input pipeline; device, the crop there and the colour stages in the train step.
AUGMENT_ON = ("host", "device")
# The queries of the mAP during training (nac_tf.evaluation.monitor.TrainingMonitor):
# protocol, a subset of the retrieval protocol's queries against its whole database;
# validation, database images that are not pretraining images against the rest of it.
EVAL_QUERY_SETS = ("protocol", "validation")



# In the order of the command line's help; defaults: NAC on CIFAR-10, docs/protocols.md
# section 1. `method` is checked against the registered methods (nac_tf.config), `data_dir`
# and `init_weights` by nac_tf.config's own checks.
RUN_SETTINGS = (
    Setting("method", "nac",
            "Pretraining method: {methods} (amdim needs an amdim_* encoder).",
            run=FIXED),
    Setting("dataset", "cifar10",
            alternatives([f"{spec.name} ({spec.description})" for spec in DATASET_SPECS])
            + ".", choices=DATASETS, run=FIXED),
    Setting("data_dir", "",
            "; ".join(f"{spec.name}: {spec.data_dir_needs or spec.data_dir_use}"
                      for spec in DATASET_SPECS if spec.data_dir_needs or spec.data_dir_use)
            + "." + "".join(
                f" A TFDS data_dir holding {' and '.join(spec.tfds_source_files)} (copied by "
                f"hand, no internet needed) prepares {spec.name} from it; else TFDS downloads "
                "it." for spec in DATASET_SPECS if spec.tfds_source_files
                and not spec.data_dir_needs),
            run=RESUMABLE),
    Setting("image_size", 0,
            "Training resolution; 0 keeps the dataset's native size.",
            at_least=0, zero_means="0: native size", run=FIXED),
    Setting("on_corrupt", "skip",
            "Image files that cannot be decoded (image_folder, flickr25k): skip (left out, "
            "counted in the log and in results.json as num_skipped_images) or raise (stop "
            "with the file's name).",
            choices=ON_CORRUPT),
    Setting("encoder", "resnet50",
            f"{alternatives(ENCODERS)}. vgg16 is keras.applications' VGG16 without "
            "BatchNorm (its layer names and weight shapes, its preprocessing: RGB -> BGR and "
            "ImageNet mean subtraction whatever the dataset), for `init_weights` with its "
            "ImageNet weights. The amdim_* encoders (AMDIM paper Sec. 3.6; ndf/nrkhs/ndepth "
            "128/1024/10, 256/2048/10, 32/256/2) take 32, 64 or 128 px images only.",
            choices=ENCODERS, run=FIXED),
    Setting("stem", "auto",
            "ResNet stem: cifar (3x3, no max-pool), imagenet (7x7 + max-pool), or auto (cifar "
            "up to 64 px).",
            choices=STEMS, run=FIXED),
    Setting("init_weights", "",
            "A Keras weights file to initialise the encoder of a new run from (ignored on "
            "resume: the checkpoint has the weights): .weights.h5 written by save_weights, or "
            "a Keras 2 .h5 such as keras.applications' "
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 for `encoder`=vgg16. Layers "
            "are matched by name; every encoder layer with weights must be in the file with "
            "the same shapes (layers of the file the encoder lacks are reported, not an "
            "error). ~ is expanded. Empty: random initialisation.",
            run=FIXED),
    Setting("code_dim", 128,
            "Code dimension D (bits of the activation code).",
            at_least=1, run=FIXED),
    Setting("head_hidden_dim", 0,
            "Hidden width of the projection head and inference network; 0: the encoder's "
            "output width.",
            at_least=0, zero_means="0: the encoder's output width", run=FIXED),
    Setting("head_batch_norm", False,
            "BatchNorm in the heads (off on CIFAR, as the authors do).",
            run=FIXED),
    Setting("head_scale_by_sqrt_dim", True,
            "Divide head outputs by sqrt(D) before tanh / sigmoid (authors' code).",
            run=FIXED),
    Setting("head_init", "keras",
            "Initialisation of the heads' Dense layers: keras (Glorot kernel, zero bias) or "
            "pytorch (U(+-1/sqrt(fan_in)) for kernel and bias, as the authors' "
            "torch.nn.Linear heads).",
            choices=HEAD_INITIALIZERS, run=FIXED),
    Setting("batch_norm", "sync",
            "sync (statistics over the global batch), per_replica, or per_view (separate "
            "passes for the two views, the authors' behaviour).",
            choices=BATCH_NORM_MODES, run=FIXED),
    Setting("batch_size", 1000,
            "Global batch size K (images; each gives two views).",
            at_least=1, run=FIXED),
    Setting("epochs", 1000, "Training epochs (ignored when `train_steps` > 0).", run=RESUMABLE),
    Setting("train_steps", 0,
            "Total optimizer steps; 0: epochs x steps per epoch.",
            at_least=0, zero_means="0: use epochs", run=RESUMABLE),
    Setting("learning_rate", 3.0,
            "Peak learning rate before scaling.",
            interval=positive(), run=RESUMABLE),
    Setting("learning_rate_scaling", "none",
            "none, linear (x batch/256) or sqrt (x sqrt(batch)).",
            choices=LR_SCALINGS, run=RESUMABLE),
    Setting("warmup_epochs", 10.0,
            "Linear warm-up length in epochs (per-step), then the `lr_schedule`.",
            interval=non_negative(), run=RESUMABLE),
    Setting("weight_decay", 1e-06,
            "Coupled (L2) weight decay, added to the gradient: LARS's (BatchNorm parameters "
            "and biases excluded under `lars_rule`=simclr) or Adam's (every variable, as "
            "torch.optim.Adam's weight_decay; the AMDIM authors: 1e-5).",
            interval=non_negative(), run=RESUMABLE),
    Setting("lars_momentum", 0.9,
            "LARS momentum.",
            interval=unit_interval(high_open=True), run=RESUMABLE),
    Setting("lars_trust_coefficient", 0.001,
            "LARS trust coefficient eta.",
            interval=positive(), run=RESUMABLE),
    Setting("lars_rule", "simclr",
            "Which variables LARS adapts: simclr (BatchNorm parameters and biases get raw "
            "lr*g steps, no weight decay; the reference TF SimCLR), all (every variable gets "
            "weight decay and the trust ratio), authors (all, and zero-initialised variables "
            "never move, as in the NAC authors' LARS).",
            choices=LARS_RULES, run=RESUMABLE),
    Setting("optimizer", "lars",
            "lars (LARS on the trust ratio, `lars_*`) or adam (torch.optim.Adam's update with "
            "coupled L2 weight decay, epsilon 1e-8, `adam_beta1`/2; the AMDIM authors' "
            "optimizer).",
            choices=OPTIMIZERS, run=FIXED),
    Setting("adam_beta1", 0.9,
            "Adam's first-moment decay beta_1 (`optimizer`=adam; the AMDIM authors: 0.8).",
            interval=unit_interval(high_open=True), run=RESUMABLE),
    Setting("adam_beta2", 0.999,
            "Adam's second-moment decay beta_2 (`optimizer`=adam).",
            interval=unit_interval(high_open=True), run=RESUMABLE),
    Setting("lr_schedule", "warmup_cosine",
            "warmup_cosine (linear warm-up over `warmup_epochs`, then cosine decay to 0) or "
            "warmup_step (linear warm-up, then constant, multiplied by `lr_decay_factor` at "
            "each of `lr_decay_fractions`; the AMDIM authors').",
            choices=LR_SCHEDULES, run=RESUMABLE),
    Setting("lr_decay_fractions", "",
            "`lr_schedule`=warmup_step: comma-separated fractions of the training steps at "
            "which the learning rate is multiplied by `lr_decay_factor`, e.g. "
            "0.8333333,0.9333333 (epochs 250 and 280 of 300); empty: no decay.",
            run=RESUMABLE),
    Setting("lr_decay_factor", 0.2,
            "`lr_schedule`=warmup_step: the factor of each decay (the AMDIM authors: 0.2).",
            interval=unit_interval(low_open=True), run=RESUMABLE),
    Setting("augmentation", "simclr",
            "The view recipe: simclr (set by `crop_area_min`, `flip`, `jitter_strength`, "
            "`jitter_prob`, `grayscale_prob`, `blur_prob`: the CIFAR and MoCo-v2 recipes) or "
            "amdim (the AMDIM authors': a flip shared by both views, then per view a reflect-"
            "filled translation by up to 4 px with p = 0.8 up to 32 px, a random-resized crop "
            "(0.3-1) above, colour jitter 0.4/0.4/0.4 and hue 0.2 (0.1 above 64 px) with p = "
            "0.8, grayscale p = 0.25; those six flags must then stay at their defaults).",
            choices=AUGMENTATIONS, run=FIXED),
    Setting("crop_area_min", 0.08,
            "Smallest random-resized-crop area fraction (0.08 CIFAR, 0.2 MoCo-v2).",
            interval=unit_interval(low_open=True), run=FIXED),
    Setting("flip", True, "Random horizontal flips.", run=FIXED),
    Setting("jitter_strength", 1.0,
            "Scales colour jitter (0.4, 0.4, 0.4, 0.1).",
            interval=non_negative(), run=FIXED),
    Setting("jitter_prob", 0.8,
            "Probability of colour jitter.",
            interval=unit_interval(), run=FIXED),
    Setting("grayscale_prob", 0.2,
            "Probability of grayscale.",
            interval=unit_interval(), run=FIXED),
    Setting("blur_prob", 0.0,
            "Probability of Gaussian blur (0 on CIFAR, 0.5 in the MoCo-v2 recipe).",
            interval=unit_interval(), run=FIXED),
    Setting("augment_on", "host",
            "Where the views are augmented: host (all of it in the tf.data input pipeline on "
            "the CPUs) or device (the crop and every random draw on the host, colour jitter, "
            "grayscale and blur inside the train step on the accelerator, for hosts whose "
            "CPUs cannot keep up). The same views either way (bit for bit on CPU; within "
            "float rounding under XLA). Device sends float32 crops, as many bytes as the "
            "host's views. Its speed on GPUs and TPUs is unmeasured.",
            choices=AUGMENT_ON),
    Setting("model_dir", "",
            "Run directory: flags.json, checkpoints/, tensorboard/, results.json."),
    Setting("seed", 0,
            "Random seed (initialisation, data order, augmentation, channel noise).",
            run=FIXED),
    Setting("strategy", "auto",
            "auto, one_device, mirrored, multi_worker or tpu.",
            choices=STRATEGIES),
    Setting("tpu", "", "TPU name or address for `strategy`=tpu (empty: the local TPU VM)."),
    Setting("precision", "float32",
            "float32, mixed_bfloat16, mixed_float16 (losses stay float32) or auto: the "
            "fastest one with native hardware support here (TPU and GPUs of compute "
            "capability >= 8.0: mixed_bfloat16; 7.x: mixed_float16; CPUs with avx512_bf16 or "
            "amx_bf16: mixed_bfloat16, 1.35-1.66x float32's step on a Zen 4, docs/speed.md; "
            "otherwise float32). The run logs what auto picked.",
            choices=PRECISIONS, run=FIXED),
    Setting("jit_compile", False,
            "XLA-compile the per-replica step: for GPUs and TPUs; on CPUs XLA's step is "
            "slower than TensorFlow's oneDNN one (0.65x, ResNet-50; docs/speed.md) and the "
            "trainer says so."),
    Setting("deterministic", False,
            "Op determinism (tf.config.experimental.enable_op_determinism): reruns and "
            "resumed runs give bit-identical weights (nearly always on CPU: rare resumes end "
            "a rounding error away). Cost: none measurable on CPU (quickstart, 300 steps on 2 "
            "cores: 28-39 s against 30-32 s without, within run-to-run noise); on GPUs "
            "deterministic kernels (cuDNN algorithms, scatter and segment sums without "
            "atomics) can be markedly slower."),
    Setting("steps_per_loop", 1,
            "Optimizer steps per tf.function call (larger amortises host overhead).",
            at_least=1),
    Setting("checkpoint_every_steps", 500, "Checkpoint interval in steps.", at_least=1),
    Setting("keep_checkpoints", 3, "How many recent checkpoints to keep.", at_least=1),
    Setting("log_every_steps", 10,
            "Interval in steps of the TensorBoard scalars and of the histogram of the code "
            "pre-activations.",
            at_least=1),
    Setting("knn_k", 200, "Neighbours of the kNN monitor.", at_least=1),
    Setting("knn_temperature", 0.1, "Vote temperature of the kNN monitor.", interval=positive()),
    Setting("linear_eval_epochs", 100,
            "Epochs of each linear-probe fit in the final evaluation (learning rate searched "
            "over 0.01, 0.1, 1, 10); 0 skips the linear probe.",
            at_least=0, zero_means="0 skips the linear probe"),
    Setting("linear_eval_augment", True,
            "Train the final linear probe on training images padded by 4 pixels, randomly "
            "cropped back and flipped, afresh every epoch (the linear-evaluation protocol, as "
            "nac-linear-eval `augment`; test images unaugmented). The encoder then runs "
            "inside the probe's training loop (quickstart: 36 s instead of 4.5 s per "
            "evaluation on 2 CPU cores), and the 4-pixel shift is meant for 32 px and larger "
            "images: on the quickstart's 8 px digits it drops linear top-1 from 96 % to 57 %. "
            "The MLP probe (`mlp_eval_epochs`) follows this setting too."),
    Setting("mlp_eval_epochs", 0,
            "Epochs of each MLP-probe fit in the final evaluation (AMDIM's MLP evaluation: "
            "dropout 0.2, 1024 hidden units with BatchNorm and ReLU; learning rate searched "
            "over 0.01, 0.1, 1); 0 (the default) skips it.",
            at_least=0, zero_means="0 skips the MLP probe"),
    Setting("evaluate", True,
            "Evaluate the encoder (and its random initialisation) when training ends."),
    Setting("eval_every_steps", 0,
            "Evaluate the current online networks every this many steps (0: never; chief "
            "only, datasets held in memory): kNN top-1 of the test split against the train "
            "split (`knn_k`, `knn_temperature`; not for multi-label data) and, on "
            "cifar10_hashing and flickr25k, the Hamming mAP@all of `eval_num_queries` fixed "
            "queries (`eval_queries`). TensorBoard eval/knn_top1, eval/map_all; "
            "trajectory.json and results.json[\"trajectory\"] (kept across resumes). Cost on "
            "the quickstart (digits, 2 CPU cores): 0.04-0.5 s per evaluation.",
            at_least=0, zero_means="0: no evaluation during training"),
    Setting("eval_num_queries", 1000,
            "Number of fixed, seeded queries of the mAP of `eval_every_steps`.",
            at_least=1),
    Setting("eval_queries", "protocol",
            "Which queries score the mAP of `eval_every_steps`: protocol (a subset of the "
            "retrieval protocol's queries, against the whole database) or validation "
            "(database images that are not pretraining images, against the rest of the "
            "database: a trajectory that chooses anything never sees the protocol's "
            "queries).", choices=EVAL_QUERY_SETS),
    Setting("allow_flag_changes", False,
            "Resume a model_dir whose flags.json differs in the length of training, the "
            "learning-rate schedule, the optimizer's hyperparameters or data_dir "
            "(config.RESUMABLE_RUN_FIELDS; recorded in flag_changes.json). Changes to the "
            "networks, method, objective, data, views, batch, seed or precision are refused "
            "even so."),
)

# The fields of augmentation="simclr" (nac_tf.recipes.augmentation_config).
SIMCLR_AUGMENTATION_FIELDS = ("crop_area_min", "flip", "jitter_strength", "jitter_prob",
                              "grayscale_prob", "blur_prob")

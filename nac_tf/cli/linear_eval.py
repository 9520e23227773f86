"""nac-linear-eval: linear and MLP evaluation (docs/protocols.md section 2) and the kNN
monitor of an exported SavedModel.

    nac-linear-eval --saved_model=runs/x/saved_model --dataset=cifar10
        [--data_dir=...] [--image_size=0] [--seed=0] [--epochs=100]
        [--learning_rates=0.01,0.1,1,10] [--batch_size=256] [--validation_fraction=0.1]
        [--augment] [--knn_k=200] [--output=<saved_model>/linear_eval_<dataset>.json]
        [--classifier=linear|mlp|both] [--mlp_learning_rates=0.01,0.1,1]
        [--mlp_hidden_dim=1024] [--mlp_dropout=0.2]
    python -m nac_tf.cli.linear_eval ...

The frozen encoder is the SavedModel's `features` signature (inference-mode BatchNorm, no
projection head). A linear classifier on the training split's features is trained with SGD
(Nesterov momentum 0.9, no regularisation) at every rate of --learning_rates against a
validation split held out of the training split; the best rate is retrained on the whole
training split and top-1 accuracy on the test split is reported, with the kNN top-1. With
--augment the training images get pad-and-crop + flip afresh every epoch, through the
SavedModel. --classifier=mlp (or both) trains AMDIM's MLP classifier (dropout, a hidden
layer with BatchNorm and ReLU, dropout, linear) by the same protocol, with its own candidate
rates. Multi-label datasets (flickr25k) are refused: top-1 needs class ids.

Writes a JSON report and prints a summary. Flags are checked before TensorFlow is imported;
a bad flag exits with code 2 and a message naming it.
"""
import os

from absl import flags

from nac_tf.cli import checks, common
from nac_tf.config import DATASETS, ConfigError


# The datasets this command evaluates that are loaded at the image_size flag.
_RESIZED = [name for name in checks.RESIZING_DATASETS
            if name not in checks.MULTI_LABEL_DATASETS]


def define_flags(flag_values=flags.FLAGS):
    define = common.define_evaluation_data_flags(
        flag_values,
        dataset_help=f"Dataset to evaluate on: one of {', '.join(DATASETS)} (not "
        f"{', '.join(checks.MULTI_LABEL_DATASETS)}: multi-label, not "
        f"{', '.join(checks.STREAMED_DATASETS)}: streamed).",
        image_size_help=f"Size the resizing loaders ({', '.join(_RESIZED)}) load images at; "
        "0: the SavedModel's training size.",
        seed_help="Seed of the dataset's split and of the probes (validation split, "
        "mini-batch order, augmentation; the MLP's initialisation and dropout).")
    define("integer", "epochs", 100, "Training epochs of every classifier (linear and MLP).")
    define("list", "learning_rates", ["0.01", "0.1", "1", "10"], "Candidate learning "
           "rates of the linear probe, comma-separated; one rate skips the validation split.")
    define("integer", "batch_size", 256, "Mini-batch of the classifier and images per "
           "SavedModel call.")
    define("float", "validation_fraction", 0.1, "Held-out share of the training split for "
           "the rate search, or a whole number >= 1 of held-out examples.")
    define("bool", "augment", False, "The CIFAR recipe on training images every epoch: "
           "4-pixel zero padding, random crop back, horizontal flip (the encoder runs in the "
           "training loop: much slower; meant for 32x32 and larger).")
    define("integer", "knn_k", 200, "Neighbours of the kNN monitor; 0 skips it.")
    define("string", "classifier", "linear", "Which probes to train: linear, mlp (AMDIM's "
           "MLP evaluation) or both. --epochs, --batch_size, --validation_fraction and "
           "--augment apply to each.")
    define("list", "mlp_learning_rates", ["0.01", "0.1", "1"], "Candidate learning rates of "
           "the MLP probe, comma-separated.")
    define("integer", "mlp_hidden_dim", 1024, "Hidden units of the MLP probe.")
    define("float", "mlp_dropout", 0.2, "Dropout rate of the MLP probe's two dropout layers, "
           "in [0, 1).")
    define("string", "output", "", "JSON report path; empty: "
           "<saved_model>/linear_eval_<dataset>.json.")


KNN_TEMPERATURE = 0.1  # report.EvaluationConfig's default, the trainer's monitor
# --classifier: the probes each choice trains.
CLASSIFIERS = {"linear": ("linear",), "mlp": ("mlp",), "both": ("linear", "mlp")}
REFUSED = {name: "is multi-label and linear top-1 needs one class id per image; evaluate "
                  "it with nac-hash-retrieval" for name in checks.MULTI_LABEL_DATASETS}


def validate_flags():
    """The settings as a dict, or ConfigError naming the first unusable flag."""
    FLAGS = flags.FLAGS
    settings = common.evaluation_data_settings(refuse=REFUSED)
    settings.update({
        "epochs": checks.check_int("epochs", FLAGS.epochs, 1),
        "learning_rates": checks.parse_learning_rates(FLAGS.learning_rates),
        "batch_size": checks.check_int("batch_size", FLAGS.batch_size, 1),
        "validation_fraction": checks.parse_validation_fraction(
            FLAGS.validation_fraction),
        "augment": FLAGS.augment,
        "knn_k": checks.check_int("knn_k", FLAGS.knn_k, 0, " (0 skips kNN)"),
    })
    if FLAGS.classifier not in CLASSIFIERS:
        raise ConfigError("classifier", f"{FLAGS.classifier!r} is not one of: "
                          f"{', '.join(CLASSIFIERS)}")
    settings["classifiers"] = CLASSIFIERS[FLAGS.classifier]
    if "mlp" in settings["classifiers"]:
        if not 0.0 <= FLAGS.mlp_dropout < 1.0:
            raise ConfigError("mlp_dropout", f"{FLAGS.mlp_dropout!r} must be a number in "
                              "[0, 1)")
        settings.update({
            "mlp_learning_rates": checks.parse_learning_rates(FLAGS.mlp_learning_rates,
                                                              "mlp_learning_rates"),
            "mlp_hidden_dim": checks.check_int("mlp_hidden_dim", FLAGS.mlp_hidden_dim, 1),
            "mlp_dropout": FLAGS.mlp_dropout})
    settings["output"] = checks.output_path(
        "output", FLAGS.output,
        os.path.join(settings["saved_model"], f"linear_eval_{FLAGS.dataset}.json"))
    return settings


def _check_validation_split(settings, num_train):
    """The rate search needs at least one example on each side of the held-out split."""
    rates = {"linear": settings["learning_rates"], "mlp": settings.get("mlp_learning_rates")}
    if all(len(rates[name]) == 1 for name in settings["classifiers"]):
        return
    fraction = settings["validation_fraction"]
    held_out = fraction if isinstance(fraction, int) else int(round(fraction * num_train))
    if not 1 <= held_out <= num_train - 1:
        raise ConfigError("validation_fraction", f"{fraction!r} holds out {held_out} of the "
                          f"{num_train} training images; the learning-rate search needs at "
                          "least one on each side")


def evaluate(settings):
    """Loads model and data, runs kNN and the linear and/or MLP evaluation; the report dict.

    Per probe run (`settings["classifiers"]`): <name>_top1, <name>_learning_rate,
    <name>_validation_top1 and <name> (the protocol's result); <name>_top1 is None for a
    probe not run, as knn_top1 without kNN.
    """
    from nac_tf.evaluation.evaluators import Embeddings
    from nac_tf.evaluation.linear import LinearEvalConfig
    from nac_tf.evaluation.mlp import MLPEvalConfig
    from nac_tf.evaluation.report import EvaluationConfig, classification_evaluators
    from nac_tf.data.catalog import load_arrays_source
    from nac_tf.export import load_exported_model

    metadata = settings["metadata"]
    source = load_arrays_source(
        settings["dataset"], settings["data_dir"],
        settings["image_size"] or metadata["image_size"], settings["seed"])
    if source.multi_label:
        raise ConfigError("dataset", f"{settings['dataset']} has multi-hot labels; linear "
                          "top-1 needs one class id per image")
    _check_validation_split(settings, source.num_train)
    model = load_exported_model(settings["saved_model"])
    batch_size = settings["batch_size"]
    data = Embeddings(model, source, batch_size, progress=True)
    train_features = data("train")
    data("test")  # embedded now, with its progress bar, whichever probe asks for it first
    shared = dict(epochs=settings["epochs"], batch_size=batch_size,
                  validation_fraction=settings["validation_fraction"], seed=settings["seed"],
                  augment=settings["augment"])
    probes = {}
    if "linear" in settings["classifiers"]:
        probes["linear"] = LinearEvalConfig(learning_rates=settings["learning_rates"],
                                            **shared)
    if "mlp" in settings["classifiers"]:
        probes["mlp"] = MLPEvalConfig(learning_rates=settings["mlp_learning_rates"],
                                      hidden_dim=settings["mlp_hidden_dim"],
                                      dropout=settings["mlp_dropout"], **shared)
    # The trainer's final evaluation's evaluators. The augmented protocol trains through the
    # model on the images; kNN is computed on the features either way.
    evaluation = EvaluationConfig(knn_k=settings["knn_k"], knn_temperature=KNN_TEMPERATURE,
                                  linear=probes.get("linear"), mlp=probes.get("mlp"),
                                  retrieval=False, batch_size=batch_size)
    metrics = {}
    for evaluator in classification_evaluators(evaluation):
        metrics.update(evaluator(data))
    results = {"linear_top1": None, "mlp_top1": None}
    for name in probes:
        result = metrics[name]
        results.update({f"{name}_top1": metrics[f"{name}_top1"],
                        f"{name}_learning_rate": result["learning_rate"],
                        f"{name}_validation_top1": result["validation_top1"],
                        name: result})
    return {
        **common.evaluation_report_header("linear_eval", settings, source),
        "num_classes": source.num_classes,
        "feature_dim": int(train_features.shape[1]),
        **results,
        "knn_top1": metrics.get("knn_top1"),
        "protocol": {
            "features": "h of the SavedModel's features signature: encoder frozen, "
                        "inference-mode BatchNorm, projection head removed",
            "splits": "classifiers train on the training split (the rate search holds a "
                      "stratified validation split out of it); top-1 on the test split",
            "classifiers": list(probes),
            **{name: probe.to_dict() for name, probe in probes.items()},
            "augment": ("training images padded by 4 pixels, randomly cropped back and "
                        "flipped, afresh every epoch" if settings["augment"]
                        else "none: features computed once"),
            "knn": metrics.get("knn"),
        },
        "metadata": metadata,
    }


def print_summary(report, output):
    kinds = " and ".join({"linear": "Linear", "mlp": "MLP"}[name]
                         for name in report["protocol"]["classifiers"])
    print(f"{kinds} evaluation of {report['metadata']['method']} ({report['saved_model']}) "
          f"on {report['dataset']}: {report['num_train']} training / {report['num_test']} "
          f"test images, {report['feature_dim']}-d features")
    for name in report["protocol"]["classifiers"]:
        rates = report[f"{name}_validation_top1"]
        search = ("; validation top-1: " + ", ".join(f"{rate} -> {100 * top1:.2f}%"
                                                      for rate, top1 in rates.items())
                  if rates else " (the only candidate)")
        print(f"  {name + ' top-1':<13} {100 * report[f'{name}_top1']:6.2f}%  (learning rate "
              f"{report[f'{name}_learning_rate']:g}{search})")
    if report["knn_top1"] is not None:
        knn = report["protocol"]["knn"]
        print(f"  kNN top-1     {100 * report['knn_top1']:6.2f}%  (k={knn['k']}, "
              f"temperature {knn['temperature']:g})")
    print(f"Report: {output}")


def main(argv):
    common.run_report_tool(argv, validate_flags, evaluate, print_summary)


def run(argv=None):
    """The `nac-linear-eval` console script."""
    common.run(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
    run()

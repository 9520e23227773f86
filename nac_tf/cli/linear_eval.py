"""nac-linear-eval: linear evaluation (docs/protocols.md section 2) and the kNN monitor of an
exported SavedModel.

    nac-linear-eval --saved_model=runs/x/saved_model --dataset=cifar10
        [--data_dir=...] [--image_size=0] [--seed=0] [--epochs=100]
        [--learning_rates=0.01,0.1,1,10] [--batch_size=256] [--validation_fraction=0.1]
        [--augment] [--knn_k=200] [--output=<saved_model>/linear_eval_<dataset>.json]
    python -m nac_tf.cli.linear_eval ...

The frozen encoder is the SavedModel's `features` signature (inference-mode BatchNorm, no
projection head). A linear classifier on the training split's features is trained with SGD
(Nesterov momentum 0.9, no regularisation) at every rate of --learning_rates against a
validation split held out of the training split; the best rate is retrained on the whole
training split and top-1 accuracy on the test split is reported, with the kNN top-1. With
--augment the training images get pad-and-crop + flip afresh every epoch, through the
SavedModel. Multi-label datasets (flickr25k) are refused: top-1 needs class ids.

Writes a JSON report and prints a summary. Flags are checked before TensorFlow is imported;
a bad flag exits with code 2 and a message naming it.
"""
import os

from absl import flags

from nac_tf.cli import checks, common
from nac_tf.config import DATASETS, ConfigError
from nac_tf.evaluation import exported_evaluation


def define_flags(flag_values=flags.FLAGS):
    define = common.define_evaluation_data_flags(
        flag_values,
        dataset_help=f"Dataset to evaluate on: one of {', '.join(DATASETS)} (not flickr25k: "
        "multi-label, not imagenet2012: streamed).",
        image_size_help="Size the resizing loaders (digits, image_folder) load images at; "
        "0: the SavedModel's training size.",
        seed_help="Seed of the dataset's split and of the linear evaluation (validation "
        "split, mini-batch order, augmentation).")
    define("integer", "epochs", 100, "Training epochs of every linear classifier.")
    define("list", "learning_rates", ["0.01", "0.1", "1", "10"], "Candidate learning "
           "rates, comma-separated; one rate skips the validation split.")
    define("integer", "batch_size", 256, "Mini-batch of the classifier and images per "
           "SavedModel call.")
    define("float", "validation_fraction", 0.1, "Held-out share of the training split for "
           "the rate search, or a whole number >= 1 of held-out examples.")
    define("bool", "augment", False, "The CIFAR recipe on training images every epoch: "
           "4-pixel zero padding, random crop back, horizontal flip (the encoder runs in the "
           "training loop: much slower; meant for 32x32 and larger).")
    define("integer", "knn_k", 200, "Neighbours of the kNN monitor; 0 skips it.")
    define("string", "output", "", "JSON report path; empty: "
           "<saved_model>/linear_eval_<dataset>.json.")


KNN_TEMPERATURE = 0.1  # report.EvaluationConfig's default, the trainer's monitor
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
    settings["output"] = checks.output_path(
        "output", FLAGS.output,
        os.path.join(settings["saved_model"], f"linear_eval_{FLAGS.dataset}.json"))
    return settings


def _check_validation_split(settings, num_train):
    """The rate search needs at least one example on each side of the held-out split."""
    if len(settings["learning_rates"]) == 1:
        return
    fraction = settings["validation_fraction"]
    held_out = fraction if isinstance(fraction, int) else int(round(fraction * num_train))
    if not 1 <= held_out <= num_train - 1:
        raise ConfigError("validation_fraction", f"{fraction!r} holds out {held_out} of the "
                          f"{num_train} training images; the learning-rate search needs at "
                          "least one on each side")


def evaluate(settings):
    """Loads model and data, runs kNN and the linear evaluation; the report dict."""
    from nac_tf.evaluation.linear import LinearEvalConfig
    from nac_tf.evaluation.report import EvaluationConfig, classification_metrics
    from nac_tf.export import load_exported_model

    metadata = settings["metadata"]
    source = checks.load_arrays_source(
        settings["dataset"], settings["data_dir"],
        settings["image_size"] or metadata["image_size"], settings["seed"])
    if source.multi_label:
        raise ConfigError("dataset", f"{settings['dataset']} has multi-hot labels; linear "
                          "top-1 needs one class id per image")
    _check_validation_split(settings, source.num_train)
    model = load_exported_model(settings["saved_model"])
    batch_size = settings["batch_size"]
    train_features = exported_evaluation.embed_images(
        model, source.train_images, batch_size, "features", "the training split")
    test_features = exported_evaluation.embed_images(
        model, source.test_images, batch_size, "features", "the test split")
    linear_config = LinearEvalConfig(
        epochs=settings["epochs"], batch_size=batch_size,
        learning_rates=settings["learning_rates"],
        validation_fraction=settings["validation_fraction"], seed=settings["seed"],
        augment=settings["augment"])
    # The augmented protocol trains through the model on the images (the trainer's final
    # evaluation takes the same path); kNN is computed on the features either way.
    evaluation = EvaluationConfig(knn_k=settings["knn_k"], knn_temperature=KNN_TEMPERATURE,
                                  linear=linear_config, retrieval=False, batch_size=batch_size)
    metrics = classification_metrics(train_features, source.train_labels, test_features,
                                     source.test_labels, source.num_classes, evaluation,
                                     progress=True,
                                     images=(model, source.train_images, source.test_images))
    linear = metrics["linear"]
    return {
        **common.evaluation_report_header("linear_eval", settings, source),
        "num_classes": source.num_classes,
        "feature_dim": int(train_features.shape[1]),
        "linear_top1": metrics["linear_top1"],
        "linear_learning_rate": linear["learning_rate"],
        "linear_validation_top1": linear["validation_top1"],
        "knn_top1": metrics.get("knn_top1"),
        "linear": linear,
        "protocol": {
            "features": "h of the SavedModel's features signature: encoder frozen, "
                        "inference-mode BatchNorm, projection head removed",
            "splits": "classifiers train on the training split (the rate search holds a "
                      "stratified validation split out of it); top-1 on the test split",
            "linear": linear_config.to_dict(),
            "augment": ("training images padded by 4 pixels, randomly cropped back and "
                        "flipped, afresh every epoch" if settings["augment"]
                        else "none: features computed once"),
            "knn": metrics.get("knn"),
        },
        "metadata": metadata,
    }


def print_summary(report, output):
    rates = report["linear_validation_top1"]
    search = ("; validation top-1: " + ", ".join(f"{rate} -> {100 * top1:.2f}%"
                                                  for rate, top1 in rates.items())
              if rates else " (the only candidate)")
    print(f"Linear evaluation of {report['metadata']['method']} ({report['saved_model']}) on "
          f"{report['dataset']}: {report['num_train']} training / {report['num_test']} test "
          f"images, {report['feature_dim']}-d features")
    print(f"  linear top-1  {100 * report['linear_top1']:6.2f}%  (learning rate "
          f"{report['linear_learning_rate']:g}{search})")
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

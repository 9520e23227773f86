"""What the command-line tools over exported SavedModels share (tools/linear_eval.py,
tools/hash_retrieval.py): flag checks, embedding with a progress bar, the hash-retrieval
report, JSON and plot output.

Importing this module does not import TensorFlow: the tools check their flags with it first
and only then pay for TensorFlow. Functions that need TensorFlow, Keras, the data loaders or
matplotlib import them when called. Flag errors are `nac_tf.config.ConfigError`s, whose
message starts with the flag (`--saved_model: ...`); the tools print them as
`error: <message>` and exit with code 2.
"""
import json
import math
import os
import re
import sys
import time

import numpy as np

from nac_tf.config import DATASETS, ConfigError, validate_data_flags

# Multi-hot labels (no class ids: no top-1 accuracy).
MULTI_LABEL_DATASETS = ("flickr25k",)
# Streamed from TFDS, never held in memory: the tools evaluate arrays only.
STREAMED_DATASETS = ("imagenet2012",)
# nac_tf.export.METADATA_FILE inside the SavedModel's assets/ (export imports TensorFlow).
EXPORT_METADATA = os.path.join("assets", "nac_tf_export.json")
PLOT_INSTALL_HINT = 'pip install "nac_tf[plot]"'
FLAG_ERROR_EXIT_CODE = 2



# ------------------------------------------------------------------------ flag parsing

def parse_flags(flag_values, argv):
    """app.run's flags_parser: absl's parse errors as `error: --flag: ...`, exit code 2.

    absl itself prints "FATAL Flags parsing error" and exits with 1; the tools answer every
    unusable flag the same way, whether absl or the tool's own checks find it.
    """
    from absl import flags  # light; the tools have imported it already

    try:
        return flag_values(argv)
    except flags.Error as error:
        exit_with_flag_error(_absl_error_message(error))


def _absl_error_message(error):
    message = str(error)
    # IllegalFlagValueError reads "flag --NAME=VALUE: REASON".
    match = re.match(r"flag --([\w.-]+)=(.*?): (.*)$", message, re.DOTALL)
    if match:
        name, value, reason = match.groups()
        return f"--{name}: {reason} (received {value!r})"
    name = getattr(error, "flagname", None)
    if name:
        return f"--{name}: unknown flag (--helpshort lists the flags)"
    return message


def exit_with_flag_error(error):
    """Prints `error: <message>` on stderr and exits with code 2."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(FLAG_ERROR_EXIT_CODE)


def reject_arguments(argv):
    """Exits with code 2 on positional arguments (a flag written without --)."""
    if len(argv) > 1:
        exit_with_flag_error(f"unexpected arguments {' '.join(argv[1:])!r}; every setting "
                             "is a --flag")


# ------------------------------------------------------------------------- flag checks

def check_saved_model(saved_model):
    """The export's metadata (assets/nac_tf_export.json), or ConfigError("saved_model")."""
    hint = "a directory written by tools/export_saved_model.py"
    if not saved_model:
        raise ConfigError("saved_model", f"is required ({hint})")
    if not os.path.isdir(saved_model):
        raise ConfigError("saved_model", f"{saved_model!r} is not a directory ({hint})")
    if not os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
        raise ConfigError("saved_model", f"{saved_model!r} holds no saved_model.pb; expected "
                          f"{hint}")
    path = os.path.join(saved_model, EXPORT_METADATA)
    if not os.path.isfile(path):
        raise ConfigError("saved_model", f"{saved_model!r} has no {EXPORT_METADATA}: it is "
                          f"not an nac_tf export; expected {hint}")
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigError("saved_model", f"cannot read {path}: {error}") from None
    if not isinstance(metadata, dict):
        raise ConfigError("saved_model", f"{path} does not hold a JSON object; re-export "
                          "with tools/export_saved_model.py")
    missing = [key for key in ("method", "image_size", "feature_dim", "code_dim")
               if key not in metadata]
    if missing:
        raise ConfigError("saved_model", f"{path} lacks {', '.join(missing)}; re-export with "
                          "tools/export_saved_model.py")
    return metadata


def check_dataset(dataset, data_dir, refuse=None):
    """ConfigError for an unknown --dataset or a --data_dir it cannot use.

    `nac_tf.config.validate_data_flags` plus what the tools cannot evaluate.
    `refuse`: {dataset: why this tool cannot evaluate it} ("is multi-label ...").
    """
    accepted = ", ".join(DATASETS)
    if not dataset:
        raise ConfigError("dataset", f"is required; one of: {accepted}")
    if dataset not in DATASETS:
        raise ConfigError("dataset", f"{dataset!r} is not one of: {accepted}")
    if dataset in STREAMED_DATASETS:
        raise ConfigError("dataset", f"{dataset} is streamed from TFDS, never held in memory; "
                          "these tools evaluate datasets held as arrays (digits, cifar10, "
                          "npz, image_folder, cifar10_hashing, flickr25k)")
    if refuse and dataset in refuse:
        raise ConfigError("dataset", f"{dataset} {refuse[dataset]}")
    validate_data_flags(dataset, data_dir)


def check_int(flag, value, minimum, meaning=""):
    """ConfigError unless `value` is an integer >= minimum; returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(flag, f"{value!r} must be an integer >= {minimum}{meaning}")
    return value


def parse_learning_rates(values):
    """--learning_rates (absl list of strings) -> tuple of positive finite floats."""
    if not values:
        raise ConfigError("learning_rates", "needs at least one rate, e.g. 0.01,0.1,1,10")
    rates = []
    for text in values:
        try:
            rate = float(text)
        except ValueError:
            raise ConfigError("learning_rates", f"{text!r} is not a number") from None
        if not math.isfinite(rate) or rate <= 0:
            raise ConfigError("learning_rates", f"{text!r} must be a positive finite number")
        if rate in rates:
            raise ConfigError("learning_rates", f"{text!r} is repeated")
        rates.append(rate)
    return tuple(rates)


def parse_validation_fraction(value):
    """A fraction in (0, 1), or a whole number >= 1 of held-out examples (as an int)."""
    if math.isfinite(value) and 0.0 < value < 1.0:
        return float(value)
    if math.isfinite(value) and value >= 1 and value == int(value):
        return int(value)
    raise ConfigError("validation_fraction", f"{value!r} must be a fraction in (0, 1) or a "
                      "whole number >= 1 of held-out training examples")


def output_path(flag, path, default):
    """`path`, or `default` when it is empty; ConfigError if it cannot be written there."""
    path = os.path.abspath(path or default)
    if os.path.isdir(path):
        raise ConfigError(flag, f"{path!r} is a directory; give a file path")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ConfigError(flag, f"the directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(flag, f"the directory {parent!r} is not writable")
    return path


# ---------------------------------------------------------------------- data and model

def load_arrays_source(dataset, data_dir, image_size, seed):
    """`load_source` for the tools: errors about the data become ConfigError("data_dir")."""
    from nac_tf.data.sources import load_source

    try:
        source = load_source(dataset, data_dir=data_dir or None, image_size=image_size or None,
                             seed=seed)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError("data_dir", f"cannot load --dataset={dataset}: {error}") from None
    if not source.has_arrays:
        raise ConfigError("dataset", f"{dataset} is streamed; these tools need a dataset "
                          "held in memory")
    return source


def embed_images(model, images, batch_size, output, label=None):
    """`report.embed` of one output over `images` in slices, with a Keras progress bar
    (printed when `label` is given). The batches are embed's, so the values are too."""
    from nac_tf.evaluation.report import embed

    if label is None or not len(images):
        return embed(model, images, batch_size, (output,))[output]
    import keras

    print(f"Embedding {label} ({len(images)} images, {output})")
    bar = keras.utils.Progbar(len(images), unit_name="image")
    parts = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        parts.append(embed(model, images[start:stop], batch_size, (output,))[output])
        bar.update(stop)
    return np.concatenate(parts)


def float_image_encoder(model):
    """encode_fn for `linear_evaluation_from_images` over an `ExportedModel`.

    The linear evaluation hands the encoder float images in [0, 1]; the export takes uint8.
    x = uint8 / 255 round-trips exactly through round(x * 255), so un-augmented features are
    the SavedModel's own. The export's `features` function is a tf.function, so this traces.
    """
    import tensorflow as tf

    features = model.module.features

    def encode(images):
        pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
        return features(pixels)["features"]

    return encode


def retrieval_sets(source):
    """(query images, query labels, database images, database labels, description).

    The hashing datasets' own protocol (`source.retrieval`, docs/protocols.md section 2); for every
    other dataset the test split queries the training split.
    """
    arrays = source.retrieval
    if arrays is not None:
        description = {"queries": "the dataset's retrieval queries (docs/protocols.md section 2)",
                       "database": "the dataset's retrieval database (docs/protocols.md "
                                   "section 2), which includes the pretraining images",
                       "num_train": int(arrays.num_train),
                       "num_dropped": int(arrays.num_dropped)}
        return (arrays.query_images, arrays.query_labels, arrays.database_images,
                arrays.database_labels, description)
    description = {"queries": "the test split",
                   "database": "the training split (the dataset has no retrieval protocol of "
                               "its own, so the test split queries the training split)"}
    return (source.test_images, source.test_labels, source.train_images, source.train_labels,
            description)


# ---------------------------------------------------------------------------- metrics

def queries_without_relevant_items(query_labels, database_labels):
    """How many queries share no label with any database item (class ids or multi-hot)."""
    query_labels, database_labels = np.asarray(query_labels), np.asarray(database_labels)
    if query_labels.ndim == 1:
        return int(np.sum(~np.isin(query_labels, database_labels)))
    present = np.any(database_labels > 0, axis=0)
    return int(np.sum(~np.any((query_labels > 0) & present, axis=1)))


def hash_retrieval_metrics(query_codes, database_codes, query_labels, database_labels,
                           top_k=None, ties="stable", empty_queries="exclude",
                           authors_inner_product=False):
    """The retrieval metrics of docs/protocols.md section 2 on packed codes; a JSON-ready dict.

    mAP@all with stable and with expected ties; mAP@k (when `top_k`) with `ties`; precision
    within Hamming radius 2 (empty ball = 0) and the count of empty balls; the
    precision-recall curve over radii 0..D; the NAC authors' inner-product mAP when asked
    (a compatibility number, not Hamming ranking). `empty_queries` applies to every mAP
    and to the curve.
    """
    from nac_tf.evaluation import retrieval

    args = (query_codes, database_codes, query_labels, database_labels)
    stable = retrieval.average_precisions(*args, ties="stable", empty_queries=empty_queries,
                                          packed=True)
    expected = retrieval.average_precisions(*args, ties="expected",
                                            empty_queries=empty_queries, packed=True)
    radius = retrieval.precision_within_hamming_radius(*args, radius=2, packed=True)
    curve = retrieval.precision_recall_curve(*args, empty_queries=empty_queries, packed=True)
    report = {
        "map_all": stable.mean,
        "map_all_expected_ties": expected.mean,
        "precision_radius2": radius.mean_precision,
        "num_empty_radius2_balls": radius.num_empty,
        "num_excluded_queries": stable.num_excluded,
        "num_queries_without_relevant": queries_without_relevant_items(query_labels,
                                                                       database_labels),
        "precision_recall_curve": {
            "radius": curve.radius, "precision": curve.precision, "recall": curve.recall,
            "num_empty_balls": curve.num_empty_balls,
            "num_excluded_queries": curve.num_excluded},
    }
    if top_k is not None:
        at_k = retrieval.average_precisions(*args, top_k=top_k, ties=ties,
                                            empty_queries=empty_queries, packed=True)
        report["map_at_k"] = at_k.mean
        report["num_excluded_queries_at_k"] = at_k.num_excluded
    if authors_inner_product:
        compatibility = {
            "ranking": "the NAC authors' evaluation: {0,1} codes ranked by inner product "
                       "(shared 1-bits, descending, ties in database order); NOT Hamming "
                       "ranking, for comparison with the paper's tables only",
            "map_all": retrieval.inner_product_map(*args, empty_queries=empty_queries,
                                                   packed=True)}
        if top_k is not None:
            compatibility["map_at_k"] = retrieval.inner_product_map(
                *args, top_k=top_k, empty_queries=empty_queries, packed=True)
        report["authors_inner_product"] = compatibility
    return json_ready(report)


# ----------------------------------------------------------------------------- output

def json_ready(value):
    """Plain Python for json.dump: NumPy scalars and arrays converted, NaN / inf as None
    (strict JSON has no NaN; a mAP is NaN when every query was excluded)."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path, report):
    """Writes `report` (made JSON-ready) to `path` atomically: write, then rename."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(json_ready(report), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def plot_precision_recall(curve, path, title):
    """The hashing precision-recall curve (one point per Hamming radius) as a PNG.

    matplotlib (the `plot` extra) is imported here; ImportError with the install hint when
    it is missing. A Figure with an Agg canvas, not pyplot: no global backend state.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"the precision-recall plot needs matplotlib: "
                          f"{PLOT_INSTALL_HINT}") from None
    precision = np.asarray(curve["precision"], np.float64)
    recall = np.asarray(curve["recall"], np.float64)
    figure = Figure(figsize=(5.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(recall, precision, marker="o", markersize=3, linewidth=1.5)
    for radius in (0, 2):  # the radii the hashing literature quotes
        if radius < len(recall) and np.isfinite(precision[radius]):
            axes.annotate(f"r={radius}", (recall[radius], precision[radius]),
                          textcoords="offset points", xytext=(6, -12), fontsize=8)
    axes.set_xlim(0.0, 1.02)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")


def run_report_tool(argv, validate_flags, evaluate, print_summary, finish=None):
    """A tool's main: check the flags (exit 2 on a bad one), evaluate, add `finish`'s extras
    (e.g. a plot) to the report, write the JSON report and print its summary."""
    reject_arguments(argv)
    try:
        settings = validate_flags()
        started = time.time()
        report = evaluate(settings)
    except ConfigError as error:  # a flag, or what it names (e.g. a bad archive) once loaded
        exit_with_flag_error(error)
    report["seconds"] = round(time.time() - started, 2)
    if finish is not None:
        finish(report, settings)
    write_json(settings["output"], report)
    print_summary(report, settings["output"])

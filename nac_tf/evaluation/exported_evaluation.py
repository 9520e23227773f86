"""Evaluating an exported model (`nac_tf.export.ExportedModel`): embedding with a progress
bar, the hash-retrieval report, JSON and plot output.

The evaluation commands (`nac-linear-eval`, `nac-hash-retrieval`, in `nac_tf.cli`) and the
trainer's evaluation (`nac_tf.evaluation.report`) build on it. Importing this module does
not import TensorFlow: functions that need TensorFlow, Keras or matplotlib import them when
called.
"""
import math

import numpy as np

from nac_tf import run_directory

PLOT_INSTALL_HINT = 'pip install "nac_tf[plot]"'


# ---------------------------------------------------------------------- embedding

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
    """Writes `report`, made JSON-ready (`json_ready`), to `path` atomically
    (`nac_tf.run_directory.write_json`)."""
    run_directory.write_json(path, json_ready(report))


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


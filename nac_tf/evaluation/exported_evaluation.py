"""The output of the evaluation commands (`nac-linear-eval`, `nac-hash-retrieval`, in
`nac_tf.cli`): JSON-ready reports and the precision-recall plot. Their metrics are the
evaluators' (`nac_tf.evaluation.evaluators`).

Importing this module does not import TensorFlow; matplotlib is imported when a plot is
drawn.
"""
import math

import numpy as np

from nac_tf import run_directory

PLOT_INSTALL_HINT = 'pip install "nac_tf[plot]"'


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


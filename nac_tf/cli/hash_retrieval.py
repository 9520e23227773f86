"""nac-hash-retrieval: hash-code retrieval (docs/protocols.md section 2) with an exported
SavedModel's codes.

    nac-hash-retrieval --saved_model=runs/x/saved_model --dataset=cifar10_hashing
        [--data_dir=...] [--image_size=0] [--seed=0] [--batch_size=256] [--top_k=1000]
        [--ties=stable|expected] [--empty_queries=exclude|zero] [--authors_inner_product]
        [--output=<saved_model>/hash_retrieval_<dataset>.json]
        [--plot=<saved_model>/hash_retrieval_<dataset>.png | none]
    python -m nac_tf.cli.hash_retrieval ...

Codes are the SavedModel's `hash_codes` (the bits 1[a > 0] of the projection head, packed
8 per byte). Queries and database are the retrieval protocol's for cifar10_hashing and
flickr25k; for every other dataset the test split queries the training split. The database
is ranked by Hamming distance; an item is relevant when it shares a label with the query.
Reported: mAP@all (ties in database order, and the exact expectation over random order
within ties), mAP@k with --top_k (tie rule --ties), precision within Hamming radius 2 and
the number of empty balls, the precision-recall curve (also drawn as a PNG: needs
matplotlib, `pip install "nac_tf[plot]"`), and with --authors_inner_product the mAP of the
NAC authors' inner-product ranking (a compatibility number, not Hamming ranking).

Flags are checked before TensorFlow is imported; a bad flag exits with code 2 and a message
naming it.
"""
import os

from absl import flags

from nac_tf.cli import checks, common
from nac_tf.config import DATASETS
from nac_tf.errors import cannot_write
from nac_tf.evaluation import exported_evaluation


def define_flags(flag_values=flags.FLAGS):
    define = common.define_evaluation_data_flags(
        flag_values,
        dataset_help=f"Dataset: one of {', '.join(DATASETS)} (not "
        f"{', '.join(checks.STREAMED_DATASETS)}: streamed). "
        "cifar10_hashing and flickr25k use their retrieval protocol; the others query the "
        "training split with the test split.",
        image_size_help="Size the resizing loaders "
        f"({', '.join(checks.RESIZING_DATASETS)}) load images at; 0: the SavedModel's "
        "training size.",
        seed_help="Seed of the dataset's split (the retrieval split of cifar10_hashing and "
        "flickr25k).")
    define("integer", "batch_size", 256, "Images per SavedModel call.")
    define("integer", "top_k", None, "Also report mAP@k for this k (e.g. 1000; FLICKR-25K "
           "papers use 5000).")
    flags.DEFINE_enum("ties", "stable", ["stable", "expected"], "Tie rule of mAP@k: database "
                      "order, or the expectation over random order within equal distances "
                      "(mAP@all is reported both ways).", flag_values=flag_values)
    flags.DEFINE_enum("empty_queries", "exclude", ["exclude", "zero"], "Queries without a "
                      "relevant item: left out of the means (as the NAC and HashNet code do), "
                      "or counted as AP 0.", flag_values=flag_values)
    define("bool", "authors_inner_product", False, "Also report the mAP of the NAC authors' "
           "evaluation, which ranks {0,1} codes by inner product (NOT Hamming).")
    define("string", "output", "", "JSON report path; empty: "
           "<saved_model>/hash_retrieval_<dataset>.json.")
    define("string", "plot", "", "Precision-recall PNG path; empty: "
           "<saved_model>/hash_retrieval_<dataset>.png; 'none': no plot.")


def validate_flags():
    """The settings as a dict, or ConfigError naming the first unusable flag."""
    FLAGS = flags.FLAGS
    settings = common.evaluation_data_settings()
    stem = os.path.join(settings["saved_model"], f"hash_retrieval_{FLAGS.dataset}")
    settings.update({
        "batch_size": checks.check_int("batch_size", FLAGS.batch_size, 1),
        "top_k": (None if FLAGS.top_k is None
                  else checks.check_int("top_k", FLAGS.top_k, 1)),
        "ties": FLAGS.ties,
        "empty_queries": FLAGS.empty_queries,
        "authors_inner_product": FLAGS.authors_inner_product,
        "output": checks.output_path("output", FLAGS.output, stem + ".json"),
        "plot": (None if FLAGS.plot.lower() == "none"
                 else checks.output_path("plot", FLAGS.plot, stem + ".png")),
    })
    return settings


def evaluate(settings):
    """Loads model and data, computes the codes and the metrics; the report dict."""
    from nac_tf.evaluation.evaluators import Embeddings, HashRetrieval, retrieval_sets
    from nac_tf.data.catalog import load_arrays_source
    from nac_tf.export import load_exported_model

    metadata = settings["metadata"]
    source = load_arrays_source(
        settings["dataset"], settings["data_dir"],
        settings["image_size"] or metadata["image_size"], settings["seed"])
    *_, sets = retrieval_sets(source)
    data = Embeddings(load_exported_model(settings["saved_model"]), source,
                      settings["batch_size"], progress=True)
    data("queries", "hash_codes")
    data("database", "hash_codes")
    print("Ranking the database for every query")
    metrics = HashRetrieval(top_k=settings["top_k"], ties=settings["ties"],
                            empty_queries=settings["empty_queries"],
                            authors_inner_product=settings["authors_inner_product"])(data)
    report = common.evaluation_report_header("hash_retrieval", settings, source)
    report.update(code_bits=int(metadata["code_dim"]))
    report.update(exported_evaluation.json_ready(metrics))
    report["protocol"] = dict(
        sets,
        codes="1[a > 0] of the SavedModel's hash_codes signature (packed, np.packbits order)",
        ranking="Hamming distance (popcount of XOR); map_all keeps ties in database order, "
                "map_all_expected_ties is the exact expectation over random order within "
                "equal distances",
        relevance="a database item is relevant to a query when they share at least one label",
        multi_label=bool(data.labels("queries").ndim == 2),
        top_k=settings["top_k"],
        ties_at_k=settings["ties"] if settings["top_k"] is not None else None,
        map_at_k="sum of precision@rank over the relevant items in the top k, divided by "
                 "their number (HashNet / DeepHash convention)",
        empty_queries=settings["empty_queries"],
        hamming_radius=2,
        authors_inner_product=settings["authors_inner_product"])
    report["metadata"] = metadata
    return report


def draw_plot(report, path):
    """The PNG, or None with a message when it cannot be drawn (the JSON is kept)."""
    curve = report["precision_recall_curve"]
    if any(value is None for value in curve["precision"]):
        print("No precision-recall plot: no query has a relevant item")
        return None
    title = (f"{report['metadata']['method']}, {report['code_bits']} bits, "
             f"{report['dataset']}: mAP@all {_number(report['map_all'])}")
    try:
        exported_evaluation.plot_precision_recall(curve, path, title)
    except ImportError as error:
        print(f"No precision-recall plot: {error}")
        return None
    except OSError as error:  # writable when checked, but e.g. the disk is full now
        print(f"No precision-recall plot: {cannot_write(path, error)}")
        return None
    return path


def _number(value, digits=4):
    return "n/a (every query excluded)" if value is None else f"{value:.{digits}f}"


def print_summary(report, output):
    protocol = report["protocol"]
    print(f"Hash retrieval with {report['metadata']['method']} ({report['code_bits']}-bit "
          f"codes of {report['saved_model']}) on {report['dataset']}: "
          f"{report['num_queries']} queries ({protocol['queries']}) against "
          f"{report['num_database']} database items")
    print(f"  mAP@all              {_number(report['map_all'])}  (expected over ties: "
          f"{_number(report['map_all_expected_ties'])})")
    if "map_at_k" in report:
        print(f"  mAP@{protocol['top_k']:<17d}{_number(report['map_at_k'])}  "
              f"(ties: {protocol['ties_at_k']})")
    print(f"  precision r<=2       {_number(report['precision_radius2'])}  "
          f"({report['num_empty_radius2_balls']} of {report['num_queries']} balls empty)")
    print(f"  queries without a relevant item: {report['num_queries_without_relevant']} "
          f"(empty_queries={protocol['empty_queries']}: {report['num_excluded_queries']} "
          "excluded from mAP@all)")
    if "authors_inner_product" in report:
        compatibility = report["authors_inner_product"]
        line = f"mAP@all {_number(compatibility['map_all'])}"
        if "map_at_k" in compatibility:
            line += f", mAP@{protocol['top_k']} {_number(compatibility['map_at_k'])}"
        print(f"  NAC authors' inner-product ranking (not Hamming): {line}")
    print(f"Report: {output}")
    if report.get("plot"):
        print(f"Plot: {report['plot']}")


def add_plot(report, settings):
    report["plot"] = draw_plot(report, settings["plot"]) if settings["plot"] else None


def main(argv):
    common.run_report_tool(argv, validate_flags, evaluate, print_summary, add_plot)


def run(argv=None):
    """The `nac-hash-retrieval` console script."""
    common.run(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
    run()

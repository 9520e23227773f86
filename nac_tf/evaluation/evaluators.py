"""The evaluators of a pretrained model, with one interface: kNN, the linear and MLP probes
and hash retrieval (docs/protocols.md section 2).

An evaluator is called on `Embeddings`, a model's outputs (features h, packed hash codes)
on the image sets of one source, each computed once and shared by every evaluator, and
returns a flat dict in one vocabulary, the keys of results.json and of the evaluation
commands' reports:

- `KNN`: knn_top1, knn {k, temperature}.
- `ProbeEvaluator("linear" | "mlp", config)`: <name>_top1 and <name> (the protocol's
  result, `ProbeResult.to_dict`).
- `HashRetrieval`: `retrieval_report`'s map_all, map_all_expected_ties, precision_radius2,
  num_queries, num_database, ... (the trainer's results.json nests some of them:
  `nac_tf.evaluation.report.final_retrieval_layout`).

Which images are the retrieval queries and database is decided once, by `retrieval_sets`.
The trainer's final evaluation (`nac_tf.evaluation.report`), its evaluation during
training (`nac_tf.evaluation.monitor`) and both evaluation commands use these. Importing
this module does not import TensorFlow (the probes import it when they run).
"""
import logging

import numpy as np

from nac_tf.evaluation.knn import knn_accuracy

logger = logging.getLogger(__name__)

RANKING = "hamming, ties in database order"


# -------------------------------------------------------------------------- the image sets
def retrieval_sets(source):
    """(query images, query labels, database images, database labels, description): the
    hashing datasets' own protocol (`source.retrieval`, docs/protocols.md section 2); for
    every other dataset the test split queries the training split."""
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


def embed(model, images, batch_size=256, output="features", label=None):
    """`model`'s `output` ("features", "hash_codes" or "codes" of an ExportedModel) over
    uint8 `images` in slices of `batch_size`, as one NumPy array.

    Slices of the array are views, so a large database (FLICKR-25K: 3.7 GB) is never copied
    whole into one tensor. With `label` (e.g. "the test split"), a line names what is
    embedded and a Keras progress bar follows the slices (the values are the same).
    """
    bar = None
    if label is not None and len(images):
        import keras

        logger.info("Embedding %s (%d images, %s)", label, len(images), output)
        bar = keras.utils.Progbar(len(images), unit_name="image")
    parts = []
    for start in range(0, len(images), batch_size):
        parts.append(getattr(model, output)(images[start:start + batch_size]))
        if bar is not None:
            bar.update(min(start + batch_size, len(images)))
    return np.concatenate(parts) if parts else np.zeros((0,))


class Embeddings:
    """`model`'s outputs on the image sets of `source` ("train", "test", and the retrieval
    "queries" and "database" of `retrieval_sets`), each computed on first use and kept.

    model: an `nac_tf.export.ExportedModel` (a SavedModel, or the trainer's live networks).
    batch_size: images per call of the model. progress: name every set embedded with a
    progress bar (the commands), and show the probes' progress.
    queries, database: (images, labels) to use instead of the retrieval queries and database
    (the training monitor's fixed queries, and the database they search).
    """

    def __init__(self, model, source, batch_size=256, progress=False, queries=None,
                 database=None):
        self.model, self.source = model, source
        self.batch_size, self.progress = int(batch_size), progress
        self._queries, self._database = queries, database
        self._sets = None
        self._outputs = {}

    def _set(self, part):
        """(key, images, labels, label) of `part`; sets of the same images share a key."""
        if part == "train":
            return "train", self.source.train_images, self.source.train_labels, \
                "the training split"
        if part == "test":
            return "test", self.source.test_images, self.source.test_labels, "the test split"
        if self._sets is None:
            self._sets = retrieval_sets(self.source)
        query_images, query_labels, database_images, database_labels, _ = self._sets
        own = self.source.retrieval is not None
        if part == "queries":
            if self._queries is not None:
                return ("query_subset", *self._queries, "the queries")
            return "queries" if own else "test", query_images, query_labels, "the queries"
        if part == "database":
            if self._database is not None:
                return ("database_subset", *self._database, "the database")
            return ("database" if own else "train", database_images, database_labels,
                    "the database")
        raise ValueError(f"part must be train, test, queries or database; received {part!r}")

    def images(self, part):
        return self._set(part)[1]

    def labels(self, part):
        return self._set(part)[2]

    def __call__(self, part, output="features"):
        """`output` of the model on the images of `part` (NumPy)."""
        key, images, _, label = self._set(part)
        if (key, output) not in self._outputs:
            self._outputs[key, output] = embed(self.model, images, self.batch_size, output,
                                               label if self.progress else None)
        return self._outputs[key, output]


# ------------------------------------------------------------------------ classification
class KNN:
    """kNN top-1 of the test split against the training split on the features
    (`nac_tf.evaluation.knn`: cosine, temperature-weighted votes)."""

    def __init__(self, k=200, temperature=0.1):
        self.k, self.temperature = k, temperature

    def __call__(self, data):
        top1 = knn_accuracy(data("train"), data.labels("train"), data("test"),
                            data.labels("test"), data.source.num_classes, k=self.k,
                            temperature=self.temperature)
        return {"knn_top1": top1, "knn": {"k": self.k, "temperature": self.temperature}}


def float_image_encoder(model):
    """encode_fn of the probes' image path (`linear_evaluation_from_images`) over an
    `ExportedModel`.

    The probes hand the encoder float images in [0, 1]; the export takes uint8.
    x = uint8 / 255 round-trips exactly through round(x * 255), so un-augmented features are
    the SavedModel's own. The export's `features` function is a tf.function, so this traces.
    """
    import tensorflow as tf

    features = model.module.features

    def encode(images):
        pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
        return features(pixels)["features"]

    return encode


class ProbeEvaluator:
    """The linear ("linear", a LinearEvalConfig) or MLP ("mlp", an MLPEvalConfig) probe of
    docs/protocols.md section 2 on the training split, top-1 on the test split. With
    `config.augment` the classifier trains on augmented training images through the model
    (`linear_evaluation_from_images`); otherwise on the features."""

    def __init__(self, name, config):
        if name not in ("linear", "mlp"):
            raise ValueError(f"name must be 'linear' or 'mlp'; received {name!r}")
        self.name, self.config = name, config

    def __call__(self, data):
        if self.name == "linear":
            from nac_tf.evaluation.linear import (linear_evaluation as from_features,
                                                  linear_evaluation_from_images as from_images)
        else:
            from nac_tf.evaluation.mlp import (mlp_evaluation as from_features,
                                               mlp_evaluation_from_images as from_images)
        labels = (data.labels("train"), data.labels("test"))
        if self.config.augment:
            result = from_images(
                float_image_encoder(data.model), data.images("train"), labels[0],
                data.images("test"), labels[1], data.source.num_classes, self.config,
                batch_size_encode=data.batch_size, progress=data.progress)
        else:
            result = from_features(data("train"), labels[0], data("test"), labels[1],
                                   data.source.num_classes, self.config,
                                   progress=data.progress)
        return {f"{self.name}_top1": result.top1, self.name: result.to_dict()}


# ----------------------------------------------------------------------------- retrieval
def queries_without_relevant_items(query_labels, database_labels):
    """How many queries share no label with any database item (class ids or multi-hot)."""
    query_labels, database_labels = np.asarray(query_labels), np.asarray(database_labels)
    if query_labels.ndim == 1:
        return int(np.sum(~np.isin(query_labels, database_labels)))
    present = np.any(database_labels > 0, axis=0)
    return int(np.sum(~np.any((query_labels > 0) & present, axis=1)))


def retrieval_report(query_codes, database_codes, query_labels, database_labels, top_k=None,
                     ties="stable", empty_queries="exclude", authors_inner_product=False,
                     curve=True):
    """The retrieval metrics of docs/protocols.md section 2 on packed codes; a flat dict of
    NumPy and Python values (NaN when every query is excluded: `json_ready` writes null).

    mAP@all with stable and with expected ties; mAP@k (when `top_k`) with `ties`; precision
    within Hamming radius 2 (empty ball = 0) and the count of empty balls; the
    precision-recall curve over radii 0..D (when `curve`); the NAC authors' inner-product
    mAP when asked (a compatibility number, not Hamming ranking). `empty_queries` applies
    to every mAP and to the curve.
    """
    from nac_tf.evaluation import retrieval

    args = (query_codes, database_codes, query_labels, database_labels)
    stable = retrieval.average_precisions(*args, ties="stable", empty_queries=empty_queries,
                                          packed=True)
    expected = retrieval.average_precisions(*args, ties="expected",
                                            empty_queries=empty_queries, packed=True)
    radius = retrieval.precision_within_hamming_radius(*args, radius=2, packed=True)
    report = {
        "map_all": stable.mean,
        "map_all_expected_ties": expected.mean,
        "precision_radius2": radius.mean_precision,
        "num_queries": int(len(query_codes)),
        "num_database": int(len(database_codes)),
        "num_empty_radius2_balls": radius.num_empty,
        "num_excluded_queries": stable.num_excluded,
        "num_queries_without_relevant": queries_without_relevant_items(query_labels,
                                                                       database_labels),
    }
    if curve:
        pr = retrieval.precision_recall_curve(*args, empty_queries=empty_queries, packed=True)
        report["precision_recall_curve"] = {
            "radius": pr.radius, "precision": pr.precision, "recall": pr.recall,
            "num_empty_balls": pr.num_empty_balls, "num_excluded_queries": pr.num_excluded}
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
    return report


class HashRetrieval:
    """Hamming ranking of the database for every query by the packed codes 1[a > 0]
    (`retrieval_report`; the options are its). `map_only`: mAP@all alone (ties in database
    order), the cheap number of the evaluation during training."""

    def __init__(self, top_k=None, ties="stable", empty_queries="exclude",
                 authors_inner_product=False, curve=True, map_only=False):
        self.options = dict(top_k=top_k, ties=ties, empty_queries=empty_queries,
                            authors_inner_product=authors_inner_product, curve=curve)
        self.map_only = map_only

    def __call__(self, data):
        args = (data("queries", "hash_codes"), data("database", "hash_codes"),
                data.labels("queries"), data.labels("database"))
        if self.map_only:
            from nac_tf.evaluation import retrieval

            return {"map_all": retrieval.average_precisions(
                *args, empty_queries=self.options["empty_queries"], packed=True).mean}
        return retrieval_report(*args, **self.options)

"""Evaluation during training (`eval_every_steps`): how the current networks are doing.

`TrainingMonitor` holds what stays fixed over a run (the data and a seeded subset of the
retrieval queries) and `evaluate(model)` measures, on an `ExportedModel` over the current
online networks (the trainer wraps its live networks with
`ExportedModel.from_module(build_export_module(...))`, exactly as its final evaluation does):

- knn_top1: kNN top-1 of the test split against the training split, the final evaluation's
  kNN (`report.classification_metrics`, cosine, temperature-weighted votes); not for
  multi-label sources.
- map_all: on sources with a retrieval protocol (`source.retrieval`: cifar10_hashing,
  flickr25k), Hamming mAP@all (ties in database order, queries without a relevant item
  excluded: the final evaluation's "map_all") of the packed 1[a > 0] codes of a FIXED,
  seeded subset of `num_queries` queries against the whole database.

Plain arguments only (no flags), so tools and notebooks can use it on any source held in
memory.
"""
import numpy as np

from nac_tf.evaluation import retrieval
from nac_tf.evaluation.report import EvaluationConfig, classification_metrics, embed

# Random stream of the query subset, derived from the run's seed (independent of the other
# seeded draws of a run).
_QUERY_SUBSET_STREAM = 0x6D6F6E


def query_subset(num_queries_total, num_queries, seed):
    """Sorted indices of `min(num_queries, num_queries_total)` queries, drawn without
    replacement; the same for the same (total, count, seed)."""
    if isinstance(num_queries, bool) or int(num_queries) != num_queries or num_queries < 1:
        raise ValueError(f"num_queries must be a positive integer; received {num_queries!r}")
    count = min(int(num_queries), int(num_queries_total))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _QUERY_SUBSET_STREAM]))
    return np.sort(rng.choice(int(num_queries_total), size=count, replace=False))


class TrainingMonitor:
    """kNN top-1 and subset Hamming mAP@all of a model on one in-memory source.

    source: an `ImageSource` held in memory (`has_arrays`).
    knn_k, knn_temperature: the kNN (0 neighbours: no kNN).
    num_queries: size of the fixed query subset of the retrieval protocol (all queries when
      the protocol has fewer); `seed` draws it.
    batch_size: images per call of the model.
    """

    def __init__(self, source, knn_k=200, knn_temperature=0.1, num_queries=1000, seed=0,
                 batch_size=256):
        if not source.has_arrays:
            raise ValueError(f"dataset {source.name!r} is streamed; the training monitor "
                             "needs a source held in memory")
        self.source = source
        self.batch_size = int(batch_size)
        self.knn_config = None
        if knn_k and not source.multi_label:
            self.knn_config = EvaluationConfig(knn_k=knn_k, knn_temperature=knn_temperature,
                                               linear=None, retrieval=False,
                                               batch_size=self.batch_size)
        self.query_indices = None
        arrays = source.retrieval
        if arrays is not None:
            self.query_indices = query_subset(arrays.num_queries, num_queries, seed)
            # A copy of at most num_queries images (fancy indexing), so the subset stays
            # fixed whatever happens to the source's arrays.
            self.query_images = arrays.query_images[self.query_indices]
            self.query_labels = arrays.query_labels[self.query_indices]

    @property
    def metric_names(self):
        """The keys `evaluate` returns (empty: nothing to monitor on this source)."""
        return ((("knn_top1",) if self.knn_config is not None else ()) +
                (("map_all",) if self.query_indices is not None else ()))

    def evaluate(self, model):
        """{"knn_top1": ..., "map_all": ...} (those that apply) of `model`, an ExportedModel."""
        results = {}
        source = self.source
        if self.knn_config is not None:
            train = embed(model, source.train_images, self.batch_size)["features"]
            test = embed(model, source.test_images, self.batch_size)["features"]
            results["knn_top1"] = classification_metrics(
                train, source.train_labels, test, source.test_labels, source.num_classes,
                self.knn_config)["knn_top1"]
        if self.query_indices is not None:
            arrays = source.retrieval
            queries = embed(model, self.query_images, self.batch_size,
                            ("hash_codes",))["hash_codes"]
            database = embed(model, arrays.database_images, self.batch_size,
                             ("hash_codes",))["hash_codes"]
            results["map_all"] = float(retrieval.average_precisions(
                queries, database, self.query_labels, arrays.database_labels,
                packed=True).mean)
        return results

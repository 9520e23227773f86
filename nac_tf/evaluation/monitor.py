"""Evaluation during training (`eval_every_steps`): how the current networks are doing.

`TrainingMonitor` holds what stays fixed over a run (the data and a seeded subset of the
retrieval queries) and `evaluate(model)` measures, on an `ExportedModel` over the current
online networks (the trainer wraps its live networks with
`ExportedModel.from_module(build_export_module(...))`, exactly as its final evaluation does):

- knn_top1: kNN top-1 of the test split against the training split, the final evaluation's
  kNN (`evaluators.KNN`, cosine, temperature-weighted votes); not for multi-label sources.
- map_all: on sources with a retrieval protocol (`source.retrieval`: cifar10_hashing,
  flickr25k), Hamming mAP@all (ties in database order, queries without a relevant item
  excluded: the final evaluation's "map_all") of the packed 1[a > 0] codes of a FIXED,
  seeded subset of `num_queries` queries (of `evaluators.retrieval_sets`) against the whole
  database (`evaluators.HashRetrieval`).

Plain arguments only (no flags), so tools and notebooks can use it on any source held in
memory.
"""
import numpy as np

from nac_tf.evaluation.evaluators import KNN, Embeddings, HashRetrieval, retrieval_sets

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
        self.knn = None
        if knn_k and not source.multi_label:
            self.knn = KNN(knn_k, knn_temperature)
        self.query_indices = self.queries = None
        if source.retrieval is not None:
            query_images, query_labels, *_ = retrieval_sets(source)
            self.query_indices = query_subset(len(query_images), num_queries, seed)
            # A copy of at most num_queries images (fancy indexing), so the subset stays
            # fixed whatever happens to the source's arrays.
            self.queries = (query_images[self.query_indices],
                            query_labels[self.query_indices])
        self.retrieval = HashRetrieval(map_only=True)

    @property
    def metric_names(self):
        """The keys `evaluate` returns (empty: nothing to monitor on this source)."""
        return ((("knn_top1",) if self.knn is not None else ()) +
                (("map_all",) if self.queries is not None else ()))

    def evaluate(self, model):
        """{"knn_top1": ..., "map_all": ...} (those that apply) of `model`, an ExportedModel."""
        data = Embeddings(model, self.source, self.batch_size, queries=self.queries)
        results = {}
        if self.knn is not None:
            results["knn_top1"] = self.knn(data)["knn_top1"]
        if self.queries is not None:
            results["map_all"] = float(self.retrieval(data)["map_all"])
        return results

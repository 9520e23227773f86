"""Evaluation during training (`eval_every_steps`): how the current networks are doing.

`TrainingMonitor` holds what stays fixed over a run (the data and a seeded subset of the
retrieval queries) and `evaluate(model)` measures, on an `ExportedModel` over the current
online networks (the trainer wraps its live networks with
`ExportedModel.from_module(build_export_module(...))`, exactly as its final evaluation does):

- knn_top1: kNN top-1 of the test split against the training split, the final evaluation's
  kNN (`evaluators.KNN`, cosine, temperature-weighted votes); not for multi-label sources.
- map_all: on sources with a retrieval protocol (`source.retrieval`: cifar10_hashing,
  flickr25k), Hamming mAP@all (ties in database order, queries without a relevant item
  excluded: the final evaluation's "map_all") of the packed 1[a > 0] codes of FIXED,
  seeded queries (`evaluators.HashRetrieval`), either (`queries`)
  - "protocol": a subset of `num_queries` of the protocol's queries (of
    `evaluators.retrieval_sets`) against the whole database, or
  - "validation": `num_queries` database images that are not pretraining images against
    the rest of the database (`validation_split`), so that a trajectory used to choose
    anything (a learning rate, a step count) never looks at the protocol's queries.

Plain arguments only (no flags), so tools and notebooks can use it on any source held in
memory.
"""
import numpy as np

from nac_tf.evaluation.evaluators import KNN, Embeddings, HashRetrieval, retrieval_sets
from nac_tf.run_settings import EVAL_QUERY_SETS

# Random streams of the query subset and of the validation queries, derived from the run's
# seed (independent of the other seeded draws of a run). The validation stream is the one
# the benchmarks' hashing table has chosen its learning rates with since it was written.
_QUERY_SUBSET_STREAM = 0x6D6F6E
_VALIDATION_STREAM = 0x76616C


def query_subset(num_queries_total, num_queries, seed):
    """Sorted indices of `min(num_queries, num_queries_total)` queries, drawn without
    replacement; the same for the same (total, count, seed)."""
    if isinstance(num_queries, bool) or int(num_queries) != num_queries or num_queries < 1:
        raise ValueError(f"num_queries must be a positive integer; received {num_queries!r}")
    count = min(int(num_queries), int(num_queries_total))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _QUERY_SUBSET_STREAM]))
    return np.sort(rng.choice(int(num_queries_total), size=count, replace=False))


def validation_split(arrays, num_queries=1000, seed=0):
    """(query rows, database rows) of a validation retrieval task inside the database of a
    retrieval protocol (`arrays`: a source's `retrieval`): `num_queries` seeded database
    images that are not pretraining images (rows from `arrays.num_train` on) query the rest
    of the database. The protocol's queries are never touched."""
    candidates = np.arange(arrays.num_train, len(arrays.database_images))
    if isinstance(num_queries, bool) or int(num_queries) != num_queries \
            or not 1 <= num_queries <= len(candidates):
        raise ValueError(f"num_queries must be an integer in [1, {len(candidates)}] (the "
                         f"database images that are not pretraining images); received "
                         f"{num_queries!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _VALIDATION_STREAM]))
    queries = np.sort(rng.choice(candidates, int(num_queries), replace=False))
    database = np.setdiff1d(np.arange(len(arrays.database_images)), queries)
    return queries, database


class TrainingMonitor:
    """kNN top-1 and subset Hamming mAP@all of a model on one in-memory source.

    source: an `ImageSource` held in memory (`has_arrays`).
    knn_k, knn_temperature: the kNN (0 neighbours: no kNN).
    queries: which queries score the mAP, one of EVAL_QUERY_SETS (see the module docstring).
    num_queries: how many (for "protocol", all queries when the protocol has fewer); `seed`
      draws them.
    batch_size: images per call of the model.
    """

    def __init__(self, source, knn_k=200, knn_temperature=0.1, num_queries=1000, seed=0,
                 batch_size=256, queries="protocol"):
        if not source.has_arrays:
            raise ValueError(f"dataset {source.name!r} is streamed; the training monitor "
                             "needs a source held in memory")
        self.source = source
        self.batch_size = int(batch_size)
        self.knn = None
        if knn_k and not source.multi_label:
            self.knn = KNN(knn_k, knn_temperature)
        if queries not in EVAL_QUERY_SETS:
            raise ValueError(f"queries must be one of {', '.join(EVAL_QUERY_SETS)}; received "
                             f"{queries!r}")
        if queries == "validation" and source.retrieval is None:
            raise ValueError(f"eval_queries='validation' needs a dataset with a retrieval "
                             f"protocol (cifar10_hashing, flickr25k); {source.name!r} has none")
        self.query_indices = self.queries = self.database = None
        if source.retrieval is not None:
            query_images, query_labels, database_images, database_labels, _ = \
                retrieval_sets(source)
            if queries == "validation":
                self.query_indices, rows = validation_split(source.retrieval, num_queries,
                                                            seed)
                query_images, query_labels = database_images, database_labels
                # The rows searched, copied once (fancy indexing; 150 MB for CIFAR-10's
                # 49 000) and kept for the run like the queries.
                self.database = (database_images[rows], database_labels[rows])
            else:
                self.query_indices = query_subset(len(query_images), num_queries, seed)
            # A copy of at most num_queries images (fancy indexing), so the queries stay
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
        data = Embeddings(model, self.source, self.batch_size, queries=self.queries,
                          database=self.database)
        results = {}
        if self.knn is not None:
            results["knn_top1"] = self.knn(data)["knn_top1"]
        if self.queries is not None:
            results["map_all"] = float(self.retrieval(data)["map_all"])
        return results

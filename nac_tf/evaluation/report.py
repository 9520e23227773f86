"""The trainer's final evaluation of a pretrained encoder on a dataset: kNN, linear (and
MLP) probe and hash retrieval, the evaluators of `nac_tf.evaluation.evaluators` that
`EvaluationConfig` lists.

`evaluate_model` takes an `ExportedModel` (the trainer wraps its in-memory networks in
one), so the numbers the trainer prints are the ones a client of the SavedModel would get,
and the evaluation commands compute theirs with the same evaluators.

- Classification (single-label sources with a train and a test split): kNN top-1 on the
  representation h (cosine, temperature-weighted votes) and the linear-evaluation protocol of
  docs/protocols.md section 2 (`nac_tf.evaluation.linear`), with its training-image augmentation
  when `linear.augment` (the trainer's setting); optionally the MLP probe of the same section
  (`nac_tf.evaluation.mlp`, AMDIM's MLP evaluation), with its own `augment`.
- Retrieval (docs/protocols.md section 2): 1[a > 0] codes of the projection head, Hamming ranking
  with stable ties. Queries and database come from the source's retrieval protocol
  (`source.retrieval`: CIFAR-10 hashing split, FLICKR-25K) or, for other datasets, the test
  split queries the training split (`evaluators.retrieval_sets`).
"""
import dataclasses
from typing import Optional

from nac_tf.evaluation.evaluators import (KNN, RANKING, Embeddings, HashRetrieval,
                                          ProbeEvaluator)
from nac_tf.evaluation.linear import LinearEvalConfig
from nac_tf.evaluation.mlp import MLPEvalConfig


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What `evaluate_model` computes.

    knn_k, knn_temperature: the kNN monitor (0 neighbours: skip kNN).
    linear: the linear-evaluation protocol, or None to skip it.
    mlp: the MLP-evaluation protocol, or None (the default) to skip it.
    retrieval: compute the hash-code retrieval metrics.
    batch_size: images per call of the model.
    """

    knn_k: int = 200
    knn_temperature: float = 0.1
    linear: Optional[LinearEvalConfig] = dataclasses.field(default_factory=LinearEvalConfig)
    mlp: Optional[MLPEvalConfig] = None
    retrieval: bool = True
    batch_size: int = 256

    def __post_init__(self):
        if self.knn_k < 0:
            raise ValueError(f"knn_k must be >= 0 (0 skips kNN); got {self.knn_k}")
        if not self.knn_temperature > 0:
            raise ValueError(f"knn_temperature must be > 0; got {self.knn_temperature}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")


def classification_evaluators(config: EvaluationConfig):
    """The evaluators of single-label sources that `config` asks for, in report order:
    kNN, the linear probe, the MLP probe."""
    evaluators = [KNN(config.knn_k, config.knn_temperature)] if config.knn_k else []
    evaluators += [ProbeEvaluator(name, probe) for name, probe
                   in (("linear", config.linear), ("mlp", config.mlp)) if probe is not None]
    return evaluators


def final_retrieval_layout(report):
    """results.json's retrieval keys, from a `retrieval_report` (ties in database order,
    queries without a relevant item excluded): the three headline numbers, the counts
    under "retrieval"."""
    return {
        "map_all": report["map_all"],
        "map_all_expected_ties": report["map_all_expected_ties"],
        "precision_radius2": report["precision_radius2"],
        "retrieval": {"num_queries": report["num_queries"],
                      "num_database": report["num_database"],
                      "num_excluded_queries": int(report["num_excluded_queries"]),
                      "num_empty_radius2_balls": int(report["num_empty_radius2_balls"]),
                      "ranking": RANKING,
                      "empty_queries": "exclude"},
    }


def evaluate_model(model, source, config: EvaluationConfig, progress=False):
    """Every metric `config` asks for that `source` supports; a JSON-ready dict.

    model: an `nac_tf.export.ExportedModel` (features and hash_codes of uint8 images).
    source: an `ImageSource` with arrays (`has_arrays`); streamed sources are not evaluated.
    """
    if not source.has_arrays:
        raise ValueError(f"dataset {source.name!r} is streamed; evaluation needs a source "
                         "held in memory")
    data = Embeddings(model, source, config.batch_size, progress)
    report = {}
    if not source.multi_label:
        for evaluator in classification_evaluators(config):
            report.update(evaluator(data))
    if config.retrieval:
        report.update(final_retrieval_layout(HashRetrieval(curve=False)(data)))
    report["num_train"], report["num_test"] = int(source.num_train), int(source.num_test)
    return report

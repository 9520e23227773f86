"""The evaluation of a pretrained encoder on a dataset: kNN, linear probe and hash retrieval.

One function, `evaluate_model`, serves the trainer's end-of-run summary (on the in-memory
networks) and the evaluation commands (on an exported SavedModel): both hand it an
`ExportedModel`, so the numbers the trainer prints are the ones a client of the SavedModel
would get.

- Classification (single-label sources with a train and a test split): kNN top-1 on the
  representation h (cosine, temperature-weighted votes) and the linear-evaluation protocol of
  docs/protocols.md section 2 (`nac_tf.evaluation.linear`), with its training-image augmentation
  when `linear.augment` (the trainer's setting); optionally the MLP probe of the same section
  (`nac_tf.evaluation.mlp`, AMDIM's MLP evaluation), with its own `augment`.
- Retrieval (docs/protocols.md section 2): 1[a > 0] codes of the projection head, Hamming ranking
  with stable ties. Queries and database come from the source's retrieval protocol
  (`source.retrieval`: CIFAR-10 hashing split, FLICKR-25K) or, for other datasets, the test
  split queries the training split.
"""
import dataclasses
from typing import Optional

import numpy as np

from nac_tf.evaluation.knn import knn_accuracy
from nac_tf.evaluation.linear import (LinearEvalConfig, linear_evaluation,
                                      linear_evaluation_from_images)
from nac_tf.evaluation.mlp import MLPEvalConfig, mlp_evaluation, mlp_evaluation_from_images
from nac_tf.evaluation import retrieval


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


def embed(model, images, batch_size=256, outputs=("features",)):
    """Runs `model` (an ExportedModel) over uint8 images in slices; dict of NumPy arrays.

    Slices of the array are views, so a large database (FLICKR-25K: 3.7 GB) is never copied
    whole into one tensor.
    """
    results = {name: [] for name in outputs}
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        for name in outputs:
            results[name].append(getattr(model, name)(batch))
    return {name: np.concatenate(parts) if parts else np.zeros((0,))
            for name, parts in results.items()}


def classification_metrics(train_features, train_labels, test_features, test_labels,
                           num_classes, config: EvaluationConfig, progress=False,
                           images=None):
    """kNN, linear and MLP top-1 on precomputed features; a flat dict plus protocol details.

    images: (model, train_images, test_images), an ExportedModel and the uint8 images of the
    features, needed when a probe's config has `augment`: that classifier then trains on
    augmented training images through the model (`linear_evaluation_from_images`).
    """
    metrics = {}
    if config.knn_k:
        metrics["knn_top1"] = knn_accuracy(train_features, train_labels, test_features,
                                           test_labels, num_classes, k=config.knn_k,
                                           temperature=config.knn_temperature)
        metrics["knn"] = {"k": config.knn_k, "temperature": config.knn_temperature}
    probes = (("linear", config.linear, linear_evaluation, linear_evaluation_from_images),
              ("mlp", config.mlp, mlp_evaluation, mlp_evaluation_from_images))
    for name, probe_config, from_features, from_images in probes:
        if probe_config is None:
            continue
        if probe_config.augment:
            if images is None:
                raise ValueError(f"config.{name}.augment needs the images: pass "
                                 "images=(model, train_images, test_images)")
            model, train_images, test_images = images
            result = from_images(
                float_image_encoder(model), train_images, train_labels, test_images,
                test_labels, num_classes, probe_config, batch_size_encode=config.batch_size,
                progress=progress)
        else:
            result = from_features(train_features, train_labels, test_features, test_labels,
                                   num_classes, probe_config, progress=progress)
        metrics[f"{name}_top1"] = result.top1
        metrics[name] = result.to_dict()
    return metrics


def retrieval_metrics(query_codes, database_codes, query_labels, database_labels):
    """Hamming-ranking metrics of packed codes (docs/protocols.md section 2); a flat dict."""
    args = (query_codes, database_codes, query_labels, database_labels)
    stable = retrieval.average_precisions(*args, packed=True)
    radius = retrieval.precision_within_hamming_radius(*args, radius=2, packed=True)
    return {
        "map_all": stable.mean,
        "map_all_expected_ties": retrieval.mean_average_precision(
            *args, ties="expected", packed=True),
        "precision_radius2": radius.mean_precision,
        "retrieval": {"num_queries": int(len(query_codes)),
                      "num_database": int(len(database_codes)),
                      "num_excluded_queries": int(stable.num_excluded),
                      "num_empty_radius2_balls": int(radius.num_empty),
                      "ranking": "hamming, ties in database order",
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
    report = {}
    wants_codes = config.retrieval and source.retrieval is None
    outputs = ("features", "hash_codes") if wants_codes else ("features",)
    train = embed(model, source.train_images, config.batch_size, outputs)
    test = embed(model, source.test_images, config.batch_size, outputs)
    if not source.multi_label:
        report.update(classification_metrics(
            train["features"], source.train_labels, test["features"], source.test_labels,
            source.num_classes, config, progress=progress,
            images=(model, source.train_images, source.test_images)))
    if config.retrieval:
        if source.retrieval is None:
            queries, database = test["hash_codes"], train["hash_codes"]
            query_labels, database_labels = source.test_labels, source.train_labels
        else:
            arrays = source.retrieval
            queries = embed(model, arrays.query_images, config.batch_size,
                            ("hash_codes",))["hash_codes"]
            database = embed(model, arrays.database_images, config.batch_size,
                             ("hash_codes",))["hash_codes"]
            query_labels, database_labels = arrays.query_labels, arrays.database_labels
        report.update(retrieval_metrics(queries, database, query_labels, database_labels))
    report["num_train"], report["num_test"] = int(source.num_train), int(source.num_test)
    return report

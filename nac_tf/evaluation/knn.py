"""Weighted k-nearest-neighbour classification on cosine similarity (monitoring metric).

The protocol of Wu et al. (2018), used by most SSL codebases for quick checks: the k most
similar training features vote for their labels with weight exp(similarity / temperature).
"""
import numpy as np


def knn_predict(train_features, train_labels, test_features, num_classes, k=200,
                temperature=0.1, chunk_size=1024):
    """Predicted class ids [N_test] (NumPy in, NumPy out; chunked to bounded memory).

    Ties in the vote go to the smaller class id (np.argmax), so results are deterministic.
    """
    train = _unit_rows(np.asarray(train_features, np.float32))
    test = _unit_rows(np.asarray(test_features, np.float32))
    labels = np.asarray(train_labels, np.int64)
    if train.shape[0] != labels.shape[0]:
        raise ValueError(f"train_features has {train.shape[0]} rows but train_labels has "
                         f"{labels.shape[0]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, train.shape[0])
    predictions = np.empty(test.shape[0], np.int64)
    for start in range(0, test.shape[0], chunk_size):
        similarity = test[start:start + chunk_size] @ train.T
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        top_similarity = np.take_along_axis(similarity, top, axis=1)
        weights = np.exp(top_similarity / temperature)
        votes = np.zeros((top.shape[0], num_classes), np.float64)
        np.add.at(votes, (np.arange(top.shape[0])[:, None], labels[top]), weights)
        predictions[start:start + chunk_size] = np.argmax(votes, axis=1)
    return predictions


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes,
                 k=200, temperature=0.1):
    """Top-1 accuracy of `knn_predict` on the test set, in [0, 1]."""
    predictions = knn_predict(train_features, train_labels, test_features, num_classes, k,
                              temperature)
    return float(np.mean(predictions == np.asarray(test_labels)))


def _unit_rows(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

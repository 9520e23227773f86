"""kNN monitor against a float64 brute-force reference written from the definition."""
import numpy as np
import pytest

from nac_tf.evaluation.knn import knn_accuracy, knn_predict


def _reference(train, labels, test, num_classes, k, temperature):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = []
    for q in test:
        sims = train @ q
        order = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in order:
            votes[labels[j]] += np.exp(sims[j] / temperature)
        out.append(int(np.argmax(votes)))
    return np.array(out)


@pytest.mark.parametrize("k, temperature", [(1, 0.1), (5, 0.07), (50, 0.5), (500, 0.1)])
def test_matches_bruteforce_reference(k, temperature):
    rng = np.random.default_rng(k)
    train = rng.normal(size=(300, 16))
    labels = rng.integers(0, 7, size=300)
    test = rng.normal(size=(77, 16))
    expected = _reference(train, labels, test, 7, min(k, 300), temperature)
    got = knn_predict(train, labels, test, 7, k=k, temperature=temperature, chunk_size=20)
    np.testing.assert_array_equal(got, expected)


def test_separable_clusters_are_classified_perfectly_and_shuffled_labels_are_not():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 32)) * 5
    labels = np.repeat(np.arange(4), 50)
    train = centers[labels] + rng.normal(size=(200, 32))
    test_labels = np.repeat(np.arange(4), 10)
    test = centers[test_labels] + rng.normal(size=(40, 32))
    assert knn_accuracy(train, labels, test, test_labels, 4, k=10) == 1.0
    assert knn_accuracy(train, rng.permutation(labels), test, test_labels, 4, k=10) < 0.7


def test_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(np.ones((3, 2)), np.zeros(2), np.ones((1, 2)), 2)

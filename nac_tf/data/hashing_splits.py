"""Seeded query / database / training splits of the hash-code retrieval protocol (DESIGN.md §2).

CIFAR-10 (Yang et al., 2019, used by the paper's Table 3): pool the 60 000 train and test
images; draw 1 000 queries per class; the other 50 000 images are the database; pretraining
uses 500 images per class drawn from the database (the "10 %" split).
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RetrievalSplit:
    """Indices into a pooled image array; `train` is a subset of `database`."""

    query: np.ndarray
    database: np.ndarray
    train: np.ndarray


def class_balanced_retrieval_split(labels, queries_per_class=1000, train_per_class=500,
                                   seed=0):
    """Draws the split for single-label `labels` [N] (class ids); deterministic given `seed`.

    Every class must have more than `queries_per_class` images and at least
    `queries_per_class + train_per_class` of them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be class ids of shape [N]; got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    query, train = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        needed = queries_per_class + train_per_class
        if len(members) < needed:
            raise ValueError(f"class {c} has {len(members)} images; the split needs "
                             f"{queries_per_class} queries + {train_per_class} training images")
        chosen = rng.permutation(members)
        query.append(chosen[:queries_per_class])
        train.append(chosen[queries_per_class:needed])
    query = np.sort(np.concatenate(query))
    train = np.sort(np.concatenate(train))
    database = np.setdiff1d(np.arange(len(labels)), query)
    return RetrievalSplit(query=query, database=database, train=train)

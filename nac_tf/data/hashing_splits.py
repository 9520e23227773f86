"""Seeded query / database / training splits of the hash-code retrieval protocol
(docs/protocols.md section 2).

CIFAR-10 (Yang et al., 2019, used by the paper's Table 3): pool the 60 000 train and test
images; draw 1 000 queries per class; the other 50 000 images are the database; pretraining
uses 500 images per class drawn from the database (the "10 %" split).

FLICKR-25K (paper Table 4): 2 000 random queries, the rest the database, 5 000 random
training images drawn from the database (`random_retrieval_split`).
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RetrievalSplit:
    """Sorted indices into a pooled image array; `train` is a subset of `database`, and
    `query` and `database` are disjoint."""

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


def random_retrieval_split(num_items, num_queries, num_train, seed=0):
    """`num_queries` random queries among `num_items`, the rest the database, and
    `num_train` random training items drawn from the database; deterministic given `seed`.
    (Label-agnostic, so it serves multi-label data such as FLICKR-25K.)"""
    for name, value in (("num_items", num_items), ("num_queries", num_queries),
                        ("num_train", num_train)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer; received {value!r}")
    if num_queries + num_train > num_items:
        raise ValueError(f"the split needs {num_queries} queries + {num_train} training "
                         f"images from the database, but there are only {num_items} images")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(num_items)
    query = np.sort(shuffled[:num_queries])
    database = np.sort(shuffled[num_queries:])
    train = np.sort(rng.choice(database, size=num_train, replace=False))
    return RetrievalSplit(query=query, database=database, train=train)


def contiguous_order(split, num_items):
    """A permutation of range(num_items) that makes the split's sets contiguous slices:
    [query | train | database without train | items in neither set].

    Rows reordered this way give query, database (train first) and train as slices, hence
    NumPy views of one array: nothing is copied (see `sources.retrieval_source`).
    """
    query, database, train = (np.asarray(a, np.int64) for a in
                              (split.query, split.database, split.train))
    if np.intersect1d(query, database).size:
        raise ValueError("a retrieval split's query and database sets must be disjoint")
    if np.setdiff1d(train, database).size:
        raise ValueError("a retrieval split's training items must all be in the database")
    rest_of_database = np.setdiff1d(database, train)
    unused = np.setdiff1d(np.arange(num_items), np.concatenate([query, database]))
    order = np.concatenate([query, train, rest_of_database, unused])
    if len(order) != num_items or (num_items and (order.min() < 0 or order.max() >= num_items)):
        raise ValueError(f"the split's indices do not fit a pool of {num_items} items")
    return order

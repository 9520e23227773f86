"""Seeded splits of labelled data: a stratified held-out set (`stratified_split`: the test
split of digits and image folders, the linear probe's validation split), and the query /
database / training splits of the hash-code retrieval protocol (docs/protocols.md
section 2).

CIFAR-10 (Yang et al., 2019, used by the paper's Table 3): pool the 60 000 train and test
images; draw 1 000 queries per class; the other 50 000 images are the database; pretraining
uses 500 images per class drawn from the database (the "10 %" split).

FLICKR-25K (paper Table 4): 2 000 random queries, the rest the database, 5 000 random
training images drawn from the database (`random_retrieval_split`).
"""
import dataclasses

import numpy as np


def stratified_split(labels, held_out, seed, stream=0, name="held_out"):
    """(kept indices, held-out indices) of class-id `labels` [N], seeded, disjoint, each
    sorted ascending.

    `held_out`: a fraction of N (rounded) or an explicit count. Stratified: that number is
    shared out over the classes in proportion to their frequency by the largest-remainder
    method (ties to the smaller class id), so every class keeps its share on both sides;
    within a class the held-out items are drawn from the random stream (seed, `stream`).
    ValueError (naming the argument as `name`) unless both sides get at least one item.
    """
    labels = np.asarray(labels, np.int64)
    n = labels.shape[0]
    if isinstance(held_out, (int, np.integer)) and not isinstance(held_out, bool):
        count = int(held_out)
    else:
        count = int(round(float(held_out) * n))
    if not 1 <= count <= n - 1:
        raise ValueError(f"{name}={held_out!r} holds out {count} of {n} examples; both sides "
                         "need at least one")
    classes, counts = np.unique(labels, return_counts=True)
    quotas = count * counts / n
    per_class = np.floor(quotas).astype(np.int64)
    remainder = count - int(per_class.sum())
    # Largest fractional parts first; np.argsort is stable, so ties go to smaller class ids.
    per_class[np.argsort(-(quotas - per_class), kind="stable")[:remainder]] += 1
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))
    held = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:take]
                                   for c, take in zip(classes, per_class)]))
    is_held = np.zeros(n, bool)
    is_held[held] = True
    return np.flatnonzero(~is_held), held


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

"""Datasets, view-pair augmentation and input pipelines.

- `sources`: where images come from (digits, .npz archives, image folders, TFDS) as
  `ImageSource`s; `load_source` dispatches on the `--dataset` flag.
- `views`: `ViewPairAugmenter`, two augmented views per image (torchvision's SimCLR and
  MoCo-v2 recipes in plain TensorFlow ops).
- `pipeline`: tf.data pipelines for pretraining (sharded, shuffled view pairs) and
  evaluation (plain batches).
- `hashing_splits`: query / database / training splits of the retrieval protocol.

Submodules are imported explicitly (TFDS is slow to import, and flag validation needs
only `sources.DATASETS`).
"""

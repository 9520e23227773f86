"""Datasets, view-pair augmentation and input pipelines.

- `sources`: `ImageSource` (arrays in memory or streamed) and the loaders of digits and
  .npz archives; `image_folder`: class folders; `tfds_sources`: CIFAR-10, ImageNet and the
  CIFAR-10 retrieval split through TFDS; `flickr25k`: the FLICKR-25K loader;
  `tfds_prepare`: preparing a TFDS dataset from local files or its download, or saying in
  one line why it cannot be.
- `catalog`: datasets by name (`load_source`, their input statistics), from their records
  in `nac_tf.specs.datasets`.
- `views`: `ViewPairAugmenter`, two augmented views per image (torchvision's SimCLR and
  MoCo-v2 recipes in plain TensorFlow ops).
- `pipeline`: tf.data pipelines for pretraining (sharded, shuffled view pairs) and
  evaluation (plain batches).
- `splits`: query / database / training splits of the retrieval protocol.

Submodules are imported explicitly (TFDS is slow to import, and flag validation needs
only `nac_tf.specs.datasets`).
"""

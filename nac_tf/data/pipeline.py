"""tf.data input pipelines: endless, sharded, shuffled view pairs for pretraining; plain
ordered batches for evaluation.

Resumable input (design). The pretraining stream is indexed: global batch t of a run is a
pure function of (seed, t), so the input position of a run is one number, the count of
global batches consumed, and resuming at batch t costs nothing (the dataset starts its
counter at t; no batch before it is read, decoded or augmented).

- Order: the infinite stream of training images is epoch after epoch of a permutation
  that depends only on (seed, epoch), computed per element with
  `tf.random.experimental.index_shuffle`; global batch t holds stream positions
  [t·B, (t + 1)·B) (B the global batch), so batches run across epoch boundaries like
  shuffle → repeat → batch did, and no image is dropped.
- Views: `augmenter(images, batch_index=t, rows=...)` draws every random parameter
  statelessly from (seed, t, row) (`nac_tf.data.views`). With augment_on="device" the
  element carries the crops and those parameters instead of finished views, so a resumed
  run's step finishes the same views too.
- Sharding: input pipeline p of P (one per worker) makes the rows of global replicas
  p·R .. p·R + R - 1 (R = replicas per pipeline), each a contiguous slice of the global
  batch; `distribute_datasets_from_function` hands a pipeline's consecutive per-replica
  batches to its replicas in order. Every pipeline reads only its own rows, and the global
  batch (images and views) is the same whatever the number of workers and replicas.

Rejected alternative: checkpointing the tf.data iterator (tf.train.Checkpoint(iterator=...)).
It fails outright with stateful random generators in the map ("RngReadAndSkip is
stateful"; the keras-cv augmentation layers used before had them), and without them the
state of the previous pipeline (cache plus a full shuffle buffer) made a 320 MB checkpoint
for CIFAR-10, written in 2.3 s, on top of the model's; FLICKR-25K at 224² would be
gigabytes.

Streamed sources (ImageNet through TFDS) cannot be indexed: they keep a seeded shuffle
buffer over their file-sharded stream. Their views are still indexed by t, but after a
resume the image order restarts (reshuffled with the resume position in the seed), so a
resumed ImageNet run is reproducible but not bit-identical to an uninterrupted one.
A stream whose images differ in size (`source.uniform_size` False: ImageNet's training
images) is batched as a RaggedTensor, and the augmenter crops every image at its own
resolution with its row's draws: the views are those a batch of one size would get (the
crop and the later stages treat every image on its own).
"""
import numpy as np
import tensorflow as tf

from nac_tf.data.sources import resize_square

# Shuffle buffer of streamed sources (ImageNet): a full shuffle would hold the decoded
# dataset in memory; files are also read in shuffled order, which mixes further.
STREAM_SHUFFLE_BUFFER = 10_000
# Tag of the shuffle-order stream, so it never coincides with another stream of the seed.
_ORDER_STREAM = 0x5EED0


def _check_batch_size(batch_size, name="batch_size"):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"{name} must be a positive integer; received {batch_size!r}")


def per_replica_batch_size(global_batch_size, input_context=None):
    """The batch one replica sees; the global batch must split evenly over replicas."""
    _check_batch_size(global_batch_size)
    if input_context is None:
        return global_batch_size
    replicas = input_context.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"batch_size={global_batch_size} must be divisible by the number "
                         f"of replicas ({replicas})")
    return input_context.get_per_replica_batch_size(global_batch_size)


def steps_per_epoch(num_train, global_batch_size):
    """Full global batches in one pass over `num_train` images (the remainder is dropped)."""
    _check_batch_size(global_batch_size)
    return num_train // global_batch_size


def _layout(global_batch_size, input_context):
    """(per-replica batch, pipelines, this pipeline's id, replicas per pipeline)."""
    batch_size = per_replica_batch_size(global_batch_size, input_context)
    if input_context is None:
        return batch_size, 1, 0, 1
    pipelines = input_context.num_input_pipelines
    replicas = input_context.num_replicas_in_sync
    if replicas % pipelines:
        raise ValueError(f"{replicas} replicas do not split evenly over {pipelines} input "
                         "pipelines (workers with different device counts)")
    return batch_size, pipelines, input_context.input_pipeline_id, replicas // pipelines


def shuffled_positions(positions, num_images, seed):
    """Image index at each stream position (int64 [N]): epoch e = position // num_images
    is a permutation of range(num_images) fixed by (seed, e)."""
    positions = tf.cast(positions, tf.int64)
    epochs = positions // num_images
    key = np.random.SeedSequence([seed, _ORDER_STREAM]).generate_state(2, dtype=np.uint32)
    # One seed per epoch, (k0, k1, epoch). The raw op, because the public wrapper
    # (tf.random.experimental.index_shuffle, TF 2.21) pads a batch of seeds [n, 2] along the
    # wrong axis; 4 rounds as in that wrapper.
    seeds = tf.stack([tf.fill(tf.shape(epochs), tf.constant(int(key[0]), tf.int64)),
                      tf.fill(tf.shape(epochs), tf.constant(int(key[1]), tf.int64)), epochs],
                     axis=1)
    return tf.raw_ops.RandomIndexShuffle(
        index=positions % num_images, seed=seeds,
        max_index=tf.fill(tf.shape(epochs), tf.constant(num_images - 1, tf.int64)), rounds=4)


def make_pretrain_dataset(source, augmenter, global_batch_size, input_context=None, seed=0,
                          start_batch=0):
    """Endless (view1, view2) float32 batches of this pipeline's replicas, from global batch
    `start_batch` on (see the module docstring for order, views and sharding).

    Meant for `strategy.distribute_datasets_from_function`: yields per-replica batches of
    `global_batch_size / num_replicas_in_sync` images, R consecutive elements per global
    batch (R = replicas fed by this pipeline). `augmenter(images, batch_index=t,
    rows=(offset, global_batch_size))` maps a uint8 batch [b, H, W, 3] to two views
    (e.g. ViewPairAugmenter); it runs in a parallel, order-preserving map. Whatever it
    returns is the element: `ViewPairAugmenter.crop_pair` makes CropPairs, the crops and
    the random draws of the colour stages the train step finishes (augment_on="device").
    """
    batch_size, pipelines, pipeline_id, local_replicas = _layout(global_batch_size,
                                                                 input_context)
    if isinstance(start_batch, bool) or not isinstance(start_batch, (int, np.integer)) \
            or start_batch < 0:
        raise ValueError(f"`start_batch` must be an integer >= 0; received {start_batch!r}")
    start = int(start_batch) * local_replicas

    def batch_layout(element):
        """(global batch index, first row in the global batch) of per-replica element j."""
        element = tf.cast(element, tf.int64)
        replica = pipeline_id * local_replicas + element % local_replicas
        return element // local_replicas, replica * batch_size

    # Not converted by AutoGraph, which both maps below apply: the augmenters branch and loop
    # in Python over static values only (shapes, recipe settings), so converting their
    # thousand-odd calls changes no op and costs about a quarter of the maps' tracing time,
    # paid at every start of a run.
    @tf.autograph.experimental.do_not_convert
    def views(images, batch, offset):
        return augmenter(images, batch_index=batch, rows=(offset, global_batch_size))

    if source.has_arrays:
        num_images = source.num_train
        if num_images < 1:
            raise ValueError(f"{source.name} has no training images")
        # Random access: every pipeline gathers its own rows from the whole array.
        images = tf.constant(source.train_images)

        def element(j):
            batch, offset = batch_layout(j)
            indices = _batch_indices(global_batch_size, batch, offset, batch_size,
                                     num_images, seed)
            return views(tf.gather(images, indices), batch, offset)

        dataset = tf.data.Dataset.counter(start=start, dtype=tf.int64)
        dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
        return _in_order(dataset.prefetch(tf.data.AUTOTUNE))

    # Streamed: the source cuts the shard itself (files, before decoding).
    stream = source.train_dataset(input_context).map(lambda image, label: image)
    shard_size = -(-source.num_train // pipelines)
    shuffle_seed = int(np.random.SeedSequence([seed, _ORDER_STREAM, pipeline_id, start])
                       .generate_state(1)[0])
    stream = stream.shuffle(max(min(shard_size, STREAM_SHUFFLE_BUFFER), 1), seed=shuffle_seed,
                            reshuffle_each_iteration=True).repeat()
    # Images of different sizes travel as a RaggedTensor batch, which the augmenter crops
    # image by image (ViewPairAugmenter accepts both).
    stream = (stream.batch(batch_size, drop_remainder=True) if source.uniform_size else
              stream.ragged_batch(batch_size, drop_remainder=True))
    dataset = tf.data.Dataset.zip(tf.data.Dataset.counter(start=start, dtype=tf.int64), stream)
    dataset = dataset.map(lambda j, batch_images: views(batch_images, *batch_layout(j)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _in_order(dataset.prefetch(tf.data.AUTOTUNE))


def _batch_indices(global_batch_size, batch, offset, count, num_images, seed):
    """Image indices of rows offset .. offset + count - 1 of global batch `batch`."""
    positions = batch * global_batch_size + offset + tf.range(count, dtype=tf.int64)
    return shuffled_positions(positions, num_images, seed)


def first_view_pairs(source, augmenter, global_batch_size, count, seed=0, batch_index=0):
    """(view1, view2) of the first `count` images of global batch `batch_index`, float32
    [count, S, S, 3] in [0, 1], as `make_pretrain_dataset` makes them (for TensorBoard).

    In-memory sources: exactly rows 0 .. count - 1 of that batch. Streamed sources: the
    first images of the unshuffled stream (the shuffle buffer's order cannot be indexed),
    augmented with those rows' draws (a RaggedTensor batch when they differ in size).
    `count` is capped at the batch and the training set.
    """
    _check_batch_size(global_batch_size)
    count = min(int(count), global_batch_size, source.num_train)
    if count < 1:
        raise ValueError(f"`count` must be >= 1 and {source.name} must have training "
                         f"images; received count={count}")
    if source.has_arrays:
        indices = _batch_indices(global_batch_size, tf.constant(batch_index, tf.int64), 0,
                                 count, source.num_train, seed)
        images = source.train_images[indices.numpy()]
    elif not source.uniform_size:
        stream = source.train_dataset().map(lambda image, label: image)
        images = next(iter(stream.ragged_batch(count).take(1)))
    else:
        images = first_training_images(source, count)
    return augmenter(images, batch_index=batch_index, rows=(0, global_batch_size))


def first_training_images(source, count):
    """The first `count` training images of `source` in its own order, uint8 [n, H, W, 3]
    (arrays: a view of them; streamed sources: the first batch of the stream, resized to
    `source.image_shape` when its images differ in size)."""
    if source.has_arrays:
        return source.train_images[:count]
    stream = source.train_dataset().map(lambda image, label: image)
    if not source.uniform_size:
        stream = stream.map(lambda image: resize_square(image, source.image_shape[0]))
    return next(iter(stream.batch(count).take(1))).numpy()


def _in_order(dataset):
    """Elements leave in index order whatever the parallelism: the n-th batch a replica
    receives must be batch n for resumes and multi-worker runs to match. It costs little,
    every batch being the same amount of work."""
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


def evaluation_images(images, image_size=None):
    """uint8 [B, H, W, 3] -> float32 in [0, 1], resized (bilinear, anti-aliased, clipped to
    [0, 1]) to `image_size`^2 when H x W differs: the one evaluation preprocessing, shared by
    `make_eval_dataset`, the linear probe and the exported SavedModel, so that their features
    agree. H and W may be unknown until run time (a SavedModel's signature)."""
    images = tf.cast(images, tf.float32) / 255.0
    if image_size is None:
        return images

    def resized():
        return tf.clip_by_value(
            tf.image.resize(images, (image_size, image_size), antialias=True), 0.0, 1.0)

    height, width = images.shape[1], images.shape[2]
    if height is not None and width is not None:
        return images if (height, width) == (image_size, image_size) else resized()
    shape = tf.shape(images)
    same = tf.logical_and(tf.equal(shape[1], image_size), tf.equal(shape[2], image_size))
    return tf.cond(same, lambda: images, resized)


def make_eval_dataset(images, labels, batch_size, image_size=None):
    """(float32 images in [0, 1], labels) batches in order, without augmentation.

    images: uint8 [N, H, W, 3]; resized (bilinear, anti-aliased) to `image_size`² when that
    differs from H × W. The last batch may be smaller.
    """
    _check_batch_size(batch_size)
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must have shape [N, H, W, C]; received {images.shape}")

    def prepare(batch, batch_labels):
        return evaluation_images(batch, image_size), batch_labels

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

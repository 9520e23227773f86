"""tf.data input pipelines: endless, sharded, shuffled view pairs for pretraining; plain
ordered batches for evaluation."""
import numpy as np
import tensorflow as tf

# Shuffle buffer of streamed sources (ImageNet): a full shuffle would hold the decoded
# dataset in memory; files are also read in shuffled order, which mixes further.
STREAM_SHUFFLE_BUFFER = 10_000


def _check_batch_size(batch_size, flag="batch_size"):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"--{flag} must be a positive integer; received {batch_size!r}")


def per_replica_batch_size(global_batch_size, input_context=None):
    """The batch one replica sees; the global batch must split evenly over replicas."""
    _check_batch_size(global_batch_size)
    if input_context is None:
        return global_batch_size
    replicas = input_context.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(f"--batch_size={global_batch_size} must be divisible by the number "
                         f"of replicas ({replicas})")
    return input_context.get_per_replica_batch_size(global_batch_size)


def steps_per_epoch(num_train, global_batch_size):
    """Full global batches in one pass over `num_train` images (the remainder is dropped)."""
    _check_batch_size(global_batch_size)
    return num_train // global_batch_size


def make_pretrain_dataset(source, augmenter, global_batch_size, input_context=None, seed=0):
    """Endless (view1, view2) float32 batches of this replica's share of the global batch.

    Meant for `strategy.distribute_datasets_from_function`: each input pipeline reads its
    own shard of the training images (input_pipeline_id of num_input_pipelines), shuffles
    it (seeded, reshuffled every epoch), and yields batches of
    `global_batch_size / num_replicas_in_sync` images, dropping the incomplete last batch.
    `augmenter` maps a uint8 batch [B, H, W, 3] to two views (e.g. ViewPairAugmenter); it
    runs on whole batches in a parallel map. In-memory sources are cached as uint8 images,
    so later epochs only shuffle and augment.
    """
    batch_size = per_replica_batch_size(global_batch_size, input_context)
    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
    # The source cuts the shard itself: streamed sources shard files before decoding.
    dataset = source.train_dataset(input_context).map(lambda image, label: image)
    shard_size = -(-source.num_train // pipelines)
    if source.has_arrays:
        dataset = dataset.cache()
        buffer = shard_size  # a full shuffle: the shard is in memory anyway
    else:
        buffer = min(shard_size, STREAM_SHUFFLE_BUFFER)
    # Shards hold different images, but distinct seeds also keep the orders unrelated.
    dataset = dataset.shuffle(max(buffer, 1), seed=seed + pipeline_id,
                              reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
    dataset = dataset.map(augmenter, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(images, labels, batch_size, image_size=None):
    """(float32 images in [0, 1], labels) batches in order, without augmentation.

    images: uint8 [N, H, W, 3]; resized (bilinear, anti-aliased) to `image_size`² when that
    differs from H × W. The last batch may be smaller.
    """
    _check_batch_size(batch_size)
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must have shape [N, H, W, C]; received {images.shape}")
    resize = image_size is not None and tuple(images.shape[1:3]) != (image_size, image_size)

    def prepare(batch, batch_labels):
        batch = tf.cast(batch, tf.float32) / 255.0
        if resize:
            batch = tf.clip_by_value(
                tf.image.resize(batch, (image_size, image_size), antialias=True), 0.0, 1.0)
        return batch, batch_labels

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

"""A probe from uint8 images (docs/protocols.md section 2): the frozen encoder runs once
over every image, or, with `augment`, inside the training loop on training images that get
the CIFAR pad-and-crop + flip afresh every epoch (validation and test images are encoded
once, un-augmented). The rate search and the final fit are `nac_tf.evaluation.probe`'s.
"""
import numpy as np
import tensorflow as tf

from nac_tf.data.pipeline import evaluation_images
from nac_tf.evaluation.probe import (AUGMENT_STREAM, check_config, check_features,
                                     check_labels, check_num_classes, check_positive_int,
                                     epoch_orders, evaluation, progress_bar,
                                     random_stream, rate_search_and_fit, run_epochs)

# Pixels of zero padding of the CIFAR pad-and-crop augmentation (He et al., 2016).
CROP_PADDING = 4

def _check_images(name, images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be a non-empty uint8 array [N, H, W, 3]; received "
                         f"shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8; received {images.dtype}")
    return images


def pad_crop_flip(images, seed):
    """The CIFAR linear-evaluation augmentation on a float batch [B, H, W, C].

    Zero-pad CROP_PADDING pixels on each side, crop a random H x W window (offsets uniform
    in [0, 2 * CROP_PADDING]), flip horizontally with probability 1/2; per image,
    stateless in `seed` (shape [2] int) so a run is reproducible whatever the pipeline's
    parallelism.
    """
    batch = tf.shape(images)[0]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [CROP_PADDING] * 2, [CROP_PADDING] * 2, [0, 0]])
    offsets = tf.random.stateless_uniform([batch, 2], seed, minval=0,
                                          maxval=2 * CROP_PADDING + 1, dtype=tf.int32)
    flip = tf.random.stateless_uniform([batch], seed + 1) < 0.5
    # Gather rows then columns per image: a vectorised random crop (no per-image map_fn).
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    cols = tf.where(flip[:, None], tf.reverse(cols, axis=[1]), cols)
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)


def _encode_all(encode, images, batch_size, image_size):
    """Un-augmented features of uint8 images, in order (float32 NumPy [N, D])."""
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size).map(
        lambda batch: evaluation_images(batch, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    chunks = [np.asarray(encode(batch), np.float32)
              for batch in dataset.prefetch(tf.data.AUTOTUNE)]
    features = np.concatenate(chunks, axis=0)
    if features.ndim != 2:
        raise ValueError(f"encode_fn must return [B, D] features; received shape "
                         f"{features.shape[1:]} per example")
    return features


def train_augmented(encode, images, labels, num_classes, learning_rate, config, image_size,
                    eval_features, eval_labels, progress, probe):
    """`train_linear_classifier` (of `probe`) with the encoder in the loop: fresh crops
    every epoch."""
    n = images.shape[0]
    steps_per_epoch = -(-n // config.batch_size)
    trainer = probe.trainer_class(eval_features.shape[1], num_classes, learning_rate,
                                  config.epochs * steps_per_epoch, config)
    # The feature path's order; a global step index seeds the crops.
    orders = epoch_orders(n, config.epochs, config.seed)
    augment_seed = int(random_stream(config.seed, AUGMENT_STREAM).integers(2 ** 31 - 1))
    images_t = tf.convert_to_tensor(images)
    labels_t = tf.convert_to_tensor(labels.astype(np.int32))

    def load(step_index, batch_idx):
        seed = tf.stack([tf.constant(augment_seed, tf.int64), step_index])
        batch = evaluation_images(tf.gather(images_t, batch_idx), image_size)
        return pad_crop_flip(batch, seed), tf.gather(labels_t, batch_idx)

    # One pipeline over all epochs (batches never straddle two epochs), so prefetching
    # continues across epoch boundaries; deterministic map keeps the batch order.
    dataset = (tf.data.Dataset.from_tensor_slices(orders)
               .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order)
                         .batch(config.batch_size))
               .enumerate()
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .prefetch(tf.data.AUTOTUNE))

    @tf.function(reduce_retracing=True)
    def step(batch_images, batch_labels):
        # The encoder is frozen: no gradient flows into it (the caller's closure runs it
        # with training=False, so BatchNorm uses its moving statistics).
        features = tf.stop_gradient(tf.cast(encode(batch_images), tf.float32))
        return trainer._step(features, batch_labels)

    bar = progress_bar(progress, config.epochs, learning_rate, f"{n} augmented images", probe)
    batches = iter(dataset)

    def epoch_loss(epoch):
        total = tf.constant(0.0)
        for _ in range(steps_per_epoch):
            total += step(*next(batches))
        return float(total) / n

    losses, diverged = run_epochs(epoch_loss, config.epochs, bar)
    return trainer.classifier(learning_rate, diverged, losses, eval_features, eval_labels)


def evaluation_from_images(probe, encode_fn, train_images, train_labels, test_images,
                           test_labels, num_classes, config, image_size, batch_size_encode,
                           progress):
    """`linear_evaluation_from_images` for any probe."""
    config = check_config(config, probe)
    num_classes = check_num_classes(num_classes)
    if not callable(encode_fn):
        raise ValueError(f"encode_fn must be callable; received {type(encode_fn).__name__}")
    if image_size is not None:
        check_positive_int("image_size", image_size)
    train_images = _check_images("train_images", train_images)
    test_images = _check_images("test_images", test_images)
    train_labels = check_labels("train_labels", train_labels, train_images.shape[0],
                                num_classes, "train_images")
    test_labels = check_labels("test_labels", test_labels, test_images.shape[0],
                               num_classes, "test_images")
    encode_batch = batch_size_encode or config.batch_size
    check_positive_int("batch_size_encode", encode_batch)
    encode = tf.function(encode_fn, reduce_retracing=True)
    test_features = check_features("encoded test_images",
                                   _encode_all(encode, test_images, encode_batch,
                                                image_size))
    if not config.augment:
        train_features = _encode_all(encode, train_images, encode_batch, image_size)
        return evaluation(probe, train_features, train_labels, test_features, test_labels,
                          num_classes, config, progress)

    def validation_features(indices):
        return _encode_all(encode, train_images[indices], encode_batch, image_size)

    def train(images, labels, rate, eval_features, eval_labels):
        return train_augmented(encode, images, labels, num_classes, rate, config,
                               image_size, eval_features, eval_labels, progress, probe=probe)

    return rate_search_and_fit(probe, train, train_images, train_labels, test_features,
                               test_labels, num_classes, config, validation_features)

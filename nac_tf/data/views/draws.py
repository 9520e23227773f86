"""Stateless random draws: the draw keys (`seed_key`, `fold_in`) and `Draws`, one stream
per random parameter, drawn for the whole global batch and sliced to a pipeline's rows."""
import numpy as np
import tensorflow as tf

# One stateless stream per random parameter. A stream's id is its position here: append new
# streams at the end, so that existing draws (and so resumed runs) do not change.
# "crop_area" and "aspect_ratio" hold CROP_ATTEMPTS candidates per image, "jitter_order"
# four keys whose argsort is the order of the jitter's operations. "hue_sign" is retired
# (the hue shift is drawn signed); it keeps its place so that the ids after it stay put.
_STREAMS = ("crop_area", "aspect_ratio", "crop_y", "crop_x", "apply_jitter", "brightness",
            "contrast", "saturation", "hue", "hue_sign", "apply_grayscale", "apply_blur",
            "blur_sigma", "flip", "jitter_order", "shared_flip", "apply_translation")
_STREAM_ID = {name: i for i, name in enumerate(_STREAMS)}


def seed_key(seed):
    """A stateless-RNG key [2] (int64) derived from an integer seed (None: fresh entropy).

    Hashing the seed (SeedSequence) rather than using it directly keeps streams that share
    the user's seed unrelated: the channel noise of the methods is drawn from
    (seed + replica, step), the views from a hash of the seed.
    """
    state = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint32)
    return tf.constant(state.astype(np.int64))


def fold_in(key, *data):
    """`key` [2] folded with each integer of `data` in turn (stateless, deterministic)."""
    for value in data:
        key = tf.random.experimental.stateless_fold_in(
            key, tf.cast(value, tf.int64), alg="philox")
    return key


class Draws:
    """Stateless draws for rows [offset, offset + size) of a batch of `total` images.

    Every draw is made for all `total` rows from the stream's own seed and then sliced, so an
    image's parameters depend on its row in the whole batch, not on how the batch is split.
    Parameters derived from draws with transcendental functions (exp, log) are computed for
    the whole batch too and sliced after (`full_uniform`, `rows`): the vectorised and the
    scalar code paths of such functions round differently, and which path an element takes
    depends on its position in the tensor, that is on the split.
    """

    def __init__(self, key, offset, size, total):
        self.key, self.total = key, tf.cast(total, tf.int32)
        self.offset, self.size = tf.cast(offset, tf.int32), tf.cast(size, tf.int32)

    def full_uniform(self, stream, low=0.0, high=1.0, shape=()):
        """float32 [total, *shape], uniform in [low, high): the whole batch's draw."""
        return tf.random.stateless_uniform(
            tf.concat([[self.total], tf.constant(shape, tf.int32)], axis=0),
            seed=fold_in(self.key, _STREAM_ID[stream]), minval=low, maxval=high,
            dtype=tf.float32, alg="philox")

    def rows(self, values):
        """This share's rows of a whole-batch tensor [total, ...]."""
        return values[self.offset:self.offset + self.size]

    def uniform(self, stream, low=0.0, high=1.0, shape=()):
        """float32 [size, *shape], uniform in [low, high)."""
        return self.rows(self.full_uniform(stream, low, high, shape))

    def coin(self, stream, probability):
        """bool [size], True with `probability`."""
        return self.uniform(stream) < probability

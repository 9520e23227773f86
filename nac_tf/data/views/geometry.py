"""The geometric stages: RandomResizedCrop's windows (or AMDIM's reflect-filled translation),
the horizontal flip folded into the column sampling, and the bilinear resize of the windows
to the view's size."""
import math

import tensorflow as tf

from nac_tf.data.views.colour import Planes

# Candidate boxes per image before RandomResizedCrop falls back to a central crop.
CROP_ATTEMPTS = 10


def crop_windows(draws, height, width, crop_area, aspect_ratio):
    """torchvision RandomResizedCrop.get_params for every image: int32 (top, left,
    crop height, crop width), each [size]. `height`, `width`: the batch's image size, or
    every row's of the whole batch, [total] (rows outside this share: any positive value).

    CROP_ATTEMPTS candidates (area, log-ratio) per image; the first whose rounded sides fit
    wins, else the central fallback. The box arithmetic is float64, like torchvision's
    Python floats, so sides round as its `int(round(...))` does; it is done for the whole
    batch (see `Draws`), then sliced.
    """
    height_f, width_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    # One size for the batch (scalars), or every row's own ([total]), which meet the
    # candidates [total, attempts] as columns.
    height_c, width_c = ((height_f[:, None], width_f[:, None]) if height_f.shape.rank == 1
                         else (height_f, width_f))
    scale = tf.cast(draws.full_uniform("crop_area", *crop_area, shape=[CROP_ATTEMPTS]),
                    tf.float64)
    log_ratio = draws.full_uniform("aspect_ratio", math.log(aspect_ratio[0]),
                                   math.log(aspect_ratio[1]), shape=[CROP_ATTEMPTS])
    ratio = tf.exp(tf.cast(log_ratio, tf.float64))
    target = height_c * width_c * scale
    crop_w = tf.round(tf.sqrt(target * ratio))  # round half to even, as Python's round
    crop_h = tf.round(tf.sqrt(target / ratio))
    fits = (crop_w > 0) & (crop_w <= width_c) & (crop_h > 0) & (crop_h <= height_c)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(fits, axis=1)
    crop_w = tf.gather(crop_w, first, axis=1, batch_dims=1)
    crop_h = tf.gather(crop_h, first, axis=1, batch_dims=1)
    # Fallback: the whole image, its ratio clamped to [min, max], centred.
    min_ratio, max_ratio = aspect_ratio
    in_ratio = width_f / height_f
    fallback_w = tf.where(in_ratio > max_ratio, tf.round(height_f * max_ratio), width_f)
    fallback_h = tf.where(in_ratio < min_ratio, tf.round(width_f / min_ratio), height_f)
    crop_w = tf.where(found, crop_w, fallback_w)
    crop_h = tf.where(found, crop_h, fallback_h)
    # torch.randint(0, H - h + 1): uniform over the valid integer corners.
    top = tf.floor(tf.cast(draws.full_uniform("crop_y"), tf.float64) * (height_f - crop_h + 1))
    left = tf.floor(tf.cast(draws.full_uniform("crop_x"), tf.float64) * (width_f - crop_w + 1))
    top = tf.where(found, tf.minimum(top, height_f - crop_h), tf.floor((height_f - crop_h) / 2))
    left = tf.where(found, tf.minimum(left, width_f - crop_w), tf.floor((width_f - crop_w) / 2))
    return tuple(draws.rows(tf.cast(v, tf.int32)) for v in (top, left, crop_h, crop_w))


def translation_windows(draws, height, width, max_translation, probability):
    """The AMDIM authors' RandomApply([RandomTranslateWithReflect(m)], p) as windows
    (top, left, height, width) [size] of the image reflect-padded by m on every side: a
    shift by (dy, dx) ~ U{-m, ..., m}^2 is the window at (m - dy, m - dx); not applied, the
    window at (m, m), the image itself. `height`, `width`: scalars or this share's [size].
    The offsets use the crop's streams "crop_y" / "crop_x" (the crop is not drawn then)."""
    positions = 2 * max_translation + 1
    offsets = [tf.cast(tf.minimum(tf.floor(draws.uniform(stream) * positions), positions - 1),
                       tf.int32) for stream in ("crop_y", "crop_x")]
    if probability < 1:
        applied = draws.coin("apply_translation", probability)
        offsets = [tf.where(applied, offset, max_translation) for offset in offsets]
    ones = tf.ones([draws.size], tf.int32)
    return (offsets[0], offsets[1], ones * tf.cast(height, tf.int32),
            ones * tf.cast(width, tf.int32))


def reflect_pad(images, pad):
    """[n, H, W, C] (or one image [H, W, C]) reflect-padded by `pad` in H and W."""
    spatial = [[pad, pad], [pad, pad], [0, 0]]
    return tf.pad(images, spatial if images.shape.rank == 3 else [[0, 0]] + spatial,
                  mode="REFLECT")


def _sample_grid(start, length, size, reverse=None):
    """Bilinear source rows (or columns) of `size` outputs over [start, start + length) per
    image, as torch's `interpolate(mode="bilinear", align_corners=False)`: output j samples
    (j + 1/2) · length / size - 1/2, clamped to the crop. Returns (index0, index1, weight1),
    [n, size] each; `reverse` [n] (bool) samples right to left (a flip)."""
    length_f = tf.cast(length, tf.float32)[:, None]
    centres = tf.range(size, dtype=tf.float32) + 0.5
    position = tf.maximum(centres * (length_f / size) - 0.5, 0.0)
    index0 = tf.minimum(tf.floor(position), length_f - 1.0)
    weight1 = position - index0
    index1 = tf.minimum(index0 + 1.0, length_f - 1.0)
    start = start[:, None]
    index0 = tf.cast(index0, tf.int32) + start
    index1 = tf.cast(index1, tf.int32) + start
    if reverse is not None:
        flip = reverse[:, None]
        index0, index1, weight1 = (tf.where(flip, tf.reverse(v, [1]), v)
                                   for v in (index0, index1, weight1))
    return index0, index1, weight1


def resized_crop(images, windows, size, flip=None):
    """Crops `windows` (top, left, height, width) of `images` [n, H, W, 3] resized to
    size × size, float32 in [0, 1], as three colour planes [n, S, S] (R, G, B) stored
    transposed, columns first (see `Planes`). A row pass then a column pass, each a gather
    of the two neighbours and a lerp (bilinear interpolation is separable)."""
    top, left, crop_h, crop_w = windows
    row0, row1, row_weight = _sample_grid(top, crop_h, size)
    col0, col1, col_weight = _sample_grid(left, crop_w, size, flip)
    upper = tf.cast(tf.gather(images, row0, axis=1, batch_dims=1), tf.float32)
    lower = tf.cast(tf.gather(images, row1, axis=1, batch_dims=1), tf.float32)
    rows = upper + (lower - upper) * row_weight[:, :, None, None]  # [n, S, W, 3]
    # Columns through a transpose: gathering whole rows is much faster than pixels.
    rows = tf.transpose(rows, [0, 2, 1, 3])  # [n, W, S, 3]
    first = tf.gather(rows, col0, axis=1, batch_dims=1)
    second = tf.gather(rows, col1, axis=1, batch_dims=1)
    views = (first + (second - first) * col_weight[:, :, None, None]) / 255.0
    return Planes(tf.unstack(views, axis=-1))

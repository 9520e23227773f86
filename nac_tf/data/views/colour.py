"""The colour stages on views held as three colour planes (`Planes`): torchvision's colour
jitter operations (blends, clamp, the hue shift), grayscale and the Gaussian blur, and the
update of the selected images only (sparse) or of all (dense, static shapes)."""
import tensorflow as tf

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma) for R, G, B.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# The colour stages use elementwise ops, gathers and per-image reductions only: their
# result for an image does not depend on the other images of the batch. Matrix products
# would not guarantee that (a matrix-vector product rounds one row differently from many).
# The blur's depthwise convolution computes each channel on its own.


class Planes(tuple):
    """A batch of views as three colour planes (R, G, B), each [n, S, S], stored
    transposed (columns first) as the crop leaves them. The colour stages work on planes:
    per-image factors and the gray image then broadcast over leading dimensions only,
    several times faster than over the channel axis of [n, S, S, 3]."""

    def gray(self):
        """torchvision's rgb_to_grayscale, [n, S, S]."""
        # One AddN, which sums left to right as `r + g + b` does, over terms named in that
        # order. Grappler (in a tf.function such as the train step of augment_on="device")
        # rewrites a chain of adds into an AddN and sorts the inputs of commutative ops by
        # name: with names like mul_8, mul_9, mul_10 the sum would round differently from
        # the input pipeline's.
        with tf.name_scope("gray"):
            return tf.add_n([tf.multiply(plane, weight, name=f"term{i}")
                             for i, (plane, weight) in enumerate(zip(self, GRAY_WEIGHTS))])

    def images(self):
        """[n, S, S, 3], rows first."""
        return tf.transpose(tf.stack(self, axis=0), [1, 3, 2, 0])

    def take(self, rows):
        """The planes of the images `rows` [m]."""
        return Planes(tf.gather(plane, rows) for plane in self)

    def with_rows(self, rows, values):
        """These planes with the images `rows` [m] replaced by the planes `values`."""
        return Planes(tf.tensor_scatter_nd_update(plane, rows[:, None], value)
                      for plane, value in zip(self, values))


def image_mean(images):
    """Mean of each image [n, ...] over all its values, [n]."""
    return tf.reduce_mean(tf.reshape(images, [tf.shape(images)[0], -1]), axis=1)


def clamp(images):
    """clamp(images, 0, 1) in one pass."""
    return tf.raw_ops.ClipByValue(t=images, clip_value_min=tf.constant(0.0),
                                  clip_value_max=tf.constant(1.0))


def shift_hue(planes, shift):
    """torchvision's adjust_hue (to HSV, hue + shift modulo 1, back to RGB) on planes, with
    shift [m] in turns. Elementwise: the hue in sixths of a turn as torchvision's _rgb2hsv
    computes it (sextant of the largest channel, ties to red then green), shifted modulo 6,
    then each channel as min + chroma · F(hue), F the piecewise-linear profile of that
    channel around the hue circle; this is _hsv2rgb's table of (v, p, q, t) per sextant
    (p = min, t and q = min + chroma · f or · (1 - f)). Value and chroma are unchanged."""
    red, green, blue = planes
    value = tf.maximum(tf.maximum(red, green), blue)
    minimum = tf.minimum(tf.minimum(red, green), blue)
    chroma = value - minimum
    is_red, is_green = tf.equal(value, red), tf.equal(value, green)
    difference = tf.where(is_red, green - blue, tf.where(is_green, blue - red, red - green))
    turn = (6.0 * shift)[:, None, None]
    sextant = tf.where(is_red, turn, tf.where(is_green, 2.0 + turn, 4.0 + turn))
    hue = tf.math.floormod(
        sextant + difference / tf.where(tf.equal(chroma, 0.0), 1.0, chroma), 6.0)
    profiles = (clamp(tf.abs(hue - 3.0) - 1.0), clamp(2.0 - tf.abs(hue - 2.0)),
                clamp(2.0 - tf.abs(hue - 4.0)))
    return Planes(minimum + chroma * profile for profile in profiles)


def _selected_rows(mask):
    """Indices [m] (int64) of the True entries of `mask` [n]."""
    return tf.where(mask)[:, 0]


def _if_any(rows, changed, unchanged):
    """`changed()` if `rows` is not empty, else `unchanged` (ops on no image are avoided)."""
    result = tf.cond(tf.size(rows) > 0, changed, lambda: unchanged)
    # In graph mode tf.cond returns the planes as a plain tuple.
    return Planes(result) if isinstance(unchanged, Planes) else result


def update_rows(mask, values, change, dense):
    """`values` (planes, or views [n, S, S, 3]) with the images where `mask` [n] holds
    replaced by `change(their values, pick)`; `pick(x)` takes the same images from a
    per-image tensor [n, ...].

    Sparse (the input pipeline): `change` runs on the selected images only, gathered and
    scattered back, so shapes depend on the draws. Dense (`colour_stage`, in the train
    step): `change` runs on every image and a select keeps the selected ones; static shapes,
    which XLA needs and accelerators prefer, for computing images that are then dropped.
    The numbers are the same: no image's arithmetic depends on the others.
    """
    is_planes = isinstance(values, Planes)
    if dense:
        changed = change(values, lambda x: x)
        if is_planes:
            keep = mask[:, None, None]
            return Planes(tf.where(keep, new, old) for new, old in zip(changed, values))
        return tf.where(mask[:, None, None, None], changed, values)
    rows = _selected_rows(mask)

    def pick(x):
        return tf.gather(x, rows)

    if is_planes:
        return _if_any(rows, lambda: values.with_rows(rows, change(values.take(rows), pick)),
                       values)
    return _if_any(rows, lambda: tf.tensor_scatter_nd_update(
        values, rows[:, None], change(pick(values), pick)), values)


def gaussian_kernels(sigmas, kernel_size):
    """Normalised Gaussian taps [n, kernel_size] for standard deviations [n] (pixels)."""
    pad = kernel_size // 2
    x = tf.range(-pad, pad + 1, dtype=tf.float32)
    sigmas = tf.maximum(sigmas, 1e-7)
    kernels = tf.exp(-tf.square(x)[None, :] / (2.0 * tf.square(sigmas)[:, None]))
    return kernels / tf.reduce_sum(kernels, axis=1, keepdims=True)


def gaussian_blur(images, kernels):
    """Separable blur of [m, H, W, 3] with taps [m, k] per image, reflect-padded: one
    depthwise convolution per direction for the whole batch, the images side by side as
    channels, each channel with its image's taps."""
    kernel_size = kernels.shape[1]
    pad = kernel_size // 2
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    shape = tf.shape(padded)
    batch, height, width = shape[0], shape[1], shape[2]
    stacked = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]), [1, height, width, -1])
    per_channel = tf.reshape(tf.repeat(kernels, 3, axis=0), [-1, kernel_size])  # [m*3, k]
    horizontal = tf.transpose(per_channel)[None, :, :, None]  # [1, k, m*3, 1]
    vertical = tf.transpose(per_channel)[:, None, :, None]  # [k, 1, m*3, 1]
    blurred = tf.nn.depthwise_conv2d(stacked, horizontal, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(blurred, [height - 2 * pad, width - 2 * pad, batch, 3]),
                        [2, 0, 1, 3])

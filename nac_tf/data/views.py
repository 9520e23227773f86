"""Two independently augmented views of every image (DESIGN.md §1), built from keras-cv 0.9.

keras-cv is frozen upstream, so every use of it lives in this module: swapping it for
another augmentation library means rewriting this file only. The recipes follow the
torchvision pipelines of SimCLR (CIFAR) and MoCo-v2 (ImageNet) that the NAC authors used,
in the same order: random resized crop, colour jitter (p), grayscale (p), Gaussian blur (p),
horizontal flip.

Randomness: every view is a pure function of (augmenter seed, batch index, row of the
image in its global batch, view). All random parameters (crop boxes, jitter factors,
apply-with-probability coins, blur sigmas, flips) are drawn with stateless ops
(`tf.random.stateless_uniform`) from a seed folded from those numbers, one stream per
parameter, and handed to keras-cv's deterministic `augment_images(images, transformations)`
methods. keras-cv's own `__call__` draws from stateful `tf.random.Generator`s instead; that
made views depend on the order in which a parallel tf.data map happened to run, and a
tf.data iterator holding such generators cannot be checkpointed at all
("RngReadAndSkip is stateful"). With stateless draws a run resumes exactly by restarting
the input at the right batch index (see `nac_tf.data.pipeline`), and a global batch split
over several input pipelines gets the same views as the whole batch on one host (draws are
made for the whole global batch, cheap scalars per image, and each pipeline keeps its rows).

Crop and blur are applied as one batched op each (tf.image.crop_and_resize with one box per
image, a depthwise convolution with one kernel per image), with the same formulas as
keras-cv's per-image RandomCropAndResize and RandomGaussianBlur: those layers can only
draw their own parameters, one image at a time in a while loop.

Where keras-cv cannot express torchvision's semantics exactly, the closest setting is used
and the difference is written next to it:

- RandomResizedCrop: area uniform in `crop_area` and aspect ratio log-uniform in
  `aspect_ratio`, like torchvision. As in keras-cv, a crop side that would exceed the image
  is clipped to the full side instead of re-drawn (torchvision retries 10 times), so
  large-area crops with extreme aspect ratios come out a little smaller. For non-square
  inputs the aspect ratio is relative to the image's own aspect (crop boxes are in
  normalised coordinates); the sources here yield square images, where both agree.
- ColorJitter: see `_jitter_factors` for the factor conversion. keras-cv applies
  brightness, contrast, saturation and hue in that fixed order; torchvision draws a random
  order for every image. Not expressible with keras-cv's layers; the fixed order is kept.
- GaussianBlur: keras-cv pads with zeros, which darkens a border of about 3σ pixels; the
  images are reflect-padded before the blur and cropped after it, as PIL and torchvision
  effectively do. σ is in pixels of the augmented view, as in MoCo-v2 (σ ∈ [0.1, 2] at 224).
"""
import contextlib
import dataclasses
import math
from typing import Optional, Tuple

import keras
import keras_cv
import numpy as np
import tensorflow as tf

# Channel values inside the augmentation chain: keras-cv's colour layers expect [0, 255].
_VALUE_RANGE = (0.0, 255.0)


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """What one view undergoes. Strengths follow torchvision's conventions.

    image_size: side S of the square output views.
    crop_area: range of the crop's area as a fraction of the input image.
    aspect_ratio: range of the crop's width / height (drawn log-uniformly).
    flip: random horizontal flip with probability 1/2.
    jitter_strength: (brightness, contrast, saturation, hue) as in torchvision's
      ColorJitter: the first three factors are drawn from [1 - s, 1 + s], the hue
      shift from [-h, h] of a full turn. Each in [0, 1]; hue in [0, 0.5].
    jitter_prob: probability of applying the colour jitter to an image.
    grayscale_prob: probability of converting an image to grayscale (3 equal channels).
    blur_prob: probability of a Gaussian blur; kernel ≈ 10 % of image_size (odd).
    blur_sigma: range of the blur's standard deviation, in pixels.
    """

    image_size: int
    crop_area: Tuple[float, float] = (0.08, 1.0)
    aspect_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter_strength: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)

    def __post_init__(self):
        # Flags arrive as lists; store tuples so the config stays hashable and comparable.
        for name, length in (("crop_area", 2), ("aspect_ratio", 2), ("jitter_strength", 4),
                             ("blur_sigma", 2)):
            value = getattr(self, name)
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"`{name}` must be a sequence of {length} numbers; "
                                 f"received {value!r}") from None
            if len(value) != length:
                raise ValueError(f"`{name}` must have {length} numbers; received {value!r}")
            object.__setattr__(self, name, value)
        self._validate()

    def _validate(self):
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)) \
                or self.image_size < 1:
            raise ValueError(f"`image_size` must be a positive integer; received "
                             f"{self.image_size!r}")
        object.__setattr__(self, "image_size", int(self.image_size))
        low, high = self.crop_area
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"`crop_area` must satisfy 0 < min <= max <= 1; received "
                             f"{self.crop_area}")
        low, high = self.aspect_ratio
        if not 0.0 < low <= high:
            raise ValueError(f"`aspect_ratio` must satisfy 0 < min <= max; received "
                             f"{self.aspect_ratio}")
        if not isinstance(self.flip, (bool, np.bool_)):
            raise ValueError(f"`flip` must be True or False; received {self.flip!r}")
        brightness, contrast, saturation, hue = self.jitter_strength
        for name, value, limit in (("brightness", brightness, 1.0),
                                   ("contrast", contrast, 1.0),
                                   ("saturation", saturation, 1.0), ("hue", hue, 0.5)):
            if not 0.0 <= value <= limit:
                raise ValueError(f"`jitter_strength` {name} must be in [0, {limit}]; "
                                 f"received {value} in {self.jitter_strength}")
        for name in ("jitter_prob", "grayscale_prob", "blur_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1]; received {value}")
        low, high = self.blur_sigma
        if not 0.0 < low <= high:
            raise ValueError(f"`blur_sigma` must satisfy 0 < min <= max; received "
                             f"{self.blur_sigma}")

    @property
    def blur_kernel_size(self):
        """Odd kernel side ≈ 10 % of the image size (SimCLR's rule), at least 3."""
        size = max(3, int(round(0.1 * self.image_size)))
        return size if size % 2 else size + 1


def cifar_recipe(image_size=32):
    """SimCLR's CIFAR recipe used by NAC: crop 0.08–1, flip, jitter 0.4/0.4/0.4/0.1 p=0.8,
    grayscale p=0.2, no blur."""
    return AugmentationConfig(image_size=image_size, crop_area=(0.08, 1.0), flip=True,
                              jitter_strength=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.8,
                              grayscale_prob=0.2, blur_prob=0.0)


def imagenet_recipe(image_size=224):
    """MoCo-v2's recipe (ImageNet, FLICKR-25K): crop 0.2–1, same jitter and grayscale,
    Gaussian blur σ ∈ [0.1, 2] with p=0.5, flip."""
    return AugmentationConfig(image_size=image_size, crop_area=(0.2, 1.0), flip=True,
                              jitter_strength=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.8,
                              grayscale_prob=0.2, blur_prob=0.5, blur_sigma=(0.1, 2.0))


# ----------------------------------------------------------------------------- random streams
# One stateless stream per random parameter. A stream's id is its position here: append new
# streams at the end, so that existing draws (and so resumed runs) do not change.
_STREAMS = ("crop_area", "aspect_ratio", "crop_y", "crop_x", "apply_jitter", "brightness",
            "contrast", "saturation", "hue", "hue_sign", "apply_grayscale", "apply_blur",
            "blur_sigma", "flip")
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


class _Draws:
    """Stateless draws for rows [offset, offset + size) of a batch of `total` images.

    Every draw is made for all `total` rows from the stream's own seed and then sliced, so an
    image's parameters depend on its row in the whole batch, not on how the batch is split.
    """

    def __init__(self, key, offset, size, total):
        self.key, self.total = key, tf.cast(total, tf.int32)
        self.offset, self.size = tf.cast(offset, tf.int32), tf.cast(size, tf.int32)

    def uniform(self, stream, low=0.0, high=1.0):
        """float32 [size], uniform in [low, high)."""
        values = tf.random.stateless_uniform(
            [self.total], seed=fold_in(self.key, _STREAM_ID[stream]), minval=low, maxval=high,
            dtype=tf.float32, alg="philox")
        return values[self.offset:self.offset + self.size]

    def coin(self, stream, probability):
        """bool [size], True with `probability`."""
        return self.uniform(stream) < probability


# ----------------------------------------------------------------------------- factor samplers
class _StatelessSampler(keras_cv.core.FactorSampler):
    """A keras-cv factor sampler that draws statelessly: `sampler(shape, seed=...)`.

    keras-cv layers accept it as a factor; the augmenter calls it with the seed of the
    current stream. Without `seed` it uses the seed it was built with (the same numbers on
    every call).
    """

    def __init__(self, low, high, seed=None):
        self.low, self.high = float(low), float(high)
        self._default_key = seed_key(seed)

    def _uniform(self, shape, low, high, seed):
        seed = self._default_key if seed is None else seed
        return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high,
                                           dtype=tf.float32, alg="philox")

    def get_config(self):
        return {"low": self.low, "high": self.high}


class _SaturationSampler(_StatelessSampler):
    """Draws torchvision's saturation factor y ~ U[low, high] and returns y / (1 + y).

    keras-cv's RandomSaturation maps its factor x to the multiplier x / (1 - x); feeding it
    y / (1 + y) makes the multiplier exactly y, uniform like torchvision's.
    """

    def __call__(self, shape=(), dtype="float32", seed=None):
        if self.low == self.high:
            factor = tf.fill(shape, tf.constant(self.low, tf.float32))
        else:
            factor = self._uniform(shape, self.low, self.high, seed)
        return tf.cast(factor / (1.0 + factor), dtype)


def _jitter_factors(jitter_strength, seed=None):
    """Keyword arguments of keras-cv's RandomColorJitter for torchvision strengths (b, c, s, h).

    The mapping, from keras-cv 0.9's source (the augmenter draws from these ranges itself):
    - brightness: torchvision multiplies by b ~ U[1 - s, 1 + s]; keras-cv *adds*
      delta · 255 with delta ~ U[lo, hi]. A multiplicative change cannot be expressed; the
      closest additive one shifts a mid-grey pixel (0.5) by the same amount, (b - 1) · 0.5,
      so delta ∈ [-s/2, s/2].
    - contrast: keras-cv's factor f = (s, s) gives the multiplier U[1 - s, 1 + s] around
      the mean, torchvision's range (s <= 1, so no clamping at 0 is needed). keras-cv
      blends towards each channel's mean, torchvision towards the mean grey level.
    - saturation: keras-cv scales HSV saturation by x / (1 - x); `_SaturationSampler`
      makes that multiplier uniform in [1 - s, 1 + s]. torchvision blends with the grey
      image instead of scaling HSV saturation (close, not identical).
    - hue: keras-cv shifts hue by ±U[lo, hi] / 2 of a turn with a random sign; (0, 2h)
      gives a shift uniform in [-h, h], torchvision's range.
    """
    brightness, contrast, saturation, hue = jitter_strength
    return dict(
        brightness_factor=(-brightness / 2.0, brightness / 2.0),
        contrast_factor=(contrast, contrast),
        saturation_factor=_SaturationSampler(1.0 - saturation, 1.0 + saturation, seed),
        hue_factor=(0.0, 2.0 * hue),
    )


@contextlib.contextmanager
def _float32_layers():
    """Builds layers under a float32 dtype policy, restoring the caller's policy after.

    RandomColorJitter creates its sub-layers without forwarding `dtype`, so under a
    mixed_float16 policy they would compute HSV conversions in float16 and return float16.
    Augmentation is input processing: it stays float32 whatever the model's policy.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class ViewPairAugmenter:
    """Maps a batch of images [B, H, W, 3] (uint8, or float in [0, 255]) to two views.

    `augmenter(images)` returns (view1, view2), float32 in [0, 1] of shape [B, S, S, 3],
    S = config.image_size. Every image and every view gets its own random draws. Works
    eagerly and inside tf.function / tf.data.Dataset.map (graph mode).

    seed: the key of every random draw (None: fresh entropy).
    `augmenter(images, batch_index=i)` is a pure function of (seed, i, images): the input
      pipeline passes the global batch index, which makes views reproducible whatever the
      map's parallelism and lets a resumed run regenerate them exactly.
      `rows=(offset, total)` says that `images` are rows [offset, offset + B) of a global
      batch of `total` images (one input pipeline's share): they then get exactly the views
      they would get in the whole batch.
    Without `batch_index`, every call draws a fresh index from a generator seeded by
      `seed` (reproducible for the same sequence of calls, as keras-cv's layers are).
    """

    def __init__(self, config: AugmentationConfig, seed: Optional[int] = None):
        if not isinstance(config, AugmentationConfig):
            raise ValueError(f"`config` must be an AugmentationConfig; received "
                             f"{type(config).__name__}")
        self.config = config
        self.seed = seed
        self._key = seed_key(seed)
        # Only for calls without a batch index (interactive use, tests): the input
        # pipeline never touches this state.
        self._index_generator = tf.random.Generator.from_seed(
            int(np.random.SeedSequence(seed).generate_state(1)[0]))
        with _float32_layers():
            self._build_layers(config)

    def _build_layers(self, config):
        """keras-cv layers for the stages that can fire; used only through their
        deterministic `augment_images(images, transformations)`."""
        layers = keras_cv.layers
        self._jitter = None
        if config.jitter_prob > 0 and any(config.jitter_strength):
            self._jitter_ranges = _jitter_factors(config.jitter_strength)
            self._jitter = layers.RandomColorJitter(value_range=_VALUE_RANGE,
                                                    **self._jitter_ranges)
        self._grayscale = (layers.Grayscale(output_channels=3) if config.grayscale_prob > 0
                           else None)
        self._flip = layers.RandomFlip(mode="horizontal") if config.flip else None

    # ------------------------------------------------------------------ stages
    def _crop(self, images, draws):
        """Random resized crop: keras-cv RandomCropAndResize's box formula, batched."""
        c = self.config
        area = draws.uniform("crop_area", *c.crop_area)
        log_low, log_high = math.log(c.aspect_ratio[0]), math.log(c.aspect_ratio[1])
        ratio = tf.exp(draws.uniform("aspect_ratio", log_low, log_high))
        height = tf.clip_by_value(tf.sqrt(area / ratio), 0.0, 1.0)
        width = tf.clip_by_value(tf.sqrt(area * ratio), 0.0, 1.0)
        top = draws.uniform("crop_y") * (1.0 - height)
        left = draws.uniform("crop_x") * (1.0 - width)
        boxes = tf.stack([top, left, top + height, left + width], axis=1)
        size = c.image_size
        return tf.image.crop_and_resize(images, boxes, tf.range(tf.shape(images)[0]),
                                        (size, size), method="bilinear")

    def _color_jitter(self, images, draws):
        """keras-cv RandomColorJitter's four steps with factors drawn here, per image."""
        brightness, contrast, saturation, hue = self.config.jitter_strength
        ranges, jitter = self._jitter_ranges, self._jitter
        out = images
        if brightness:
            delta = draws.uniform("brightness", *ranges["brightness_factor"]) * 255.0
            out = jitter.random_brightness.augment_images(out, delta[:, None, None, None])
        if contrast:
            factor = draws.uniform("contrast", 1.0 - contrast, 1.0 + contrast)
            out = jitter.random_contrast.augment_images(out, factor[:, None, None, None])
        if saturation:
            y = draws.uniform("saturation", 1.0 - saturation, 1.0 + saturation)
            out = jitter.random_saturation.augment_images(out, y / (1.0 + y))
        if hue:
            sign = tf.where(draws.coin("hue_sign", 0.5), -1.0, 1.0)
            shift = sign * draws.uniform("hue", *ranges["hue_factor"]) * 0.5
            out = jitter.random_hue.augment_images(out, shift)
        return out

    def _blur(self, images, draws):
        """Gaussian blur with σ ~ U[blur_sigma] per image (keras-cv RandomGaussianBlur's
        separable kernel), reflect-padded so the border keeps its brightness."""
        c = self.config
        kernel_size, pad = c.blur_kernel_size, c.blur_kernel_size // 2
        sigma = tf.maximum(draws.uniform("blur_sigma", *c.blur_sigma), keras.backend.epsilon())
        x = tf.range(-pad, pad + 1, dtype=tf.float32)
        kernels = tf.exp(-tf.square(x)[None, :] / (2.0 * tf.square(sigma)[:, None]))
        kernels /= tf.reduce_sum(kernels, axis=1, keepdims=True)  # [B, k]
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        # One depthwise convolution for the batch: images side by side as channels, each
        # channel with its image's kernel.
        shape = tf.shape(padded)
        batch, height, width = shape[0], shape[1], shape[2]
        stacked = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]), [1, height, width, -1])
        per_channel = tf.reshape(tf.repeat(kernels, 3, axis=0), [-1, kernel_size])  # [B*3, k]
        horizontal = tf.transpose(per_channel)[None, :, :, None]  # [1, k, B*3, 1]
        vertical = tf.transpose(per_channel)[:, None, :, None]  # [k, 1, B*3, 1]
        blurred = tf.nn.depthwise_conv2d(stacked, horizontal, [1, 1, 1, 1], "SAME")
        blurred = tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "SAME")
        blurred = tf.transpose(tf.reshape(blurred, [height, width, batch, 3]), [2, 0, 1, 3])
        return blurred[:, pad:-pad, pad:-pad, :]

    # ------------------------------------------------------------------ views
    def augment(self, images, seed=None, rows=None):
        """One augmented view, float32 in [0, 1].

        seed: stateless key [2] of this view's draws (None: a fresh one, see the class).
        rows: (offset, total): `images` are rows [offset, offset + B) of a batch of `total`.
        """
        images = tf.convert_to_tensor(images)
        if images.shape.rank != 4 or (images.shape[-1] is not None and images.shape[-1] != 3):
            raise ValueError(f"`images` must be a batch [B, H, W, 3]; received shape "
                             f"{images.shape}")
        if seed is None:
            seed = fold_in(self._key, self._next_index())
        size = tf.shape(images)[0]
        offset, total = (0, size) if rows is None else rows
        draws = _Draws(seed, offset, size, total)
        c = self.config

        def maybe(stream, probability, transform, views):
            """`transform` applied to each image with `probability`."""
            if probability <= 0:
                return views
            changed = transform(views, draws)
            if probability >= 1:
                return changed
            return tf.where(draws.coin(stream, probability)[:, None, None, None], changed, views)

        views = self._crop(tf.cast(images, tf.float32), draws)
        if self._jitter is not None:
            views = maybe("apply_jitter", c.jitter_prob, self._color_jitter, views)
        if self._grayscale is not None:
            views = maybe("apply_grayscale", c.grayscale_prob,
                          lambda v, _: self._grayscale.augment_images(v), views)
        if c.blur_prob > 0:
            views = maybe("apply_blur", c.blur_prob, self._blur, views)
        if self._flip is not None:
            flips = draws.uniform("flip")[:, None]
            views = self._flip.augment_images(
                views, {"flip_horizontals": flips, "flip_verticals": tf.zeros_like(flips)})
        # Bilinear resampling and the jitter can leave values a hair outside [0, 255].
        return tf.clip_by_value(tf.cast(views, tf.float32) / 255.0, 0.0, 1.0)

    def __call__(self, images, batch_index=None, rows=None):
        """(view1, view2) of `images`; see the class docstring for `batch_index` and `rows`."""
        index = self._next_index() if batch_index is None else batch_index
        key = fold_in(self._key, index)
        return (self.augment(images, fold_in(key, 1), rows),
                self.augment(images, fold_in(key, 2), rows))

    def _next_index(self):
        return self._index_generator.uniform_full_int([], tf.int64)

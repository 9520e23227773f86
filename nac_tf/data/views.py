"""Two independently augmented views of every image (DESIGN.md §1), built from keras-cv 0.9.

keras-cv is frozen upstream, so every use of it lives in this module: swapping it for
another augmentation library means rewriting this file only. The recipes follow the
torchvision pipelines of SimCLR (CIFAR) and MoCo-v2 (ImageNet) that the NAC authors used,
in the same order: random resized crop, colour jitter (p), grayscale (p), Gaussian blur (p),
horizontal flip.

Where keras-cv cannot express torchvision's semantics exactly, the closest setting is used
and the difference is written next to it:

- RandomResizedCrop: area uniform in `crop_area` and aspect ratio log-uniform in
  `aspect_ratio`, like torchvision. keras-cv clips a crop side that would exceed the image
  to the full side instead of re-drawing (torchvision retries 10 times), so large-area
  crops with extreme aspect ratios come out a little smaller. For non-square inputs the
  keras-cv aspect ratio is relative to the image's own aspect (crop boxes are in
  normalised coordinates); the sources here yield square images, where both agree.
- ColorJitter: see `_jitter_factors` for the factor conversion. keras-cv applies
  brightness, contrast, saturation and hue in that fixed order; torchvision draws a random
  order for every image. Not expressible with RandomColorJitter; the fixed order is kept.
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


# ----------------------------------------------------------------------------- factor samplers
class _GeneratorSampler(keras_cv.core.FactorSampler):
    """Base of the samplers below: draws from a stateful tf.random.Generator.

    keras-cv's UniformFactorSampler uses an op-level seed; two graph ops with the same seed
    return the same numbers, so calling one layer for both views would give both views the
    same crop. A generator advances its state on every draw instead.
    """

    def __init__(self, low, high, seed):
        self.low, self.high = float(low), float(high)
        self._generator = (tf.random.get_global_generator() if seed is None
                           else tf.random.Generator.from_seed(seed))

    def _uniform(self, shape, low, high):
        return self._generator.uniform(shape, minval=low, maxval=high, dtype=tf.float32)


class _UniformSampler(_GeneratorSampler):
    """Uniform in [low, high] (crop area, as torchvision)."""

    def __call__(self, shape=(), dtype="float32"):
        if self.low == self.high:
            return tf.fill(shape, tf.constant(self.low, dtype))
        return tf.cast(self._uniform(shape, self.low, self.high), dtype)


class _LogUniformSampler(_GeneratorSampler):
    """exp(uniform(log low, log high)): torchvision's aspect-ratio distribution."""

    def __call__(self, shape=(), dtype="float32"):
        if self.low == self.high:
            return tf.fill(shape, tf.constant(self.low, dtype))
        log_ratio = self._uniform(shape, math.log(self.low), math.log(self.high))
        return tf.cast(tf.exp(log_ratio), dtype)


class _SaturationSampler(_GeneratorSampler):
    """Draws torchvision's saturation factor y ~ U[low, high] and returns y / (1 + y).

    keras-cv's RandomSaturation maps its factor x to the multiplier x / (1 - x); feeding it
    y / (1 + y) makes the multiplier exactly y, uniform like torchvision's.
    """

    def __call__(self, shape=(), dtype="float32"):
        if self.low == self.high:
            factor = tf.fill(shape, tf.constant(self.low, tf.float32))
        else:
            factor = self._uniform(shape, self.low, self.high)
        return tf.cast(factor / (1.0 + factor), dtype)


def _jitter_factors(jitter_strength, seed):
    """Keyword arguments of keras-cv's RandomColorJitter for torchvision strengths (b, c, s, h).

    The mapping, from keras-cv 0.9's source:
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

    seed: base seed of the layers' random generators (each layer gets its own stream
      derived from it); None draws from TensorFlow's global generator. The streams are
      stateful: results are reproducible for the same sequence of calls, which a parallel
      tf.data map does not guarantee. Build the augmenter outside a distribution
      strategy's scope: its generators are host-side input-pipeline state.
    """

    def __init__(self, config: AugmentationConfig, seed: Optional[int] = None):
        if not isinstance(config, AugmentationConfig):
            raise ValueError(f"`config` must be an AugmentationConfig; received "
                             f"{type(config).__name__}")
        self.config = config
        self.seed = seed
        with _float32_layers():
            self._stages = self._build_stages(config, _stream_seeds(seed))

    @staticmethod
    def _build_stages(config, seeds):
        """The keras-cv layers in torchvision's order, skipping those that cannot fire."""
        layers = keras_cv.layers
        size = config.image_size
        stages = [layers.RandomCropAndResize(
            target_size=(size, size),
            crop_area_factor=_UniformSampler(*config.crop_area, seeds["crop_area"]),
            aspect_ratio_factor=_LogUniformSampler(*config.aspect_ratio, seeds["aspect_ratio"]),
            interpolation="bilinear", seed=seeds["crop_offset"])]
        if config.jitter_prob > 0 and any(config.jitter_strength):
            jitter = layers.RandomColorJitter(
                value_range=_VALUE_RANGE, seed=seeds["jitter"],
                **_jitter_factors(config.jitter_strength, seeds["saturation"]))
            stages.append(_with_probability(jitter, config.jitter_prob, seeds["apply_jitter"]))
        if config.grayscale_prob > 0:
            stages.append(_with_probability(layers.Grayscale(output_channels=3),
                                            config.grayscale_prob, seeds["apply_grayscale"]))
        if config.blur_prob > 0:
            kernel = config.blur_kernel_size
            blur = _with_probability(
                layers.RandomGaussianBlur(kernel_size=kernel, factor=config.blur_sigma),
                config.blur_prob, seeds["apply_blur"])
            stages.append(_ReflectPadded(blur, kernel // 2))
        if config.flip:
            stages.append(layers.RandomFlip(mode="horizontal", seed=seeds["flip"]))
        return stages

    def augment(self, images):
        """One augmented view, float32 in [0, 1]."""
        images = tf.convert_to_tensor(images)
        if images.shape.rank != 4 or (images.shape[-1] is not None and images.shape[-1] != 3):
            raise ValueError(f"`images` must be a batch [B, H, W, 3]; received shape "
                             f"{images.shape}")
        views = tf.cast(images, tf.float32)
        for stage in self._stages:
            views = stage(views)
        # Bilinear resampling and the jitter can leave values a hair outside [0, 255].
        return tf.clip_by_value(tf.cast(views, tf.float32) / 255.0, 0.0, 1.0)

    def __call__(self, images):
        return self.augment(images), self.augment(images)


_SEEDED_STREAMS = ("crop_area", "aspect_ratio", "crop_offset", "jitter", "saturation",
                   "apply_jitter", "apply_grayscale", "apply_blur", "flip")


def _stream_seeds(seed):
    """One seed per random stream, derived from `seed` (all None without a seed).

    Distinct seeds matter: two keras-cv layers built from one seed draw identical numbers,
    which would, e.g., always grayscale exactly the images that were jittered. Seeds are
    tied to stream names so that disabling one stage leaves the others' draws unchanged.
    """
    if seed is None:
        return dict.fromkeys(_SEEDED_STREAMS)
    derived = np.random.SeedSequence(seed).generate_state(len(_SEEDED_STREAMS))
    return {name: int(value) for name, value in zip(_SEEDED_STREAMS, derived)}


def _with_probability(layer, probability, seed):
    """`layer` applied to each image independently with `probability`."""
    if probability >= 1.0:
        return layer
    return keras_cv.layers.RandomApply(layer, rate=probability, seed=seed)


class _ReflectPadded:
    """Runs `layer` on reflect-padded images and crops the padding off again."""

    def __init__(self, layer, padding):
        self.layer = layer
        self.padding = padding

    def __call__(self, images):
        p = self.padding
        padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
        return self.layer(padded)[:, p:-p, p:-p, :]

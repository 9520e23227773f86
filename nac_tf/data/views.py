"""Two independently augmented views of every image, in plain TensorFlow ops.

The recipes are the torchvision pipelines the authors used (`cifar_recipe`,
`imagenet_recipe`; AMDIM's: `amdim_recipe`). SimCLR's, for CIFAR:
RandomResizedCrop(scale=(0.08, 1)), RandomHorizontalFlip(), RandomApply([ColorJitter(0.4,
0.4, 0.4, 0.1)], p=0.8), RandomGrayscale(p=0.2). MoCo-v2's, for ImageNet: the same with
scale=(0.2, 1) and RandomApply([GaussianBlur(σ ∈ [0.1, 2])], p=0.5) after the grayscale,
the flip last. Each stage below follows torchvision's definitions (its transforms and the
functional ops on float tensors), batched: every image and every view has its own random
parameters, and an image's result never depends on the other images of the batch.

Randomness. Every view is a pure function of (augmenter seed, batch index, row of the image
in its global batch, view). All random parameters are drawn with stateless ops
(`tf.random.stateless_uniform`) from a key folded from those numbers, one stream per
parameter (`_STREAMS`). Keras' augmentation layers draw from stateful generators instead:
views would then depend on the order in which a parallel tf.data map happened to run, and a
tf.data iterator holding such a generator cannot be checkpointed ("RngReadAndSkip is
stateful"). With stateless draws a run resumes exactly by restarting the input at the right
batch index (see `nac_tf.data.pipeline`), and a global batch split over several input
pipelines gets bit for bit the views of the whole batch on one host: each stream is drawn
for the whole global batch (cheap scalars per image) and each pipeline keeps its own rows,
and the image ops are chosen so that no image's arithmetic depends on its neighbours (see
`_Draws` and the colour section).

Stages, in order (the flip is done during the crop: it commutes with every later stage,
all per pixel or, for the blur, mirror-symmetric):

1. RandomResizedCrop (`_crop_windows`, `_resized_crop`). torchvision's `get_params`, batched:
   ten candidate boxes per image, each of area U[crop_area] · H · W and aspect ratio w / h
   log-uniform in `aspect_ratio`, sides rounded to whole pixels; the first candidate that
   fits in the image is taken, its top-left corner uniform over the valid integer
   positions; when none of the ten fits, torchvision's fallback, a centred crop of the whole
   image with its ratio clamped to the range (for square images and a range containing 1,
   the whole image). The box is resized to S × S by bilinear interpolation on torch's grid
   (`interpolate(align_corners=False)`: half-pixel centres, source positions clamped to the
   crop's own border), as a row pass and a column pass of gathers and lerps.
   Or, with `max_translation` = m > 0 (the AMDIM authors' CIFAR recipe), their
   RandomApply([RandomTranslateWithReflect(m)], p): the image shifted by whole pixels
   (dy, dx) ~ U{-m, ..., m}^2 with reflection filling the border, i.e. the window at
   (m - dy, m - dx) of the image reflect-padded by m (`_translation_windows`), through the
   same sampling (an exact copy when the image already has the view's size).
2. RandomHorizontalFlip (p = 1/2): the crop's columns are sampled right to left. With
   `shared_flip` (AMDIM: one flip of the image before both views are made), a flip drawn
   from a key both views share (`shared_key`); a crop of the flipped image is the mirrored
   window of the image, reversed, so it folds into the crop the same way (`_flips`).
3. RandomApply([ColorJitter(b, c, s, h)], p). Factors b, c, s ~ U[1 - x, 1 + x] (x the
   strength), hue shift ~ U[-h, h] of a turn, and the four operations in a random order
   per image (torchvision's `randperm(4)`; here the argsort of four uniforms). The
   operations are torchvision's on float images in [0, 1], gray(x) = 0.2989 R + 0.587 G +
   0.114 B:
     brightness  clamp(b · x)                             (multiplicative)
     contrast    clamp(c · x + (1 - c) · mean(gray(x)))   (one mean per image)
     saturation  clamp(s · x + (1 - s) · gray(x))
     hue         to HSV, hue + shift modulo 1, back to RGB (in closed form, `_shift_hue`)
   Batched in four rounds: in round k every image undergoes the operation at position k
   of its own order. A round computes one blend f · x + (1 - f) · target for the whole
   batch, each image with its own factor and target (0, the mean gray or the gray image;
   f = 1 for images whose operation is the hue or that are not jittered), then the hue for
   the images whose hue round it is, gathered.
4. RandomGrayscale (p): gray(x) in the three channels.
5. GaussianBlur (p), MoCo-v2's: σ ~ U[blur_sigma] per image, in pixels of the view; a
   separable sampled Gaussian of `blur_kernel_size` taps (≈ 10 % of the view, SimCLR's
   rule), reflect-padded, computed for the blurred images only.

Views are float32 in [0, 1] (torchvision's ToTensor scale), [B, S, S, 3]. The colour
stages work on three colour planes (`_Planes`); the crop leaves them transposed and the
transpose back is folded into re-interleaving the channels.

Split in two (augment_on="device", `crop_stage` / `colour_stage`, `crop_pair` /
`colour_pair`): the input pipeline does stages 1-2 and draws every random parameter of
stages 3-5; the train step applies stages 3-5 with those parameters. The parameters travel
rather than being drawn in the step because stateless float uniforms differ under XLA; the
step's stages have static shapes (every image computed, the selected ones kept) so that XLA
can compile them. Both halves together make `augment`'s views, bit for bit on CPU.

Remaining deviations from the authors' pipelines:

- The authors augmented PIL images, so every PIL stage rounded to uint8 (and PIL's
  contrast blends with the mean gray rounded to an integer level, its grayscale weights
  are 299/587/114 per mille, its hue shift moves a uint8 hue channel, steps of about 1/256
  of a turn). Here every stage after the crop's sampling is float32, as torchvision computes on
  float tensors, with the tensor ops' weights.
- Resize: bilinear without antialiasing. PIL's bilinear resize (and torchvision's tensor
  resize with `antialias=True`) widens the filter to the scale factor when a crop is larger
  than the view, which smooths downscaled crops a little; the two agree for upscaled crops
  (every crop at 32 px from 32 px images, most crops at 224 px from 256 px images).
- GaussianBlur: MoCo-v2 calls PIL's `ImageFilter.GaussianBlur(radius=σ)`, which
  approximates the Gaussian by three box blurs and extends the edge pixels; here an exact
  sampled Gaussian truncated to `blur_kernel_size` taps (±5.5σ at σ = 2, 224 px) with
  reflect padding, so the border (about 3σ pixels wide) differs slightly.
- Random numbers: Philox stateless streams instead of torch's global generator; the same
  distributions (the jitter order is uniform over the 24 orders up to ties between four
  float32 uniforms, fewer than one image in a million).
- Floating point: the box arithmetic is float64 (torchvision: float32 draws, Python float
  arithmetic), and the closed-form hue round trip and the blends differ from torchvision's
  float32 formulas by a few units in the last place.
"""
import dataclasses
import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma) for R, G, B.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
# Candidate boxes per image before RandomResizedCrop falls back to a central crop.
CROP_ATTEMPTS = 10


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
    shared_flip: random horizontal flip with probability 1/2 applied to the image before
      its two views are made, so both views are flipped or neither (AMDIM's recipe; with
      `flip` too, a view's own flip comes on top).
    max_translation: 0 (default): the RandomResizedCrop above. m > 0: instead of it, the
      AMDIM authors' CIFAR translation: with probability `translation_prob`, the image
      shifted by whole pixels dy, dx ~ U{-m, ..., m}, the uncovered border filled by
      reflection (edge pixel not repeated); then resized to image_size if its size differs.
      Needs images larger than m in both dimensions. crop_area and aspect_ratio are unused.
    translation_prob: probability of the translation (max_translation > 0).
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
    shared_flip: bool = False
    max_translation: int = 0
    translation_prob: float = 0.8

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
        for name in ("flip", "shared_flip"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"`{name}` must be True or False; received "
                                 f"{getattr(self, name)!r}")
        brightness, contrast, saturation, hue = self.jitter_strength
        for name, value, limit in (("brightness", brightness, 1.0),
                                   ("contrast", contrast, 1.0),
                                   ("saturation", saturation, 1.0), ("hue", hue, 0.5)):
            if not 0.0 <= value <= limit:
                raise ValueError(f"`jitter_strength` {name} must be in [0, {limit}]; "
                                 f"received {value} in {self.jitter_strength}")
        if isinstance(self.max_translation, bool) or not isinstance(
                self.max_translation, (int, np.integer)) or self.max_translation < 0:
            raise ValueError(f"`max_translation` must be a non-negative integer (pixels); "
                             f"received {self.max_translation!r}")
        object.__setattr__(self, "max_translation", int(self.max_translation))
        for name in ("jitter_prob", "grayscale_prob", "blur_prob", "translation_prob"):
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


def amdim_recipe(image_size=32):
    """AMDIM's recipe (the authors' code, Philip-Bachman/amdim-public; paper Sec. 4,
    Table 3): a horizontal flip shared by both views, then per view RandomResizedCrop with
    scale (0.3, 1) and ratio (0.7, 1.4), colour jitter 0.4/0.4/0.4 with hue 0.2 (0.1 for
    ImageNet) with p = 0.8, grayscale p = 0.25, no blur.

    The size picks the authors' dataset recipe: up to 32 px their CIFAR one, whose crop
    stage is instead a reflect-filled translation by up to 4 px with p = 0.8
    (`max_translation`); up to 64 px STL10's (the crop, hue 0.2); above, ImageNet's (the
    crop, hue 0.1).

    Deviations besides the module's: their crops resize with PIL's bicubic filter
    (interpolation=3), ours bilinearly; the recipe is the authors' basic augmentation, not
    the Fast AutoAugment policy of their strongest results (paper Table 3, "+strong aug").
    """
    hue = 0.2 if image_size <= 64 else 0.1
    return AugmentationConfig(
        image_size=image_size, crop_area=(0.3, 1.0), aspect_ratio=(0.7, 1.4), flip=False,
        shared_flip=True, jitter_strength=(0.4, 0.4, 0.4, hue), jitter_prob=0.8,
        grayscale_prob=0.25, blur_prob=0.0, max_translation=4 if image_size <= 32 else 0,
        translation_prob=0.8)


def imagenet_recipe(image_size=224):
    """MoCo-v2's recipe (ImageNet, FLICKR-25K): crop 0.2–1, same jitter and grayscale,
    Gaussian blur σ ∈ [0.1, 2] with p=0.5, flip."""
    return AugmentationConfig(image_size=image_size, crop_area=(0.2, 1.0), flip=True,
                              jitter_strength=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.8,
                              grayscale_prob=0.2, blur_prob=0.5, blur_sigma=(0.1, 2.0))


# ----------------------------------------------------------------------------- random streams
# One stateless stream per random parameter. A stream's id is its position here: append new
# streams at the end, so that existing draws (and so resumed runs) do not change.
# "crop_area" and "aspect_ratio" hold CROP_ATTEMPTS candidates per image, "jitter_order"
# four keys whose argsort is the order of the jitter's operations. "hue_sign" is retired
# (the hue shift is drawn signed); it keeps its place so that the ids after it stay put.
_STREAMS = ("crop_area", "aspect_ratio", "crop_y", "crop_x", "apply_jitter", "brightness",
            "contrast", "saturation", "hue", "hue_sign", "apply_grayscale", "apply_blur",
            "blur_sigma", "flip", "jitter_order", "shared_flip", "apply_translation")
_STREAM_ID = {name: i for i, name in enumerate(_STREAMS)}

# Positions of the jitter's operations in a draw of the order (torchvision's fn_idx).
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


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


# ----------------------------------------------------------------------------- crop
def _crop_windows(draws, height, width, crop_area, aspect_ratio):
    """torchvision RandomResizedCrop.get_params for every image: int32 (top, left,
    crop height, crop width), each [size]. `height`, `width`: the batch's image size, or
    every row's of the whole batch, [total] (rows outside this share: any positive value).

    CROP_ATTEMPTS candidates (area, log-ratio) per image; the first whose rounded sides fit
    wins, else the central fallback. The box arithmetic is float64, like torchvision's
    Python floats, so sides round as its `int(round(...))` does; it is done for the whole
    batch (see `_Draws`), then sliced.
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


def _translation_windows(draws, height, width, max_translation, probability):
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


def _reflect_pad(images, pad):
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


def _resized_crop(images, windows, size, flip=None):
    """Crops `windows` (top, left, height, width) of `images` [n, H, W, 3] resized to
    size × size, float32 in [0, 1], as three colour planes [n, S, S] (R, G, B) stored
    transposed, columns first (see `_Planes`). A row pass then a column pass, each a gather
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
    return _Planes(tf.unstack(views, axis=-1))


# ----------------------------------------------------------------------------- colour
# The colour stages use elementwise ops, gathers and per-image reductions only: their
# result for an image does not depend on the other images of the batch. Matrix products
# would not guarantee that (a matrix-vector product rounds one row differently from many).
# The blur's depthwise convolution computes each channel on its own.
class _Planes(tuple):
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
        return _Planes(tf.gather(plane, rows) for plane in self)

    def with_rows(self, rows, values):
        """These planes with the images `rows` [m] replaced by the planes `values`."""
        return _Planes(tf.tensor_scatter_nd_update(plane, rows[:, None], value)
                       for plane, value in zip(self, values))


def _image_mean(images):
    """Mean of each image [n, ...] over all its values, [n]."""
    return tf.reduce_mean(tf.reshape(images, [tf.shape(images)[0], -1]), axis=1)


def _clamp(images):
    """clamp(images, 0, 1) in one pass."""
    return tf.raw_ops.ClipByValue(t=images, clip_value_min=tf.constant(0.0),
                                  clip_value_max=tf.constant(1.0))


def _shift_hue(planes, shift):
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
    profiles = (_clamp(tf.abs(hue - 3.0) - 1.0), _clamp(2.0 - tf.abs(hue - 2.0)),
                _clamp(2.0 - tf.abs(hue - 4.0)))
    return _Planes(minimum + chroma * profile for profile in profiles)


def _selected_rows(mask):
    """Indices [m] (int64) of the True entries of `mask` [n]."""
    return tf.where(mask)[:, 0]


def _if_any(rows, changed, unchanged):
    """`changed()` if `rows` is not empty, else `unchanged` (ops on no image are avoided)."""
    result = tf.cond(tf.size(rows) > 0, changed, lambda: unchanged)
    # In graph mode tf.cond returns the planes as a plain tuple.
    return _Planes(result) if isinstance(unchanged, _Planes) else result


def _update_rows(mask, values, change, dense):
    """`values` (planes, or views [n, S, S, 3]) with the images where `mask` [n] holds
    replaced by `change(their values, pick)`; `pick(x)` takes the same images from a
    per-image tensor [n, ...].

    Sparse (the input pipeline): `change` runs on the selected images only, gathered and
    scattered back, so shapes depend on the draws. Dense (`colour_stage`, in the train
    step): `change` runs on every image and a select keeps the selected ones; static shapes,
    which XLA needs and accelerators prefer, for computing images that are then dropped.
    The numbers are the same: no image's arithmetic depends on the others.
    """
    is_planes = isinstance(values, _Planes)
    if dense:
        changed = change(values, lambda x: x)
        if is_planes:
            keep = mask[:, None, None]
            return _Planes(tf.where(keep, new, old) for new, old in zip(changed, values))
        return tf.where(mask[:, None, None, None], changed, values)
    rows = _selected_rows(mask)

    def pick(x):
        return tf.gather(x, rows)

    if is_planes:
        return _if_any(rows, lambda: values.with_rows(rows, change(values.take(rows), pick)),
                       values)
    return _if_any(rows, lambda: tf.tensor_scatter_nd_update(
        values, rows[:, None], change(pick(values), pick)), values)


def _gaussian_kernels(sigmas, kernel_size):
    """Normalised Gaussian taps [n, kernel_size] for standard deviations [n] (pixels)."""
    pad = kernel_size // 2
    x = tf.range(-pad, pad + 1, dtype=tf.float32)
    sigmas = tf.maximum(sigmas, 1e-7)
    kernels = tf.exp(-tf.square(x)[None, :] / (2.0 * tf.square(sigmas)[:, None]))
    return kernels / tf.reduce_sum(kernels, axis=1, keepdims=True)


def _gaussian_blur(images, kernels):
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


# ----------------------------------------------------------------------------- augmenter
class CropPair(NamedTuple):
    """Both views of a batch cut after the crop (`ViewPairAugmenter.crop_pair`): the crops,
    float32 [B, S, S, 3], and the random parameters of the later stages of each view
    ({name: [B, ...]}). An input-pipeline element with augment_on="device"; like a view pair,
    its first two entries are the images."""

    crop1: Any
    crop2: Any
    parameters1: Dict[str, Any]
    parameters2: Dict[str, Any]


class ViewPairAugmenter:
    """Maps a batch of images [B, H, W, 3] (uint8, or float in [0, 255]) to two views.

    A RaggedTensor batch [B, (H), (W), 3] holds images of different sizes (streamed
    ImageNet): every image is cropped at its own resolution, with the same draws as in a
    batch of one size (`_crop_each`), and the later stages run on the resized crops.

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
      `seed` (reproducible for the same sequence of calls).
    `crop_pair(images, batch_index, rows)` and `colour_pair(pair)` are `__call__` cut after
      the crop, for augment_on="device" (see the module docstring).
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

    # ------------------------------------------------------------------ stages
    def _flips(self, draws, shared, windows, width):
        """(windows, column reversal [size] or None): the view's own flip and the shared
        flip (`shared`: the draws both views of an image share). The shared flip happens
        before the crop (AMDIM flips the image, then makes the views); a crop of the flipped
        image at (top, left) is the crop of the image at (top, width - left - w), reversed,
        so it becomes a mirrored window and a reversal like the view's own flip.
        `width`: the images' width, scalar or [size]."""
        c = self.config
        flip = draws.coin("flip", 0.5) if c.flip else None
        if c.shared_flip:
            mirrored = shared.coin("shared_flip", 0.5)
            top, left, crop_h, crop_w = windows
            windows = (top, tf.where(mirrored, width - left - crop_w, left), crop_h, crop_w)
            flip = mirrored if flip is None else tf.not_equal(flip, mirrored)
        return windows, flip

    def _crop(self, images, draws, shared):
        """RandomResizedCrop (or the translation, `max_translation`), with the horizontal
        flips folded into the column sampling; colour planes."""
        c = self.config
        shape = tf.shape(images)
        if c.max_translation:
            windows = _translation_windows(draws, shape[1], shape[2], c.max_translation,
                                           c.translation_prob)
            images = _reflect_pad(images, c.max_translation)
            width = shape[2] + 2 * c.max_translation
        else:
            windows = _crop_windows(draws, shape[1], shape[2], c.crop_area, c.aspect_ratio)
            width = shape[2]
        windows, flip = self._flips(draws, shared, windows, width)
        return _resized_crop(images, windows, c.image_size, flip)

    def _crop_each(self, images, draws, shared):
        """`_crop` of a RaggedTensor batch [n, (H), (W), 3] of images of different sizes:
        the windows of all rows at once (each row's own size), then each image resampled on
        its own; float32 views [n, S, S, 3]."""
        c = self.config
        heights = tf.cast(images.row_lengths(), tf.int32)
        widths = tf.cast(tf.gather(images.values.row_lengths(), images.row_splits[:-1]),
                         tf.int32)
        share = (draws.offset + tf.range(draws.size))[:, None]

        def whole_batch(sizes):  # this share's sizes in the rows of the whole batch
            return tf.tensor_scatter_nd_update(tf.ones([draws.total], tf.int32), share, sizes)

        pad = c.max_translation
        if pad:
            windows = _translation_windows(draws, heights, widths, pad, c.translation_prob)
        else:
            windows = _crop_windows(draws, whole_batch(heights), whole_batch(widths),
                                    c.crop_area, c.aspect_ratio)
        windows, flip = self._flips(draws, shared, windows, widths + 2 * pad)

        def crop(i):
            # Cut the window out first and resample it from its own corner: the same pixels
            # and weights as sampling inside the whole image, at the cost of the crop only.
            top, left, height, width = (w[i] for w in windows)
            image = tf.reshape(images[i].flat_values, [heights[i], widths[i], 3])
            if pad:
                image = _reflect_pad(image, pad)
            window = image[top:top + height, left:left + width][None]
            zero = tf.zeros([1], tf.int32)
            return _resized_crop(window, (zero, zero, height[None], width[None]), c.image_size,
                                 None if flip is None else flip[i:i + 1]).images()[0]

        return tf.map_fn(crop, tf.range(draws.size), fn_output_signature=tf.TensorSpec(
            [c.image_size, c.image_size, 3], tf.float32))

    @property
    def _jitters(self):
        c = self.config
        return c.jitter_prob > 0 and any(c.jitter_strength)

    def _colour_parameters(self, draws):
        """Every random parameter of the stages after the crop, for this share's rows:
        {name: [size, ...]} (float32, int32 or bool), the draws `_colour` consumes."""
        c = self.config
        parameters = {}
        if self._jitters:
            brightness, contrast, saturation, hue = c.jitter_strength
            applied = draws.coin("apply_jitter", c.jitter_prob) if c.jitter_prob < 1 else None
            ones = tf.ones([draws.size])

            def factor(stream, strength):
                if not strength:
                    return ones
                value = draws.uniform(stream, 1.0 - strength, 1.0 + strength)
                return value if applied is None else tf.where(applied, value, 1.0)

            # Blend factor of each operation per image, [n, 4]; 1 (no blend) for the hue.
            parameters["jitter_factors"] = tf.stack(
                [factor("brightness", brightness), factor("contrast", contrast),
                 factor("saturation", saturation), ones], axis=1)
            parameters["jitter_order"] = tf.argsort(draws.uniform("jitter_order", shape=[4]),
                                                    axis=1, stable=True)
            if hue:
                parameters["hue_shift"] = draws.uniform("hue", -hue, hue)
                parameters["jittered"] = tf.ones([draws.size], tf.bool) if applied is None \
                    else applied
        if c.grayscale_prob > 0:
            parameters["grayscale"] = draws.coin("apply_grayscale", c.grayscale_prob)
        if c.blur_prob > 0:
            parameters["blur"] = draws.coin("apply_blur", c.blur_prob)
            parameters["blur_kernels"] = draws.rows(_gaussian_kernels(
                draws.full_uniform("blur_sigma", *c.blur_sigma), c.blur_kernel_size))
        return parameters

    def _color_jitter(self, planes, parameters, dense):
        """RandomApply([ColorJitter]): four rounds, each image in its own order."""
        brightness, contrast, saturation, hue = self.config.jitter_strength
        factors, orders = parameters["jitter_factors"], parameters["jitter_order"]
        for position in range(4):
            operation = orders[:, position]  # [n]
            if brightness or contrast or saturation:
                # f · x + (1 - f) · target: target 0 (brightness), mean(gray(x)) (contrast)
                # or gray(x) (saturation); f = 1 leaves the image as it is.
                f = tf.gather(factors, operation, axis=1, batch_dims=1)
                target = None
                if contrast or saturation:
                    gray = planes.gray()
                    to_gray = tf.where(operation == _SATURATION, 1.0 - f, 0.0)
                    target = gray * to_gray[:, None, None]
                    if contrast:
                        to_mean = tf.where(operation == _CONTRAST, 1.0 - f, 0.0)
                        target += (to_mean * _image_mean(gray))[:, None, None]
                f = f[:, None, None]
                planes = _Planes(_clamp(plane * f if target is None else plane * f + target)
                                 for plane in planes)
            if hue:
                selected = (operation == _HUE) & parameters["jittered"]
                planes = _update_rows(selected, planes, lambda chosen, pick: _shift_hue(
                    chosen, pick(parameters["hue_shift"])), dense)
        return planes

    def _colour(self, planes, parameters, dense=False):
        """The stages after the crop (colour jitter, RandomGrayscale: gray(x) in the three
        channels, RandomApply([GaussianBlur]): σ ~ U[blur_sigma] per image, reflect padding)
        with `parameters` from `_colour_parameters`; the final views. `dense`: see
        `_update_rows`."""
        c = self.config
        if self._jitters:
            planes = self._color_jitter(planes, parameters, dense)
        if c.grayscale_prob > 0:
            def gray(chosen, pick):
                gray = chosen.gray()
                return _Planes((gray, gray, gray))

            planes = _update_rows(parameters["grayscale"], planes, gray, dense)
        views = planes.images()
        if c.blur_prob > 0:
            views = _update_rows(parameters["blur"], views, lambda chosen, pick: _gaussian_blur(
                chosen, pick(parameters["blur_kernels"])), dense)
        # Float input a little outside [0, 255], and the blur's rounding, stay in range.
        return _clamp(views)

    @staticmethod
    def _draws(images, seed, rows):
        size = images.nrows(out_type=tf.int32) if isinstance(images, tf.RaggedTensor) else \
            tf.shape(images)[0]
        offset, total = (0, size) if rows is None else rows
        return _Draws(seed, offset, size, total)

    # ------------------------------------------------------------------ views
    def augment(self, images, seed=None, rows=None, shared_seed=None):
        """One augmented view, float32 in [0, 1].

        seed: stateless key [2] of this view's draws (None: a fresh one, see the class).
        rows: (offset, total): `images` are rows [offset, offset + B) of a batch of `total`.
        shared_seed: key [2] of the draws the two views of an image share (the shared
          flip; `shared_key`); None: `seed` (a lone view then flips with probability 1/2).
        """
        images = self._check(images)
        if seed is None:
            seed = fold_in(self._key, self._next_index())
        if shared_seed is None:
            shared_seed = seed
        if isinstance(images, tf.RaggedTensor):
            return self.colour_stage(*self.crop_stage(images, seed, rows, shared_seed),
                                     static_shapes=False)
        draws = self._draws(images, seed, rows)
        shared = self._draws(images, shared_seed, rows)
        return self._colour(self._crop(images, draws, shared), self._colour_parameters(draws))

    def crop_stage(self, images, seed, rows=None, shared_seed=None):
        """`augment` up to the crop: (crops, parameters). `seed`, `rows` and `shared_seed`
        as for `augment`.

        crops: the resized crops (flip included), float32 [B, S, S, 3] in [0, 1], not yet
          clamped. float32, not uint8: a bilinear crop is not a whole number of levels.
        parameters: every random draw of the later stages, {name: [B, ...]}.
        `colour_stage(*crop_stage(images, seed, rows))` is `augment(images, seed, rows)`,
        bit for bit on CPU (tests/test_data.py).
        """
        images = self._check(images)
        draws = self._draws(images, seed, rows)
        shared = self._draws(images, seed if shared_seed is None else shared_seed, rows)
        crops = (self._crop_each(images, draws, shared) if isinstance(images, tf.RaggedTensor)
                 else self._crop(images, draws, shared).images())
        return crops, self._colour_parameters(draws)

    def colour_stage(self, crops, parameters, static_shapes=True):
        """The stages after the crop (colour jitter, grayscale, blur) on `crops` with their
        `parameters`, both from `crop_stage`: the views `augment` makes.

        Random draws are not made here but travel with the crops: stateless uniforms differ
        under XLA (its float conversion is not TensorFlow's kernels'), the parameters do not.
        With `static_shapes` (the train step's use) every stage computes every image and keeps
        the selected ones, so XLA can compile it, in a jit_compile step or on a TPU; without
        (the input pipeline's use, on CPUs) a stage computes only the images it applies to,
        as `augment` does: same numbers, a fraction of the work (hue, grayscale and blur
        apply to a fraction of the images).
        """
        crops = self._check(crops, name="crops")
        if crops.dtype != tf.float32:
            raise ValueError(f"`crops` must be float32, as crop_stage makes them; received "
                             f"{crops.dtype.name}")
        # Back to the planes in the crop's own transposed layout, so that per-image means sum
        # in the same order as in `augment`.
        planes = _Planes(tf.unstack(tf.transpose(crops, [0, 2, 1, 3]), axis=-1))
        return self._colour(planes, parameters, dense=static_shapes)

    def view_keys(self, batch_index):
        """The draw keys [2] of the two views of global batch `batch_index`."""
        key = fold_in(self._key, batch_index)
        return fold_in(key, 1), fold_in(key, 2)

    def shared_key(self, batch_index):
        """The key [2] of the draws both views of global batch `batch_index` share (the
        shared flip): 0 in the place of the view numbers 1 and 2 of `view_keys`."""
        return fold_in(self._key, batch_index, 0)

    def __call__(self, images, batch_index=None, rows=None):
        """(view1, view2) of `images`; see the class docstring for `batch_index` and `rows`."""
        index = self._next_index() if batch_index is None else batch_index
        key1, key2 = self.view_keys(index)
        shared = self.shared_key(index)
        return (self.augment(images, key1, rows, shared),
                self.augment(images, key2, rows, shared))

    def crop_pair(self, images, batch_index, rows=None):
        """The CropPair of `images`: `__call__` cut after the crop (augment_on="device": the
        input pipeline's part). Arguments as for `__call__`, `batch_index` required."""
        key1, key2 = self.view_keys(batch_index)
        shared = self.shared_key(batch_index)
        (crop1, parameters1), (crop2, parameters2) = (
            self.crop_stage(images, key1, rows, shared),
            self.crop_stage(images, key2, rows, shared))
        return CropPair(crop1, crop2, parameters1, parameters2)

    def colour_pair(self, pair, static_shapes=True):
        """(view1, view2) of a CropPair: `__call__`'s views (the train step's part;
        `static_shapes` as for `colour_stage`)."""
        if not isinstance(pair, CropPair):
            if not isinstance(pair, (tuple, list)) or len(pair) != len(CropPair._fields):
                raise ValueError(f"`pair` must be a CropPair (crop1, crop2, parameters1, "
                                 f"parameters2), as crop_pair makes it; received "
                                 f"{type(pair).__name__}")
            pair = CropPair(*pair)
        return (self.colour_stage(pair.crop1, pair.parameters1, static_shapes),
                self.colour_stage(pair.crop2, pair.parameters2, static_shapes))

    @staticmethod
    def _check(images, name="images"):
        if not isinstance(images, tf.RaggedTensor):
            images = tf.convert_to_tensor(images)
        if images.shape.rank != 4 or (images.shape[-1] is not None and images.shape[-1] != 3):
            raise ValueError(f"`{name}` must be a batch [B, H, W, 3]; received shape "
                             f"{images.shape}")
        return images

    def _next_index(self):
        return self._index_generator.uniform_full_int([], tf.int64)

"""What a view undergoes: `AugmentationConfig`, and the authors' recipes (SimCLR's CIFAR,
MoCo-v2's ImageNet, AMDIM's)."""
import dataclasses
from typing import Tuple

import numpy as np


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

    Deviations besides the package's: their crops resize with PIL's bicubic filter
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

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
parameter (`draws._STREAMS`). Keras' augmentation layers draw from stateful generators
instead: views would then depend on the order in which a parallel tf.data map happened to
run, and a tf.data iterator holding such a generator cannot be checkpointed ("RngReadAndSkip
is stateful"). With stateless draws a run resumes exactly by restarting the input at the
right batch index (see `nac_tf.data.pipeline`), and a global batch split over several input
pipelines gets bit for bit the views of the whole batch on one host: each stream is drawn
for the whole global batch (cheap scalars per image) and each pipeline keeps its own rows,
and the image ops are chosen so that no image's arithmetic depends on its neighbours (see
`draws.Draws` and the module `colour`).

Stages, in order (the flip is done during the crop: it commutes with every later stage,
all per pixel or, for the blur, mirror-symmetric):

1. RandomResizedCrop (`crop_windows`, `resized_crop`). torchvision's `get_params`, batched:
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
   (m - dy, m - dx) of the image reflect-padded by m (`translation_windows`), through the
   same sampling (an exact copy when the image already has the view's size).
2. RandomHorizontalFlip (p = 1/2): the crop's columns are sampled right to left. With
   `shared_flip` (AMDIM: one flip of the image before both views are made), a flip drawn
   from a key both views share (`shared_key`); a crop of the flipped image is the mirrored
   window of the image, reversed, so it folds into the crop the same way
   (`ViewPairAugmenter._flips`).
3. RandomApply([ColorJitter(b, c, s, h)], p). Factors b, c, s ~ U[1 - x, 1 + x] (x the
   strength), hue shift ~ U[-h, h] of a turn, and the four operations in a random order
   per image (torchvision's `randperm(4)`; here the argsort of four uniforms). The
   operations are torchvision's on float images in [0, 1], gray(x) = 0.2989 R + 0.587 G +
   0.114 B:
     brightness  clamp(b · x)                             (multiplicative)
     contrast    clamp(c · x + (1 - c) · mean(gray(x)))   (one mean per image)
     saturation  clamp(s · x + (1 - s) · gray(x))
     hue         to HSV, hue + shift modulo 1, back to RGB (in closed form, `shift_hue`)
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
stages work on three colour planes (`Planes`); the crop leaves them transposed and the
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

Modules, by family: `recipes` (`AugmentationConfig` and the recipes), `draws` (stateless
random draws), `geometry` (crop, translation, flip, resize), `colour` (the stages after the
crop, on colour planes), `augmenter` (`ViewPairAugmenter`, the stages in order).
"""

from nac_tf.data.views.augmenter import CropPair, ViewPairAugmenter
from nac_tf.data.views.colour import GRAY_WEIGHTS
from nac_tf.data.views.draws import fold_in, seed_key
from nac_tf.data.views.geometry import CROP_ATTEMPTS
from nac_tf.data.views.recipes import (AugmentationConfig, amdim_recipe, cifar_recipe,
                                       imagenet_recipe)

__all__ = ["CROP_ATTEMPTS", "GRAY_WEIGHTS", "AugmentationConfig", "CropPair",
           "ViewPairAugmenter", "amdim_recipe", "cifar_recipe", "fold_in", "imagenet_recipe",
           "seed_key"]

"""`ViewPairAugmenter`: two augmented views of every image, the stages in order, whole
(`augment`) or cut after the crop (`crop_stage` / `colour_stage`, `CropPair`)."""
from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from nac_tf.data.views.colour import (Planes, clamp, gaussian_blur, gaussian_kernels,
                                      image_mean, shift_hue, update_rows)
from nac_tf.data.views.draws import Draws, fold_in, seed_key
from nac_tf.data.views.geometry import (crop_windows, reflect_pad, resized_crop,
                                        translation_windows)
from nac_tf.data.views.recipes import AugmentationConfig

# Positions of the jitter's operations in a draw of the order (torchvision's fn_idx).
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


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
            windows = translation_windows(draws, shape[1], shape[2], c.max_translation,
                                          c.translation_prob)
            images = reflect_pad(images, c.max_translation)
            width = shape[2] + 2 * c.max_translation
        else:
            windows = crop_windows(draws, shape[1], shape[2], c.crop_area, c.aspect_ratio)
            width = shape[2]
        windows, flip = self._flips(draws, shared, windows, width)
        return resized_crop(images, windows, c.image_size, flip)

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
            windows = translation_windows(draws, heights, widths, pad, c.translation_prob)
        else:
            windows = crop_windows(draws, whole_batch(heights), whole_batch(widths),
                                   c.crop_area, c.aspect_ratio)
        windows, flip = self._flips(draws, shared, windows, widths + 2 * pad)

        def crop(i):
            # Cut the window out first and resample it from its own corner: the same pixels
            # and weights as sampling inside the whole image, at the cost of the crop only.
            top, left, height, width = (w[i] for w in windows)
            image = tf.reshape(images[i].flat_values, [heights[i], widths[i], 3])
            if pad:
                image = reflect_pad(image, pad)
            window = image[top:top + height, left:left + width][None]
            zero = tf.zeros([1], tf.int32)
            return resized_crop(window, (zero, zero, height[None], width[None]), c.image_size,
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
            parameters["blur_kernels"] = draws.rows(gaussian_kernels(
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
                        target += (to_mean * image_mean(gray))[:, None, None]
                f = f[:, None, None]
                planes = Planes(clamp(plane * f if target is None else plane * f + target)
                                for plane in planes)
            if hue:
                selected = (operation == _HUE) & parameters["jittered"]
                planes = update_rows(selected, planes, lambda chosen, pick: shift_hue(
                    chosen, pick(parameters["hue_shift"])), dense)
        return planes

    def _colour(self, planes, parameters, dense=False):
        """The stages after the crop (colour jitter, RandomGrayscale: gray(x) in the three
        channels, RandomApply([GaussianBlur]): σ ~ U[blur_sigma] per image, reflect padding)
        with `parameters` from `_colour_parameters`; the final views. `dense`: see
        `update_rows`."""
        c = self.config
        if self._jitters:
            planes = self._color_jitter(planes, parameters, dense)
        if c.grayscale_prob > 0:
            def gray(chosen, pick):
                gray = chosen.gray()
                return Planes((gray, gray, gray))

            planes = update_rows(parameters["grayscale"], planes, gray, dense)
        views = planes.images()
        if c.blur_prob > 0:
            views = update_rows(parameters["blur"], views, lambda chosen, pick: gaussian_blur(
                chosen, pick(parameters["blur_kernels"])), dense)
        # Float input a little outside [0, 255], and the blur's rounding, stay in range.
        return clamp(views)

    @staticmethod
    def _draws(images, seed, rows):
        size = images.nrows(out_type=tf.int32) if isinstance(images, tf.RaggedTensor) else \
            tf.shape(images)[0]
        offset, total = (0, size) if rows is None else rows
        return Draws(seed, offset, size, total)

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
        planes = Planes(tf.unstack(tf.transpose(crops, [0, 2, 1, 3]), axis=-1))
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

"""Data package: image sources, the view-pair augmenter and the tf.data pipelines.

Everything runs on tiny images made here, scikit-learn's bundled digits, or TFDS mock data;
the shared MNIST archive is used when present. Nothing is downloaded.
"""
import colorsys
import dataclasses
import inspect
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.data import (catalog, image_folder, pipeline, sources, splits, tfds_sources,
                         views)
from nac_tf.data.views import AugmentationConfig, ViewPairAugmenter
from nac_tf.data.views.draws import Draws
from nac_tf.data.views.geometry import crop_windows, resized_crop
from nac_tf.specs import resolve
from nac_tf.specs.datasets import DATASET_SPECS, dataset_spec

SHARED_DATA = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared", "data")
MNIST_NPZ = os.path.join(SHARED_DATA, "mnist.npz")

# No crop, flip, colour change: the augmenter must then return the input scaled to [0, 1].
IDENTITY = dict(crop_area=(1.0, 1.0), aspect_ratio=(1.0, 1.0), flip=False, jitter_prob=0.0,
                grayscale_prob=0.0, blur_prob=0.0)


def _random_images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ============================================================================ sources
@pytest.fixture(scope="module")
def digits():
    return sources.load_digits_source(image_size=16, seed=0)


def test_digits_source_shapes_dtypes_and_scaling(digits):
    assert digits.name == "digits" and digits.has_arrays
    assert digits.num_train + digits.num_test == 1797
    assert digits.num_classes == 10 and digits.image_shape == (16, 16, 3)
    assert digits.train_images.shape == (digits.num_train, 16, 16, 3)
    assert digits.test_images.shape == (digits.num_test, 16, 16, 3)
    assert digits.train_images.dtype == np.uint8 and digits.train_labels.dtype == np.int64
    # 0..16 scaled to 0..255, grayscale replicated to three equal channels.
    assert digits.train_images.max() > 240
    np.testing.assert_array_equal(digits.train_images[..., 0], digits.train_images[..., 2])
    image, label = next(iter(digits.train_dataset()))
    assert image.dtype == tf.uint8 and image.shape == (16, 16, 3) and label.dtype == tf.int64


def test_digits_split_is_stratified_seeded_and_deterministic(digits):
    again = sources.load_digits_source(image_size=16, seed=0)
    np.testing.assert_array_equal(digits.test_images, again.test_images)
    np.testing.assert_array_equal(digits.train_labels, again.train_labels)
    other = sources.load_digits_source(image_size=16, seed=1)
    assert not np.array_equal(digits.test_images, other.test_images)
    # A third of the images is held out, shared over the classes by their frequency.
    train_counts = np.bincount(digits.train_labels, minlength=10)
    test_counts = np.bincount(digits.test_labels, minlength=10)
    assert test_counts.sum() == round((train_counts.sum() + test_counts.sum()) / 3)
    assert np.all(np.abs(test_counts - (train_counts + test_counts) / 3) < 1)


def test_stratified_split_partitions_every_class():
    labels = np.repeat(np.arange(4), [10, 5, 7, 3])
    train, test = splits.stratified_split(labels, 0.2, seed=5)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(25))
    np.testing.assert_array_equal(np.bincount(labels[test], minlength=4), [2, 1, 1, 1])
    again, _ = splits.stratified_split(labels, 0.2, seed=5)
    np.testing.assert_array_equal(train, again)


def test_digits_rejects_bad_image_size():
    with pytest.raises(ValueError, match="image_size"):
        sources.load_digits_source(image_size=0)


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _small_arrays(gray=False):
    rng = np.random.default_rng(0)
    shape = (6, 5, 5) if gray else (6, 5, 5, 3)
    return dict(x_train=rng.integers(0, 256, shape, dtype=np.uint8),
                y_train=np.array([0, 1, 2, 0, 1, 2], np.int32),
                x_test=rng.integers(0, 256, (4,) + shape[1:], dtype=np.uint8),
                y_test=np.array([2, 1, 0, 0], np.int32))


def test_npz_source_reads_grayscale_archive(tmp_path):
    arrays = _small_arrays(gray=True)
    source = sources.load_npz_source(_write_npz(tmp_path / "tiny.npz", **arrays,
                                                class_names=np.array(["a", "b", "c"])))
    assert source.name == "tiny" and source.num_classes == 3
    assert source.class_names == ("a", "b", "c")
    assert source.train_images.shape == (6, 5, 5, 3) and source.test_images.shape == (4, 5, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(source.train_images[..., channel], arrays["x_train"])
    assert source.train_labels.dtype == np.int64
    np.testing.assert_array_equal(source.test_labels, arrays["y_test"])


def test_npz_source_errors_name_file_key_and_expectation(tmp_path):
    arrays = _small_arrays()
    missing_key = dict(arrays)
    del missing_key["y_test"]
    path = _write_npz(tmp_path / "missing.npz", **missing_key)
    with pytest.raises(ValueError, match=r"missing\.npz.*y_test"):
        sources.load_npz_source(path)

    wrong_shape = dict(arrays, x_train=arrays["x_train"][:, :, :, :2])
    path = _write_npz(tmp_path / "shape.npz", **wrong_shape)
    with pytest.raises(ValueError, match=r"shape\.npz.*x_train.*expected"):
        sources.load_npz_source(path)

    wrong_dtype = dict(arrays, x_test=arrays["x_test"].astype(np.float32))
    path = _write_npz(tmp_path / "dtype.npz", **wrong_dtype)
    with pytest.raises(ValueError, match=r"dtype\.npz.*x_test.*uint8"):
        sources.load_npz_source(path)

    wrong_labels = dict(arrays, y_train=arrays["y_train"][:3])
    path = _write_npz(tmp_path / "labels.npz", **wrong_labels)
    with pytest.raises(ValueError, match=r"labels\.npz.*y_train"):
        sources.load_npz_source(path)

    absent = str(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        sources.load_npz_source(absent)


@pytest.mark.skipif(not os.path.exists(MNIST_NPZ), reason="shared/data/mnist.npz not present")
def test_npz_source_on_real_mnist():
    source = sources.load_npz_source(MNIST_NPZ)
    assert (source.num_train, source.num_test, source.num_classes) == (60000, 10000, 10)
    assert source.image_shape == (28, 28, 3)
    np.testing.assert_array_equal(source.test_images[..., 1], source.test_images[..., 2])
    # Class counts from the archive's README.
    assert np.bincount(source.train_labels)[0] == 5923
    assert np.bincount(source.test_labels)[1] == 1135
    mean, std = catalog.dataset_statistics("npz", source)
    np.testing.assert_allclose(mean, [33.318 / 255] * 3, atol=1e-3)
    np.testing.assert_allclose(std, [78.567 / 255] * 3, atol=1e-3)


def _write_image_folder(root, corrupt=True):
    """Two classes of 5 PNGs of assorted sizes; optionally one corrupt file and a note."""
    rng = np.random.default_rng(0)
    for class_name, value in (("cats", 30), ("dogs", 220)):
        os.makedirs(root / class_name)
        for i in range(5):
            image = np.full((12 + i, 9 + 2 * i, 3), value, np.uint8)
            image[0, 0] = rng.integers(0, 256, 3)
            (root / class_name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    if corrupt:
        (root / "dogs" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "cats" / "notes.txt").write_text("ignored: not an image")
    return str(root)


def test_image_folder_source_skips_and_counts_corrupt_files(tmp_path):
    root = _write_image_folder(tmp_path / "folder")
    source = image_folder.load_image_folder_source(root, image_size=8, test_fraction=0.4, seed=0)
    assert source.num_skipped == 1
    assert source.class_names == ("cats", "dogs") and source.num_classes == 2
    assert source.num_train + source.num_test == 10 and source.image_shape == (8, 8, 3)
    np.testing.assert_array_equal(np.bincount(source.test_labels), [2, 2])
    # Class ids follow the sorted folder names: cats are dark, dogs bright.
    means = source.train_images.reshape(source.num_train, -1).mean(axis=1)
    assert np.all((means > 128) == (source.train_labels == 1))
    again = image_folder.load_image_folder_source(root, image_size=8, test_fraction=0.4, seed=0)
    np.testing.assert_array_equal(source.test_images, again.test_images)


def test_image_folder_source_raise_mode_names_the_file(tmp_path):
    root = _write_image_folder(tmp_path / "folder")
    with pytest.raises(ValueError, match="broken.jpg"):
        image_folder.load_image_folder_source(root, image_size=8, on_corrupt="raise")
    with pytest.raises(ValueError, match="on_corrupt"):
        image_folder.load_image_folder_source(root, image_size=8, on_corrupt="ignore")


def test_tfds_sources_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data makes download_and_prepare a no-op but not is_prepared(): with (empty) source
    # files in data_dir the loaders go on to prepare, without trying the network first.
    for name in (dataset_spec("cifar10").tfds_source_files
                 + dataset_spec("imagenet2012").tfds_source_files):
        (tmp_path / name).write_bytes(b"")
    with tfds.testing.mock_data(num_examples=6):
        cifar = catalog.load_source("cifar10", data_dir=str(tmp_path))
        imagenet = tfds_sources.load_tfds_source("imagenet2012", data_dir=str(tmp_path),
                                            manual_dir=str(tmp_path), image_size=24)
        image, label = next(iter(imagenet.train_dataset()))
        test_image, _ = next(iter(imagenet.test_dataset()))
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
        sharded_image, _ = next(iter(imagenet.train_dataset(context)))
        augmenter = ViewPairAugmenter(views.imagenet_recipe(image_size=24), seed=0)
        view1, _ = next(iter(pipeline.make_pretrain_dataset(imagenet, augmenter, 4)))
    assert cifar.has_arrays and cifar.num_classes == 10 and cifar.image_shape == (32, 32, 3)
    assert cifar.train_images.shape == (6, 32, 32, 3) and cifar.train_images.dtype == np.uint8
    assert cifar.test_labels.dtype == np.int64 and cifar.test_labels.max() < 10
    assert not imagenet.has_arrays and not hasattr(imagenet, "train_images")
    # What the specs say of them (the evaluation commands refuse streamed datasets).
    assert dataset_spec("imagenet2012").streamed and not dataset_spec("cifar10").streamed
    assert imagenet.num_classes == 1000 and imagenet.num_train == 6
    assert imagenet.image_shape == (24, 24, 3) and not imagenet.uniform_size
    # Training images keep their files' sizes (the views crop them); test images are resized.
    assert image.shape.rank == 3 and image.shape[-1] == 3 and image.dtype == tf.uint8
    assert label.dtype == tf.int64 and sharded_image.shape[-1] == 3
    assert test_image.shape == (24, 24, 3)
    assert view1.shape == (4, 24, 24, 3) and view1.dtype == tf.float32


def test_load_source_dispatch_and_flag_errors(tmp_path):
    assert catalog.load_source("digits", image_size=8).image_shape == (8, 8, 3)
    with pytest.raises(ValueError, match=r"dataset=.*digits, cifar10, imagenet2012"):
        catalog.load_source("mnist")
    for dataset in ("npz", "image_folder", "imagenet2012"):
        with pytest.raises(ValueError, match=f"dataset='{dataset}' needs a data_dir"):
            catalog.load_source(dataset)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        catalog.load_source("npz", data_dir=str(tmp_path / "nothing.npz"))
    path = _write_npz(tmp_path / "tiny.npz", **_small_arrays())
    assert catalog.load_source("npz", data_dir=path).num_train == 6


@pytest.mark.parametrize("spec", DATASET_SPECS, ids=lambda spec: spec.name)
def test_dataset_specs_name_loaders_that_take_their_arguments(spec):
    # load_source calls loader(data_dir, **the other loader_arguments), data_dir only when
    # the spec lists it; bind raises TypeError when the loader cannot take them.
    keywords = {name: None for name in spec.loader_arguments if name != "data_dir"}
    positional = (None,) if "data_dir" in spec.loader_arguments else ()
    inspect.signature(resolve(spec.loader)).bind(*positional, **keywords)


def test_dataset_statistics(digits):
    assert catalog.dataset_statistics("cifar10") == ((0.4914, 0.4822, 0.4465),
                                                     (0.2470, 0.2435, 0.2616))
    assert catalog.dataset_statistics("imagenet2012")[1] == (0.229, 0.224, 0.225)
    pixels = digits.train_images.astype(np.float64) / 255.0
    mean, std = catalog.dataset_statistics("digits", digits, chunk_size=100)
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)
    assert catalog.dataset_statistics("image_folder") == (catalog.FALLBACK_MEAN,
                                                         catalog.FALLBACK_STD)


# ============================================================================ views
# The view tests compare the augmenter with NumPy references written from torchvision's
# definitions (torchvision.transforms.functional on float tensors, RandomResizedCrop.get_params,
# torch's bilinear `interpolate(align_corners=False)`), computed in float64 from the same
# random parameters, which the tests read from the augmenter's stateless streams.
GRAY = np.array([0.2989, 0.587, 0.114])
# float32 (augmenter) against float64 (reference): every operation costs a few float32
# roundings of values in [0, 1] (~1e-7 each); the jitter chains four operations, the hue's
# closed form and the means add a few more (the largest error seen is ~1e-6). 2e-5 leaves a
# wide margin, while any semantic difference (an additive brightness, a per-channel contrast
# mean, an HSV saturation scale, another order) shows up as errors of 1e-2 and more.
TOLERANCE = 2e-5


def _np_blend(image1, image2, ratio):
    """torchvision's _blend for float images: clamp(ratio * img1 + (1 - ratio) * img2)."""
    return np.clip(ratio * image1 + (1.0 - ratio) * image2, 0.0, 1.0)


def _np_gray(image):
    """torchvision's rgb_to_grayscale, one channel kept: [..., H, W, 1]."""
    return (image @ GRAY)[..., None]


def _np_brightness(image, factor):
    return _np_blend(image, np.zeros_like(image), factor)


def _np_contrast(image, factor):
    return _np_blend(image, _np_gray(image).mean(), factor)


def _np_saturation(image, factor):
    return _np_blend(image, _np_gray(image), factor)


def _np_rgb_to_hsv(image):
    """torchvision's _rgb2hsv, channels last."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    maxc, minc = image.max(axis=-1), image.min(axis=-1)
    equal = maxc == minc
    chroma = maxc - minc
    saturation = chroma / np.where(equal, 1.0, maxc)
    divisor = np.where(equal, 1.0, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    hue = np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return np.stack([hue, saturation, maxc], axis=-1)


def _np_hsv_to_rgb(hsv):
    """torchvision's _hsv2rgb, channels last."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(int) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    table = np.stack([np.stack(c, axis=-1) for c in
                      ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], axis=-1)
    return np.take_along_axis(table, i[..., None, None], axis=-2)[..., 0, :]


def _np_hue(image, shift):
    """torchvision's adjust_hue: hue channel + shift, modulo 1."""
    hsv = _np_rgb_to_hsv(image)
    hsv[..., 0] = np.mod(hsv[..., 0] + shift, 1.0)
    return _np_hsv_to_rgb(hsv)


_NP_JITTER = (_np_brightness, _np_contrast, _np_saturation, _np_hue)


def _np_get_params(height, width, scales, log_ratios, u_top, u_left, ratio_range):
    """torchvision's RandomResizedCrop.get_params with its random numbers given:
    (top, left, h, w, attempt that fitted or -1 for the fallback)."""
    area = height * width
    for attempt, (scale, log_ratio) in enumerate(zip(scales, log_ratios)):
        target_area = area * float(scale)
        aspect_ratio = math.exp(float(log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            # torch.randint(0, height - h + 1) from a uniform number in [0, 1).
            top = int(float(u_top) * (height - h + 1))
            left = int(float(u_left) * (width - w + 1))
            return top, left, h, w, attempt
    in_ratio = width / height
    if in_ratio < min(ratio_range):
        w, h = width, int(round(width / min(ratio_range)))
    elif in_ratio > max(ratio_range):
        h, w = height, int(round(height * max(ratio_range)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, -1


def _np_resize(image, size):
    """torch's interpolate(mode="bilinear", align_corners=False, antialias=False) of
    [h, w, C] to size x size, in float64."""
    def source(length):
        # area_pixel_compute_source_index: max(scale * (dst + 0.5) - 0.5, 0).
        position = np.maximum((np.arange(size) + 0.5) * (length / size) - 0.5, 0.0)
        index0 = position.astype(int)
        index1 = np.where(index0 < length - 1, index0 + 1, index0)
        return index0, index1, position - index0

    r0, r1, ry = source(image.shape[0])
    c0, c1, cx = source(image.shape[1])
    rows = image[r0] * (1 - ry)[:, None, None] + image[r1] * ry[:, None, None]
    return rows[:, c0] * (1 - cx)[None, :, None] + rows[:, c1] * cx[None, :, None]


def _np_gaussian_blur(image, sigma, kernel_size):
    """Separable sampled Gaussian, reflect padding (np.pad's "reflect" = TF's REFLECT)."""
    pad = kernel_size // 2
    x = np.arange(-pad, pad + 1)
    kernel = np.exp(-x ** 2 / (2.0 * sigma ** 2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    rows = sum(kernel[k] * padded[k:k + image.shape[0]] for k in range(kernel_size))
    return sum(kernel[k] * rows[:, k:k + image.shape[1]] for k in range(kernel_size))


def _view_key(seed, batch_index, view):
    """The key of view `view` (1 or 2) of batch `batch_index`, as the augmenter folds it."""
    return views.fold_in(views.seed_key(seed), batch_index, view)


def _draws(key, n):
    return Draws(key, 0, n, n)


@pytest.mark.parametrize("field, value", [
    ("image_size", 0), ("crop_area", (0.5, 0.2)), ("crop_area", (0.1, 1.5)),
    ("aspect_ratio", (0.0, 1.0)), ("jitter_strength", (0.4, 0.4, 0.4)),
    ("jitter_strength", (0.4, 0.4, 0.4, 0.7)), ("jitter_prob", 1.2),
    ("grayscale_prob", -0.1), ("blur_sigma", (2.0, 0.1)), ("shared_flip", 1),
    ("max_translation", -1), ("max_translation", 2.5), ("translation_prob", 1.5),
])
def test_augmentation_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentationConfig(**{"image_size": 32, field: value})


def test_recipes_match_design():
    cifar = views.cifar_recipe()
    assert (cifar.image_size, cifar.crop_area, cifar.flip) == (32, (0.08, 1.0), True)
    assert cifar.jitter_strength == (0.4, 0.4, 0.4, 0.1) and cifar.jitter_prob == 0.8
    assert (cifar.grayscale_prob, cifar.blur_prob) == (0.2, 0.0)
    imagenet = views.imagenet_recipe()
    assert (imagenet.image_size, imagenet.crop_area) == (224, (0.2, 1.0))
    assert (imagenet.blur_prob, imagenet.blur_sigma, imagenet.blur_kernel_size) == (
        0.5, (0.1, 2.0), 23)
    assert imagenet.jitter_strength == cifar.jitter_strength and imagenet.grayscale_prob == 0.2
    assert AugmentationConfig(image_size=32).blur_kernel_size == 3
    # Flag values arrive as lists; the frozen config stores tuples.
    assert AugmentationConfig(image_size=8, jitter_strength=[0, 0, 0, 0]).jitter_strength == (
        0.0, 0.0, 0.0, 0.0)


def test_views_shapes_range_and_independence():
    augmenter = ViewPairAugmenter(views.imagenet_recipe(image_size=24), seed=0)
    images = _random_images(16, 40)
    view1, view2 = augmenter(images)
    for view in (view1, view2):
        assert view.shape == (16, 24, 24, 3) and view.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) <= 1.0
    difference = tf.reduce_mean(tf.abs(view1 - view2), axis=[1, 2, 3]).numpy()
    assert np.all(difference > 1e-3)
    # Float input in [0, 255] gives the same views as uint8.
    key = _view_key(0, 3, 1)
    np.testing.assert_allclose(augmenter.augment(images.astype(np.float32), seed=key),
                               augmenter.augment(images, seed=key), atol=1e-6)
    with pytest.raises(ValueError, match="images"):
        augmenter.augment(images[0])


@pytest.mark.parametrize("height, width, crop_area, aspect_ratio", [
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),  # SimCLR's recipe
    (20, 50, (0.08, 1.0), (3 / 4, 4 / 3)),  # non-square: the ratio is in pixels
    (16, 16, (0.6, 1.0), (1.2, 3.0)),  # often no fit: later attempts and the fallback
    (16, 16, (0.9, 1.0), (2.5, 3.0)),  # never fits: fallback, ratio clamped to 2.5
    (30, 12, (0.9, 1.0), (0.5, 0.6)),  # never fits, input narrower than the range
])
def test_crop_windows_follow_torchvision_get_params(height, width, crop_area, aspect_ratio):
    n = 2000
    draws = _draws(_view_key(0, 0, 1), n)
    windows = [v.numpy() for v in crop_windows(draws, height, width, crop_area, aspect_ratio)]
    scales = draws.uniform("crop_area", *crop_area, shape=[views.CROP_ATTEMPTS]).numpy()
    log_ratios = draws.uniform("aspect_ratio", math.log(aspect_ratio[0]),
                               math.log(aspect_ratio[1]), shape=[views.CROP_ATTEMPTS]).numpy()
    u_top, u_left = draws.uniform("crop_y").numpy(), draws.uniform("crop_x").numpy()
    reference = np.array([_np_get_params(height, width, scales[k], log_ratios[k], u_top[k],
                                         u_left[k], aspect_ratio) for k in range(n)])
    np.testing.assert_array_equal(np.stack(windows, axis=1), reference[:, :4])
    top, left, h, w = windows
    attempt = reference[:, 4]
    assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
    assert np.all((h > 0) & (w > 0))
    found = attempt >= 0
    # A drawn box has sides within 1/2 of real sides whose area and ratio are in range.
    hf, wf = h[found], w[found]
    assert np.all((hf + 0.5) * (wf + 0.5) >= crop_area[0] * height * width)
    assert np.all((hf - 0.5) * (wf - 0.5) <= crop_area[1] * height * width)
    assert np.all((wf + 0.5) / (hf - 0.5) >= aspect_ratio[0])
    assert np.all((wf - 0.5) / (hf + 0.5) <= aspect_ratio[1])
    area, ratio = hf * wf / (height * width), wf / hf
    if crop_area == (0.08, 1.0) and height == width:
        assert found.all() and (attempt > 0).any()  # some first candidates do not fit
        assert 0.49 < area.mean() < 0.59  # uniform area in [0.08, 1] has mean 0.54
        assert abs(np.log(ratio).mean()) < 0.03  # log-uniform ratio, symmetric range
        assert len(np.unique(top * 1000 + left)) > 200  # every image draws its own box
    if crop_area == (0.6, 1.0):
        assert (attempt >= 3).any() and (attempt == -1).any() and (attempt == 0).any()
    if crop_area[0] >= 0.9:
        assert not found.any()


def test_crop_windows_use_every_position_and_differ_between_views():
    n = 4000
    config = views.cifar_recipe()
    first, second = (
        [v.numpy() for v in crop_windows(_draws(_view_key(0, 0, view), n), 32, 32,
                                         config.crop_area, config.aspect_ratio)]
        for view in (1, 2))
    # A crop of side h has 32 - h + 1 corners, each equally likely: full-height crops
    # start at 0 only, and the smallest crops use the whole range.
    top, _, h, _ = first
    assert top[h == 32].max() == 0 and top.max() >= 32 - h.min() - 1
    assert abs(np.corrcoef(first[2] * first[3], second[2] * second[3])[0, 1]) < 0.1


def test_resized_crop_is_torch_bilinear_with_crop_border_clamping():
    rng = np.random.default_rng(0)
    n, height, width, size = 24, 13, 11, 8
    images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    # Upscaled, downscaled and mixed crops, at the image border and inside it.
    h = rng.integers(1, height + 1, n)
    w = rng.integers(1, width + 1, n)
    top = (rng.random(n) * (height - h + 1)).astype(int)
    left = (rng.random(n) * (width - w + 1)).astype(int)
    flip = rng.random(n) < 0.5
    windows = tuple(tf.constant(v, tf.int32) for v in (top, left, h, w))
    out = resized_crop(tf.constant(images), windows, size, tf.constant(flip)).images().numpy()
    for k in range(n):
        crop = images[k, top[k]:top[k] + h[k], left[k]:left[k] + w[k]].astype(np.float64)
        expected = _np_resize(crop, size) / 255.0
        if flip[k]:
            expected = expected[:, ::-1]
        np.testing.assert_allclose(out[k], expected, atol=TOLERANCE, err_msg=f"image {k}")


def test_crop_stage_of_the_augmenter_matches_the_reference():
    config = AugmentationConfig(image_size=10, **dict(IDENTITY, crop_area=(0.08, 1.0),
                                                      aspect_ratio=(3 / 4, 4 / 3), flip=True))
    images = _random_images(32, 14)
    key = _view_key(5, 2, 1)
    out = ViewPairAugmenter(config, seed=5).augment(images, seed=key).numpy()
    draws = _draws(key, 32)
    scales = draws.uniform("crop_area", 0.08, 1.0, shape=[10]).numpy()
    log_ratios = draws.uniform("aspect_ratio", math.log(3 / 4), math.log(4 / 3),
                               shape=[10]).numpy()
    u_top, u_left = draws.uniform("crop_y").numpy(), draws.uniform("crop_x").numpy()
    flips = draws.uniform("flip").numpy() < 0.5
    assert 0 < flips.sum() < 32
    for k in range(32):
        top, left, h, w, _ = _np_get_params(14, 14, scales[k], log_ratios[k], u_top[k],
                                            u_left[k], (3 / 4, 4 / 3))
        expected = _np_resize(images[k, top:top + h, left:left + w].astype(float), 10) / 255
        if flips[k]:
            expected = expected[:, ::-1]
        np.testing.assert_allclose(out[k], expected, atol=TOLERANCE, err_msg=f"image {k}")


def test_identity_configuration_returns_the_input():
    augmenter = ViewPairAugmenter(AugmentationConfig(image_size=12, **IDENTITY), seed=0)
    images = _random_images(4, 12)
    view1, view2 = augmenter(images)
    np.testing.assert_allclose(view1.numpy(), images / 255.0, atol=1e-6)
    np.testing.assert_allclose(view2.numpy(), images / 255.0, atol=1e-6)


def test_flip_happens_about_half_the_time():
    augmenter = ViewPairAugmenter(AugmentationConfig(image_size=6, **dict(IDENTITY, flip=True)),
                                  seed=1)
    images = _random_images(512, 6)
    outputs = np.concatenate([v.numpy() for v in augmenter(images)]) * 255.0
    originals = np.concatenate([images, images]).astype(np.float32)
    same = np.all(np.abs(outputs - originals) < 1e-3, axis=(1, 2, 3))
    mirrored = np.all(np.abs(outputs - originals[:, :, ::-1]) < 1e-3, axis=(1, 2, 3))
    assert np.all(same ^ mirrored)  # every view is either untouched or mirrored
    assert abs(mirrored.mean() - 0.5) < 0.07  # 1 024 draws: 4.5 standard deviations


def test_grayscale_uses_torchvision_weights_about_a_fifth_of_the_time():
    config = AugmentationConfig(image_size=4, **dict(IDENTITY, grayscale_prob=0.2))
    images = _random_images(512, 4)
    key = _view_key(2, 0, 1)
    out = ViewPairAugmenter(config, seed=2).augment(images, seed=key).numpy()
    selected = _draws(key, 512).uniform("apply_grayscale").numpy() < 0.2
    x = images / 255.0
    expected = np.where(selected[:, None, None, None], np.repeat(_np_gray(x), 3, axis=-1), x)
    np.testing.assert_allclose(out, expected, atol=TOLERANCE)
    assert abs(selected.mean() - 0.2) < 0.07  # 512 draws: 4 standard deviations


def _jitter_only(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, probability=1.0,
                 size=4):
    config = AugmentationConfig(image_size=size, **dict(
        IDENTITY, jitter_prob=probability,
        jitter_strength=(brightness, contrast, saturation, hue)))
    return ViewPairAugmenter(config, seed=3)


@pytest.mark.parametrize("operation, stream, strength", [
    (0, "brightness", 0.4), (1, "contrast", 0.4), (2, "saturation", 0.4), (3, "hue", 0.1)])
def test_each_jitter_operation_is_torchvision_s(operation, stream, strength):
    strengths = [0.0] * 4
    strengths[operation] = strength
    augmenter = _jitter_only(*strengths)
    images = _random_images(300, 4, seed=operation)
    key = _view_key(3, 0, 1)
    out = augmenter.augment(images, seed=key).numpy()
    if operation == 3:
        factors = _draws(key, 300).uniform("hue", -strength, strength).numpy()
    else:
        factors = _draws(key, 300).uniform(stream, 1 - strength, 1 + strength).numpy()
    # The whole range is drawn, uniformly.
    low, high = (-strength, strength) if operation == 3 else (1 - strength, 1 + strength)
    assert factors.min() >= low and factors.max() <= high
    assert factors.min() < low + 0.05 * strength and factors.max() > high - 0.05 * strength
    x = images / 255.0
    expected = np.stack([_NP_JITTER[operation](x[k], float(factors[k])) for k in range(300)])
    np.testing.assert_allclose(out, expected, atol=TOLERANCE)


def test_brightness_multiplies_and_clamps():
    images = np.zeros((200, 2, 2, 3), np.uint8)
    images[:, 0, 0] = 50
    images[:, 1, 1] = 250
    key = _view_key(3, 0, 1)
    out = _jitter_only(brightness=0.4, size=2).augment(images, seed=key).numpy()
    factors = _draws(key, 200).uniform("brightness", 0.6, 1.4).numpy()
    np.testing.assert_allclose(out[:, 0, 0, 0], 50 / 255 * factors, rtol=1e-6)
    np.testing.assert_allclose(out[:, 1, 1, 0], np.minimum(250 / 255 * factors, 1.0), rtol=1e-6)
    np.testing.assert_array_equal(out[:, 0, 1], 0.0)  # black stays black (not additive)
    assert (out[:, 1, 1, 0] == 1.0).any()


def test_contrast_blends_with_the_mean_gray_and_saturation_with_the_gray_image():
    # One saturated red image: per-channel means (another contrast) or an HSV saturation
    # scale (another saturation) give visibly different numbers.
    images = np.zeros((100, 3, 3, 3), np.uint8)
    images[..., 0] = 200
    images[:, 1, 1] = (20, 120, 240)
    x = images / 255.0
    key = _view_key(3, 0, 1)
    draws = _draws(key, 100)
    contrast = _jitter_only(contrast=0.4, size=3).augment(images, seed=key).numpy()
    factors = draws.uniform("contrast", 0.6, 1.4).numpy().astype(np.float64)
    mean = (x @ GRAY).mean(axis=(1, 2))[:, None, None, None]
    np.testing.assert_allclose(
        contrast, np.clip(factors[:, None, None, None] * x
                          + (1 - factors[:, None, None, None]) * mean, 0, 1), atol=TOLERANCE)
    saturation = _jitter_only(saturation=0.4, size=3).augment(images, seed=key).numpy()
    factors = draws.uniform("saturation", 0.6, 1.4).numpy().astype(np.float64)
    gray = (x @ GRAY)[..., None]
    np.testing.assert_allclose(
        saturation, np.clip(factors[:, None, None, None] * x
                            + (1 - factors[:, None, None, None]) * gray, 0, 1), atol=TOLERANCE)


def test_hue_reference_agrees_with_colorsys():
    pixels = np.random.default_rng(0).random((500, 3))
    pixels[:50, 1] = pixels[:50, 0]  # ties between channels
    pixels[50:60] = pixels[50:60, :1]  # grays
    for shift in (-0.1, 0.03, 0.5):
        expected = []
        for r, g, b in pixels:
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            expected.append(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v))
        np.testing.assert_allclose(_np_hue(pixels, shift), expected, atol=1e-12)


def test_jitter_order_is_random_per_image_and_followed():
    augmenter = _jitter_only(0.4, 0.4, 0.4, 0.1, probability=0.8)
    n = 96
    images = _random_images(n, 4, seed=7)
    key = _view_key(3, 0, 1)
    out = augmenter.augment(images, seed=key).numpy()
    draws = _draws(key, n)
    applied = draws.uniform("apply_jitter").numpy() < 0.8
    factors = np.stack([draws.uniform(name, 0.6, 1.4).numpy()
                        for name in ("brightness", "contrast", "saturation")]
                       + [draws.uniform("hue", -0.1, 0.1).numpy()], axis=1).astype(np.float64)
    orders = np.argsort(draws.uniform("jitter_order", shape=[4]).numpy(), axis=1)
    assert len({tuple(o) for o in orders[applied]}) >= 15  # most of the 24 orders occur

    def composed(image, factors, order):
        for operation in order:
            image = _NP_JITTER[operation](image, factors[operation])
        return image

    x = images / 255.0
    differs_from_fixed = 0
    for k in range(n):
        if not applied[k]:
            np.testing.assert_allclose(out[k], x[k], atol=1e-7)
            continue
        expected = composed(x[k], factors[k], orders[k])
        np.testing.assert_allclose(out[k], expected, atol=TOLERANCE,
                                   err_msg=f"image {k}, order {orders[k]}")
        fixed = composed(x[k], factors[k], (0, 1, 2, 3))
        differs_from_fixed += np.abs(fixed - expected).max() > 1e-3
    # The order changes the result: a fixed order would miss most images.
    assert differs_from_fixed > 0.5 * applied.sum()


def test_blur_matches_the_reference_and_keeps_the_border():
    config = AugmentationConfig(image_size=20, **dict(IDENTITY, blur_prob=0.5,
                                                      blur_sigma=(0.5, 2.0)))
    augmenter = ViewPairAugmenter(config, seed=0)
    flat = ViewPairAugmenter(dataclasses.replace(config, blur_prob=1.0), seed=0).augment(
        np.full((2, 20, 20, 3), 200, np.uint8)).numpy()
    np.testing.assert_allclose(flat, 200 / 255, atol=1e-5)  # zero padding would darken edges
    images = _random_images(16, 20)
    key = _view_key(0, 1, 2)
    out = augmenter.augment(images, seed=key).numpy()
    draws = _draws(key, 16)
    blurred = draws.uniform("apply_blur").numpy() < 0.5
    sigmas = draws.uniform("blur_sigma", 0.5, 2.0).numpy().astype(np.float64)
    assert 0 < blurred.sum() < 16
    x = images / 255.0
    for k in range(16):
        expected = _np_gaussian_blur(x[k], sigmas[k], config.blur_kernel_size) if blurred[k] \
            else x[k]
        np.testing.assert_allclose(out[k], expected, atol=TOLERANCE, err_msg=f"image {k}")


def test_seed_makes_views_reproducible():
    config = AugmentationConfig(image_size=8, jitter_prob=0.0)
    images = _random_images(8, 16)
    first = ViewPairAugmenter(config, seed=7).augment(images).numpy()
    np.testing.assert_array_equal(first, ViewPairAugmenter(config, seed=7).augment(images))
    assert not np.array_equal(first, ViewPairAugmenter(config, seed=8).augment(images))


@pytest.mark.parametrize("recipe", [views.cifar_recipe(8), views.imagenet_recipe(13),
                                    views.imagenet_recipe(50)])
def test_rows_of_a_global_batch_get_the_views_of_the_whole_batch(recipe):
    # Bit for bit, for shares of any size (one image too) and odd image sizes: every stage
    # computes an image from its own numbers only.
    augmenter = ViewPairAugmenter(recipe, seed=4)
    images = _random_images(16, 15)
    whole = [v.numpy() for v in augmenter(images, batch_index=9)]
    again = [v.numpy() for v in ViewPairAugmenter(recipe, seed=4)(images, batch_index=9)]
    for offset, count in ((0, 1), (1, 5), (6, 7), (13, 2), (15, 1)):
        part = augmenter(images[offset:offset + count], batch_index=9, rows=(offset, 16))
        for view, full, repeated in zip(part, whole, again):
            np.testing.assert_array_equal(repeated, full)
            np.testing.assert_array_equal(view.numpy(), full[offset:offset + count])
    other = augmenter(images, batch_index=10)[0].numpy()
    assert not np.array_equal(other, whole[0])


def test_augmenter_stays_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        augmenter = ViewPairAugmenter(views.cifar_recipe(image_size=8), seed=0)
        view1, _ = augmenter(_random_images(4, 8))
    finally:
        keras.config.set_dtype_policy(previous)
    assert view1.dtype == tf.float32


def test_views_inside_tf_data_map_equal_eager_views():
    augmenter = ViewPairAugmenter(views.imagenet_recipe(image_size=8), seed=0)
    images = _random_images(32, 10)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(8).enumerate()
    dataset = dataset.map(lambda index, batch: augmenter(batch, batch_index=index),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = list(dataset)
    assert len(batches) == 4
    assert all(v.shape == (8, 8, 8, 3) and v.dtype == tf.float32 for b in batches for v in b)
    for index, (view1, view2) in enumerate(batches):
        eager1, eager2 = augmenter(images[8 * index:8 * index + 8], batch_index=index)
        np.testing.assert_allclose(view1, eager1, atol=1e-6)
        np.testing.assert_allclose(view2, eager2, atol=1e-6)


# augment_on="device": the crop (and every draw) in the input pipeline, the colour stages in
# the train step; the same views as `augment`, bit for bit on CPU.
SPLIT_RECIPES = [views.cifar_recipe(8), views.imagenet_recipe(13), views.imagenet_recipe(50),
                 # Every stage applied to every image (no jitter coin).
                 AugmentationConfig(image_size=9, jitter_prob=1.0, grayscale_prob=1.0,
                                    blur_prob=1.0),
                 # AMDIM's: the shared flip, with the translation (8) or the crop (40).
                 views.amdim_recipe(8), views.amdim_recipe(40)]


def _assert_same_views(actual, expected):
    for view, reference in zip(actual, expected):
        np.testing.assert_array_equal(np.asarray(view), np.asarray(reference))


@pytest.mark.parametrize("recipe", SPLIT_RECIPES)
def test_crop_and_colour_stages_make_the_views_of_augment(recipe):
    augmenter = ViewPairAugmenter(recipe, seed=4)
    images = _random_images(16, 15)
    whole = [v.numpy() for v in augmenter(images, batch_index=9)]
    # One view: colour_stage(*crop_stage(...)) is augment(...).
    key = augmenter.view_keys(9)[0]
    crops, parameters = augmenter.crop_stage(images, key, shared_seed=augmenter.shared_key(9))
    assert crops.shape == (16, recipe.image_size, recipe.image_size, 3)
    assert crops.dtype == tf.float32
    np.testing.assert_array_equal(augmenter.colour_stage(crops, parameters), whole[0])
    # Both views, for shares of the global batch (rows=(offset, total)) too.
    for offset, count in ((0, 16), (1, 5), (13, 3), (15, 1)):
        pair = augmenter.crop_pair(images[offset:offset + count], 9, rows=(offset, 16))
        assert isinstance(pair, views.CropPair)
        _assert_same_views(augmenter.colour_pair(pair),
                           [v[offset:offset + count] for v in whole])
    # Cut in a tf.data map and finished in a tf.function (the train step's graph, which
    # Grappler rewrites; see _Planes.gray): still the same numbers.
    dataset = tf.data.Dataset.from_tensors(images[4:12]).map(
        lambda batch: augmenter.crop_pair(batch, tf.constant(9, tf.int64),
                                          rows=(tf.constant(4, tf.int64), 16)))
    element = next(iter(dataset))
    assert isinstance(element, views.CropPair)
    _assert_same_views(tf.function(augmenter.colour_pair)(element),
                       [v[4:12] for v in whole])


@pytest.mark.parametrize("recipe", SPLIT_RECIPES[:2])
def test_colour_stage_compiles_with_xla_to_the_same_views_within_rounding(recipe):
    """XLA (jit_compile steps, TPUs) fuses and reorders float arithmetic, so its views differ
    from the pipeline's in the last bits (observed <= 5e-7); the random parameters are the
    same because they are drawn on the host, not in the compiled program (XLA's float
    uniforms differ from TensorFlow's kernels')."""
    augmenter = ViewPairAugmenter(recipe, seed=4)
    images = _random_images(16, 15)
    whole = augmenter(images, batch_index=3)
    compiled = tf.function(augmenter.colour_pair, jit_compile=True)
    for view, expected in zip(compiled(augmenter.crop_pair(images, 3)), whole):
        np.testing.assert_allclose(view, expected, rtol=0, atol=2e-6)


def test_colour_stage_stays_float32_under_mixed_precision_and_checks_its_input():
    augmenter = ViewPairAugmenter(views.cifar_recipe(image_size=8), seed=0)
    images = _random_images(8, 10)
    expected = augmenter(images, batch_index=2)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        pair = augmenter.crop_pair(images, 2)
        result = tf.function(augmenter.colour_pair)(pair)
    finally:
        keras.config.set_dtype_policy(previous)
    assert all(view.dtype == tf.float32 for view in result)
    _assert_same_views(result, expected)
    with pytest.raises(ValueError, match="`crops` must be float32"):
        augmenter.colour_stage(tf.cast(pair.crop1, tf.bfloat16), pair.parameters1)
    with pytest.raises(ValueError, match="`crops` must be a batch"):
        augmenter.colour_stage(pair.crop1[0], pair.parameters1)
    with pytest.raises(ValueError, match="`pair` must be a CropPair"):
        augmenter.colour_pair((pair.crop1, pair.crop2))


# ============================================================================ pipeline
def _indexed_source(n):
    """Images whose pixels all equal their index, so batches reveal which images they hold."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 3))
    return sources.ArrayImageSource("indexed", images, np.zeros(n, np.int64),
                                    images[:2], np.zeros(2, np.int64))


def _pass_through(images, **_):
    images = tf.cast(images, tf.float32)
    return images, images


def _image_ids(dataset, count):
    """The image indices of the first `count` batches of an `_indexed_source` dataset."""
    return [view1.numpy()[:, 0, 0, 0].astype(int) for view1, _ in dataset.take(count)]


def test_pretrain_dataset_shards_and_batches_per_replica():
    source = _indexed_source(40)
    # One pipeline, one replica: global batches of 8; 15 batches = three epochs, each a
    # fresh permutation of the 40 images (batches may straddle epochs: none here).
    whole = _image_ids(pipeline.make_pretrain_dataset(source, _pass_through, 8, seed=0), 15)
    assert all(len(batch) == 8 for batch in whole)
    epochs = np.concatenate(whole).reshape(3, 40)
    assert all(sorted(epoch) == list(range(40)) for epoch in epochs)
    assert list(epochs[0]) != sorted(epochs[0]) and list(epochs[0]) != list(epochs[1])
    # Two workers (pipelines) of one replica each: every worker reads its own half of each
    # global batch, and together they make exactly the one-pipeline batches.
    halves = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        dataset = pipeline.make_pretrain_dataset(source, _pass_through, global_batch_size=8,
                                                 input_context=context, seed=0)
        batches = [view1 for view1, _ in dataset.take(15)]
        assert all(b.shape == (4, 2, 2, 3) and b.dtype == tf.float32 for b in batches)
        halves.append([b.numpy()[:, 0, 0, 0].astype(int) for b in batches])
    for t in range(15):
        np.testing.assert_array_equal(np.concatenate([halves[0][t], halves[1][t]]), whole[t])
    # One worker feeding two replicas: consecutive elements are the replicas' halves.
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    local = _image_ids(pipeline.make_pretrain_dataset(source, _pass_through, 8, context), 30)
    for t in range(15):
        np.testing.assert_array_equal(np.concatenate(local[2 * t:2 * t + 2]), whole[t])
    # Another seed, another order.
    other = _image_ids(pipeline.make_pretrain_dataset(source, _pass_through, 8, seed=1), 5)
    assert not np.array_equal(np.concatenate(other), epochs[0])


def test_pretrain_dataset_resumes_at_any_batch_with_the_same_views(digits):
    """Views are a pure function of (seed, batch index, row): a dataset started at batch k
    continues the stream exactly, and a worker's rows get the views of the whole batch."""
    augmenter = ViewPairAugmenter(views.cifar_recipe(image_size=8), seed=3)
    full = [tuple(v.numpy() for v in pair) for pair in
            pipeline.make_pretrain_dataset(digits, augmenter, 16, seed=0).take(40)]
    # Twice, with a parallel map: same numbers (no stateful randomness in the pipeline).
    again = next(iter(pipeline.make_pretrain_dataset(digits, augmenter, 16, seed=0)))
    np.testing.assert_array_equal(again[0], full[0][0])
    resumed = pipeline.make_pretrain_dataset(digits, augmenter, 16, seed=0, start_batch=37)
    for k, (view1, view2) in enumerate(resumed.take(3)):
        np.testing.assert_array_equal(view1, full[37 + k][0])
        np.testing.assert_array_equal(view2, full[37 + k][1])
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=2)
    second_half = pipeline.make_pretrain_dataset(digits, augmenter, 16, context, seed=0,
                                                 start_batch=5)
    view1, view2 = next(iter(second_half))
    np.testing.assert_array_equal(view1, full[5][0][8:])
    np.testing.assert_array_equal(view2, full[5][1][8:])
    assert not np.array_equal(full[5][0], full[5][1])  # two different views
    with pytest.raises(ValueError, match="start_batch"):
        pipeline.make_pretrain_dataset(digits, augmenter, 16, start_batch=-1)


def test_first_view_pairs_are_the_first_rows_of_the_pretraining_batch(digits):
    augmenter = ViewPairAugmenter(views.cifar_recipe(image_size=8), seed=3)
    batches = list(pipeline.make_pretrain_dataset(digits, augmenter, 16, seed=0).take(2))
    view1, view2 = pipeline.first_view_pairs(digits, augmenter, 16, 4, seed=0)
    assert view1.shape == (4, 8, 8, 3) and view1.dtype == tf.float32
    np.testing.assert_allclose(view1, batches[0][0][:4], rtol=0, atol=1e-6)
    np.testing.assert_allclose(view2, batches[0][1][:4], rtol=0, atol=1e-6)
    # Another batch; `count` is capped at the global batch.
    view1, view2 = pipeline.first_view_pairs(digits, augmenter, 16, 50, seed=0, batch_index=1)
    np.testing.assert_allclose(view1, batches[1][0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(view2, batches[1][1], rtol=0, atol=1e-6)


def test_pretrain_dataset_with_augmenter_under_mirrored_strategy(digits, two_replica_strategy):
    strategy = two_replica_strategy
    augmenter = ViewPairAugmenter(views.cifar_recipe(image_size=8), seed=0)
    distributed = strategy.distribute_datasets_from_function(
        lambda context: pipeline.make_pretrain_dataset(digits, augmenter, 8, context, seed=0))
    view1, view2 = next(iter(distributed))
    for view in strategy.experimental_local_results(view1) + \
            strategy.experimental_local_results(view2):
        assert view.shape == (4, 8, 8, 3) and view.dtype == tf.float32
    # Replica r gets the pipeline's r-th element: rows 4r..4r+3 of the global batch.
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    elements = list(pipeline.make_pretrain_dataset(digits, augmenter, 8, context).take(2))
    for replica, view in enumerate(strategy.experimental_local_results(view1)):
        np.testing.assert_array_equal(view.numpy(), elements[replica][0].numpy())


@pytest.mark.slow
def test_device_mode_elements_finish_as_the_host_mode_views(digits):
    """augment_on="device": the pipeline's CropPairs, finished by colour_pair, are the
    host-mode pipeline's view pairs, for every replica's share and after a resume."""
    augmenter = ViewPairAugmenter(views.imagenet_recipe(image_size=8), seed=3)
    host = [tuple(v.numpy() for v in pair) for pair in
            pipeline.make_pretrain_dataset(digits, augmenter, 16, seed=0).take(3)]
    device = pipeline.make_pretrain_dataset(digits, augmenter.crop_pair, 16, seed=0)
    finish = tf.function(augmenter.colour_pair)
    for element, expected in zip(device.take(3), host):
        assert isinstance(element, views.CropPair) and element.crop1.dtype == tf.float32
        _assert_same_views(finish(element), expected)
    # One pipeline feeding two replicas, resumed at batch 2: replica r's element holds rows
    # 8r..8r+7 of global batch 2, with their own draws.
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    resumed = pipeline.make_pretrain_dataset(digits, augmenter.crop_pair, 16, context, seed=0,
                                             start_batch=2)
    for replica, element in enumerate(resumed.take(2)):
        _assert_same_views(finish(element), [v[8 * replica:8 * replica + 8] for v in host[2]])


def test_batch_size_must_divide_over_replicas():
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=4)
    with pytest.raises(ValueError, match="batch_size=6.*4"):
        pipeline.make_pretrain_dataset(_indexed_source(8), _pass_through, 6, context)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.make_pretrain_dataset(_indexed_source(8), _pass_through, 0)


def test_eval_dataset_keeps_order_and_resizes():
    images = _random_images(10, 6)
    labels = np.arange(10, dtype=np.int64)
    batches = list(pipeline.make_eval_dataset(images, labels, batch_size=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    np.testing.assert_allclose(np.concatenate([b[0] for b in batches]), images / 255.0,
                               atol=1e-6)
    resized, _ = next(iter(pipeline.make_eval_dataset(images, labels, 4, image_size=12)))
    assert resized.shape == (4, 12, 12, 3) and resized.dtype == tf.float32
    assert float(tf.reduce_min(resized)) >= 0.0 and float(tf.reduce_max(resized)) <= 1.0


def test_steps_per_epoch():
    assert pipeline.steps_per_epoch(1198, 128) == 9
    assert pipeline.steps_per_epoch(100, 100) == 1
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.steps_per_epoch(100, 0)


# ------------------------------------------------ streams of images of different sizes


def _stream_source(images, uniform_size):
    """A StreamImageSource over a list of uint8 images (any sizes); shards by input context
    as a file-sharded source would (pipeline p reads images p, p + P, ...)."""
    def make(input_context=None):
        pipelines = input_context.num_input_pipelines if input_context else 1
        pipeline_id = input_context.input_pipeline_id if input_context else 0
        shard = images[pipeline_id::pipelines]
        return tf.data.Dataset.from_generator(
            lambda: ((image, np.int64(0)) for image in shard),
            output_signature=(tf.TensorSpec([None, None, 3], tf.uint8),
                              tf.TensorSpec([], tf.int64)))

    return sources.StreamImageSource("stream", make, make, num_train=len(images),
                                     num_test=len(images), num_classes=1,
                                     image_shape=(8, 8, 3), uniform_size=uniform_size)


def _images_of_sizes(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for height, width in sizes]


@pytest.mark.parametrize("device", [False, True])
def test_cropping_image_by_image_gives_the_batch_crop_views(device):
    """The same images as a batch (uniform_size=True) and as a RaggedTensor batch cropped
    image by image: the same elements, bit for bit (views, or CropPairs with
    augment_on="device")."""
    images = _images_of_sizes([(20, 20)] * 12)
    augmenter = ViewPairAugmenter(views.imagenet_recipe(image_size=8), seed=5)  # with blur
    stage = augmenter.crop_pair if device else augmenter
    batched = pipeline.make_pretrain_dataset(_stream_source(images, True), stage, 4, seed=0)
    one_by_one = pipeline.make_pretrain_dataset(_stream_source(images, False), stage, 4,
                                                seed=0)
    for expected, element in zip(batched.take(4), one_by_one.take(4)):
        tf.nest.map_structure(lambda a, b: np.testing.assert_array_equal(b.numpy(), a.numpy()),
                              expected, element)


@pytest.mark.parametrize("pipelines", [1, 2])
def test_images_of_different_sizes_are_cropped_at_their_own_resolution(monkeypatch,
                                                                        pipelines):
    """Row r of global batch t holds the views the augmenter makes of that image alone with
    row r's draws; with two pipelines each makes its own rows of every global batch."""
    monkeypatch.setattr(pipeline, "STREAM_SHUFFLE_BUFFER", 1)  # keep the stream's order
    images = _images_of_sizes([(17 + 3 * i, 40 - 2 * i) for i in range(8)], seed=1)
    augmenter = ViewPairAugmenter(views.cifar_recipe(image_size=8), seed=2)
    source = _stream_source(images, uniform_size=False)
    global_batch = 4
    for pipeline_id in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                             input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=pipelines)
        shard = images[pipeline_id::pipelines]
        rows = global_batch // pipelines
        dataset = pipeline.make_pretrain_dataset(source, augmenter, global_batch, context,
                                                 seed=0)
        for t, (view1, view2) in enumerate(dataset.take(3)):
            assert view1.shape == (rows, 8, 8, 3)
            keys = augmenter.view_keys(t)
            for r in range(rows):
                image = shard[(t * rows + r) % len(shard)][None]
                row = (pipeline_id * rows + r, global_batch)
                for view, key in zip((view1, view2), keys):
                    np.testing.assert_array_equal(
                        view[r].numpy(), augmenter.augment(image, key, rows=row)[0].numpy())


def test_first_view_pairs_and_probe_images_of_a_stream_of_different_sizes():
    images = _images_of_sizes([(12, 30), (25, 9), (16, 16)], seed=3)
    augmenter = ViewPairAugmenter(views.cifar_recipe(image_size=8), seed=4)
    source = _stream_source(images, uniform_size=False)
    view1, view2 = pipeline.first_view_pairs(source, augmenter, 8, 3, seed=0)
    keys = augmenter.view_keys(0)
    for r, image in enumerate(images):
        np.testing.assert_array_equal(
            view2[r].numpy(), augmenter.augment(image[None], keys[1], rows=(r, 8))[0].numpy())
    probe = pipeline.first_training_images(source, 3)
    assert probe.shape == (3, 8, 8, 3) and probe.dtype == np.uint8
    np.testing.assert_array_equal(probe[1], sources.resize_square(images[1], 8).numpy())


# ------------------------------------------------ AMDIM: shared flip and reflect translation
def test_amdim_recipe_follows_the_authors_code():
    """The authors' TransformsC10 / TransformsSTL10 / TransformsImageNet128."""
    cifar, stl, imagenet = (views.amdim_recipe(s) for s in (32, 64, 128))
    for recipe in (cifar, stl, imagenet):
        assert (recipe.flip, recipe.shared_flip) == (False, True)
        assert (recipe.jitter_prob, recipe.grayscale_prob, recipe.blur_prob) == (0.8, 0.25, 0.0)
        assert (recipe.crop_area, recipe.aspect_ratio) == ((0.3, 1.0), (0.7, 1.4))
    assert cifar.jitter_strength == stl.jitter_strength == (0.4, 0.4, 0.4, 0.2)
    assert imagenet.jitter_strength == (0.4, 0.4, 0.4, 0.1)
    assert (cifar.max_translation, cifar.translation_prob) == (4, 0.8)
    assert stl.max_translation == imagenet.max_translation == 0
    # New fields keep their defaults elsewhere: existing recipes are unchanged.
    assert not views.cifar_recipe().shared_flip and views.imagenet_recipe().max_translation == 0


def _flip_or_same(views_, images):
    """Per view: (unchanged, mirrored), bool [n] each."""
    outputs = views_.numpy() * 255.0
    same = np.all(np.abs(outputs - images) < 1e-3, axis=(1, 2, 3))
    mirrored = np.all(np.abs(outputs - images[:, :, ::-1]) < 1e-3, axis=(1, 2, 3))
    return same, mirrored


def test_shared_flip_flips_both_views_or_neither():
    images = _random_images(256, 6).astype(np.float32)
    shared = ViewPairAugmenter(AugmentationConfig(
        image_size=6, **dict(IDENTITY, shared_flip=True)), seed=1)
    (same1, mirrored1), (same2, mirrored2) = (_flip_or_same(v, images)
                                              for v in shared(images, batch_index=3))
    assert np.all(same1 ^ mirrored1) and np.all(same2 ^ mirrored2)
    np.testing.assert_array_equal(mirrored1, mirrored2)  # per image, the same flip
    assert abs(mirrored1.mean() - 0.5) < 0.1  # 256 draws: 3.2 standard deviations
    # The draw is the shared stream's, the same for both views.
    key = ViewPairAugmenter(AugmentationConfig(image_size=6), seed=1).shared_key(3)
    np.testing.assert_array_equal(mirrored1, _draws(key, 256).coin("shared_flip", 0.5))
    # Per-view flips (the existing option) differ between the views of many images.
    own = ViewPairAugmenter(AugmentationConfig(image_size=6, **dict(IDENTITY, flip=True)),
                            seed=1)
    (_, own1), (_, own2) = (_flip_or_same(v, images) for v in own(images, batch_index=3))
    assert 0.3 < np.mean(own1 != own2) < 0.7
    # Both: a view's own flip on top of the shared one.
    both = ViewPairAugmenter(AugmentationConfig(
        image_size=6, **dict(IDENTITY, flip=True, shared_flip=True)), seed=1)
    view_key = both.view_keys(3)[0]
    _, mirrored = _flip_or_same(both(images, batch_index=3)[0], images)
    np.testing.assert_array_equal(
        mirrored, mirrored1 ^ _draws(view_key, 256).coin("flip", 0.5).numpy())


def test_shared_flip_happens_before_the_crop():
    """Each view is the torchvision crop of the flipped image (flip, then the view's own
    RandomResizedCrop), not the flipped crop of the image."""
    config = AugmentationConfig(image_size=7, crop_area=(0.3, 1.0), aspect_ratio=(0.7, 1.4),
                                flip=False, shared_flip=True, jitter_prob=0.0,
                                grayscale_prob=0.0)
    augmenter = ViewPairAugmenter(config, seed=2)
    images = _random_images(32, 13, seed=3)
    flipped = _draws(augmenter.shared_key(4), 32).coin("shared_flip", 0.5).numpy()
    assert 0 < flipped.sum() < 32
    for view, key in zip(augmenter(images, batch_index=4), augmenter.view_keys(4)):
        draws = _draws(key, 32)
        scales = draws.uniform("crop_area", 0.3, 1.0, shape=[10]).numpy()
        log_ratios = draws.uniform("aspect_ratio", math.log(0.7), math.log(1.4),
                                   shape=[10]).numpy()
        u_top, u_left = draws.uniform("crop_y").numpy(), draws.uniform("crop_x").numpy()
        moved = 0
        for k in range(32):
            image = images[k, :, ::-1] if flipped[k] else images[k]
            top, left, h, w, _ = _np_get_params(13, 13, scales[k], log_ratios[k], u_top[k],
                                                u_left[k], (0.7, 1.4))
            expected = _np_resize(image[top:top + h, left:left + w].astype(float), 7) / 255
            np.testing.assert_allclose(view[k].numpy(), expected, atol=TOLERANCE,
                                       err_msg=f"image {k}")
            moved += flipped[k] and 2 * left + w != 13  # a window that mirroring moves
        assert moved > 0


def _np_translate_with_reflect(image, dy, dx):
    """The authors' RandomTranslateWithReflect for a given shift: output pixel (y, x) is
    the input's (y - dy, x - dx), reflected at the borders without repeating the edge (their
    PIL pastes of the mirrored image overlap the original's edge column/row)."""
    def reflect(index, size):
        index = np.abs(index)
        return np.where(index > size - 1, 2 * (size - 1) - index, index)

    height, width = image.shape[:2]
    rows = reflect(np.arange(height) - dy, height)
    cols = reflect(np.arange(width) - dx, width)
    return image[rows][:, cols]


def test_translation_is_the_authors_reflect_translation():
    config = AugmentationConfig(image_size=10, flip=False, jitter_prob=0.0, grayscale_prob=0.0,
                                max_translation=4, translation_prob=0.8)
    augmenter = ViewPairAugmenter(config, seed=6)
    images = _random_images(200, 10, seed=7)
    key = augmenter.view_keys(1)[0]
    view = augmenter.augment(images, key).numpy()
    draws = _draws(key, 200)
    dy = 4 - np.floor(draws.uniform("crop_y").numpy() * 9).astype(int)
    dx = 4 - np.floor(draws.uniform("crop_x").numpy() * 9).astype(int)
    applied = draws.coin("apply_translation", 0.8).numpy()
    dy, dx = np.where(applied, dy, 0), np.where(applied, dx, 0)
    for k in range(200):
        np.testing.assert_array_equal(
            view[k] * 255.0, _np_translate_with_reflect(images[k], dy[k], dx[k]),
            err_msg=f"image {k}, shift ({dy[k]}, {dx[k]})")
    assert set(dy[applied]) == set(dx[applied]) == set(range(-4, 5))
    assert abs(applied.mean() - 0.8) < 0.09  # 200 draws: 3.2 standard deviations
    # A different input size is translated at its own resolution, then resized.
    small = ViewPairAugmenter(dataclasses.replace(config, image_size=6), seed=6)
    expected = np.stack([_np_resize(_np_translate_with_reflect(
        images[k].astype(float), dy[k], dx[k]), 6) for k in range(200)]) / 255
    np.testing.assert_allclose(small.augment(images, key), expected, atol=TOLERANCE)


@pytest.mark.parametrize("recipe", [views.amdim_recipe(8), views.amdim_recipe(12)])
def test_amdim_views_of_a_ragged_batch_equal_the_batch_views(recipe):
    """Image by image (a RaggedTensor batch, streamed ImageNet), the shared flip and the
    translation (8 px) or the crop (12 px) give the views of the dense batch, bit for bit,
    for a share of the global batch too."""
    augmenter = ViewPairAugmenter(recipe, seed=5)
    images = _random_images(6, 14, seed=8)
    ragged = tf.RaggedTensor.from_tensor(images, ragged_rank=2)
    _assert_same_views(augmenter(ragged, batch_index=2), augmenter(images, batch_index=2))
    _assert_same_views(augmenter(ragged[2:5], batch_index=2, rows=(2, 6)),
                       augmenter(images[2:5], batch_index=2, rows=(2, 6)))

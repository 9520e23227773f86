"""Data package: image sources, the view-pair augmenter and the tf.data pipelines.

Everything runs on tiny images made here, scikit-learn's bundled digits, or TFDS mock data;
the shared MNIST archive is used when present. Nothing is downloaded.
"""
import colorsys
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.data import pipeline, sources, views
from nac_tf.data.views import AugmentationConfig, ViewPairAugmenter

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
    # A third of every class is held out.
    train_counts = np.bincount(digits.train_labels, minlength=10)
    test_counts = np.bincount(digits.test_labels, minlength=10)
    np.testing.assert_array_equal(test_counts, np.round((train_counts + test_counts) / 3))


def test_stratified_split_partitions_every_class():
    labels = np.repeat(np.arange(4), [10, 5, 7, 3])
    train, test = sources.stratified_split(labels, 0.2, seed=5)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(25))
    np.testing.assert_array_equal(np.bincount(labels[test], minlength=4), [2, 1, 1, 1])
    again, _ = sources.stratified_split(labels, 0.2, seed=5)
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
    mean, std = sources.dataset_statistics("npz", source)
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
    source = sources.load_image_folder_source(root, image_size=8, test_fraction=0.4, seed=0)
    assert source.num_skipped == 1
    assert source.class_names == ("cats", "dogs") and source.num_classes == 2
    assert source.num_train + source.num_test == 10 and source.image_shape == (8, 8, 3)
    np.testing.assert_array_equal(np.bincount(source.test_labels), [2, 2])
    # Class ids follow the sorted folder names: cats are dark, dogs bright.
    means = source.train_images.reshape(source.num_train, -1).mean(axis=1)
    assert np.all((means > 128) == (source.train_labels == 1))
    again = sources.load_image_folder_source(root, image_size=8, test_fraction=0.4, seed=0)
    np.testing.assert_array_equal(source.test_images, again.test_images)


def test_image_folder_source_raise_mode_names_the_file(tmp_path):
    root = _write_image_folder(tmp_path / "folder")
    with pytest.raises(ValueError, match="broken.jpg"):
        sources.load_image_folder_source(root, image_size=8, on_corrupt="raise")
    with pytest.raises(ValueError, match="on_corrupt"):
        sources.load_image_folder_source(root, image_size=8, on_corrupt="ignore")


def test_tfds_sources_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        cifar = sources.load_source("cifar10", data_dir=str(tmp_path))
        imagenet = sources.load_tfds_source("imagenet2012", data_dir=str(tmp_path),
                                            manual_dir=str(tmp_path), image_size=24)
        image, label = next(iter(imagenet.train_dataset()))
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
        sharded_image, _ = next(iter(imagenet.train_dataset(context)))
    assert cifar.has_arrays and cifar.num_classes == 10 and cifar.image_shape == (32, 32, 3)
    assert cifar.train_images.shape == (6, 32, 32, 3) and cifar.train_images.dtype == np.uint8
    assert cifar.test_labels.dtype == np.int64 and cifar.test_labels.max() < 10
    assert not imagenet.has_arrays and not hasattr(imagenet, "train_images")
    assert imagenet.num_classes == 1000 and imagenet.num_train == 6
    assert imagenet.image_shape == (24, 24, 3)
    assert image.shape == (24, 24, 3) and image.dtype == tf.uint8 and label.dtype == tf.int64
    assert sharded_image.shape == (24, 24, 3)


def test_load_source_dispatch_and_flag_errors(tmp_path):
    assert sources.load_source("digits", image_size=8).image_shape == (8, 8, 3)
    with pytest.raises(ValueError, match=r"--dataset.*digits, cifar10, imagenet2012"):
        sources.load_source("mnist")
    for dataset in ("npz", "image_folder", "imagenet2012"):
        with pytest.raises(ValueError, match=f"--data_dir.*--dataset={dataset}"):
            sources.load_source(dataset)
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        sources.load_source("npz", data_dir=str(tmp_path / "nothing.npz"))
    path = _write_npz(tmp_path / "tiny.npz", **_small_arrays())
    assert sources.load_source("npz", data_dir=path).num_train == 6
    assert set(sources.DATASETS) == set(sources.DATASET_DEFAULTS)


def test_dataset_statistics(digits):
    assert sources.dataset_statistics("cifar10") == ((0.4914, 0.4822, 0.4465),
                                                     (0.2470, 0.2435, 0.2616))
    assert sources.dataset_statistics("imagenet2012")[1] == (0.229, 0.224, 0.225)
    pixels = digits.train_images.astype(np.float64) / 255.0
    mean, std = sources.dataset_statistics("digits", digits, chunk_size=100)
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)
    assert sources.dataset_statistics("image_folder") == (sources.FALLBACK_MEAN,
                                                         sources.FALLBACK_STD)


# ============================================================================ views
@pytest.mark.parametrize("field, value", [
    ("image_size", 0), ("crop_area", (0.5, 0.2)), ("crop_area", (0.1, 1.5)),
    ("aspect_ratio", (0.0, 1.0)), ("jitter_strength", (0.4, 0.4, 0.4)),
    ("jitter_strength", (0.4, 0.4, 0.4, 0.7)), ("jitter_prob", 1.2),
    ("grayscale_prob", -0.1), ("blur_sigma", (2.0, 0.1)),
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
    # Float input in [0, 255] is accepted too.
    assert augmenter.augment(images.astype(np.float32)).shape == (16, 24, 24, 3)
    with pytest.raises(ValueError, match="images"):
        augmenter.augment(images[0])


def _crop_boxes(views_batch):
    """Crop (width, height) as fractions of the input, read off ramp images (see below)."""
    v = np.asarray(views_batch) * 255.0
    width = (v[..., 0].max(axis=(1, 2)) - v[..., 0].min(axis=(1, 2))) / 255.0
    height = (v[..., 1].max(axis=(1, 2)) - v[..., 1].min(axis=(1, 2))) / 255.0
    return width, height


def test_crops_follow_the_recipe_and_are_independent_per_image_and_view():
    config = AugmentationConfig(image_size=16, **dict(IDENTITY, crop_area=(0.08, 1.0),
                                                      aspect_ratio=(3 / 4, 4 / 3)))
    augmenter = ViewPairAugmenter(config, seed=0)
    # Channel 0 ramps from 0 to 255 left to right, channel 1 top to bottom: bilinear
    # resampling keeps ramps linear, so a view's value range is its crop's size.
    ramp = np.linspace(0.0, 255.0, 64, dtype=np.float32)
    image = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)),
                      np.zeros((64, 64), np.float32)], axis=-1)
    images = np.repeat(image[None], 256, axis=0)

    @tf.function
    def both_views(batch):  # graph mode, where two ops with one seed would draw alike
        return augmenter(batch)

    (w1, h1), (w2, h2) = (_crop_boxes(v) for v in both_views(images))
    for w, h in ((w1, h1), (w2, h2)):
        area = w * h
        assert area.min() > 0.08 - 0.01 and area.max() <= 1.0 + 1e-4
        inside = (w < 0.999) & (h < 0.999)  # keras-cv clips sides that would not fit
        ratio = w[inside] / h[inside]
        assert ratio.min() > 0.75 - 0.02 and ratio.max() < 4 / 3 + 0.02
        assert 0.4 < area.mean() < 0.6  # uniform area in [0.08, 1] has mean 0.54
        assert abs(np.log(ratio).mean()) < 0.05  # log-uniform aspect is symmetric
        assert len(np.unique(area.round(4))) > 200  # every image draws its own crop
    assert abs(np.corrcoef(w1 * h1, w2 * h2)[0, 1]) < 0.25  # the two views are unrelated


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


def test_grayscale_happens_about_a_fifth_of_the_time():
    config = AugmentationConfig(image_size=4, **dict(IDENTITY, grayscale_prob=0.2))
    images = _random_images(512, 4)
    outputs = np.concatenate([v.numpy() for v in ViewPairAugmenter(config, seed=2)(images)])
    gray = np.all(np.abs(outputs[..., 0] - outputs[..., 1]) < 1e-6, axis=(1, 2))
    assert abs(gray.mean() - 0.2) < 0.05  # 1 024 draws: 4 standard deviations


def test_seed_makes_views_reproducible():
    config = AugmentationConfig(image_size=8, jitter_prob=0.0)
    images = _random_images(8, 16)
    first = ViewPairAugmenter(config, seed=7).augment(images).numpy()
    np.testing.assert_array_equal(first, ViewPairAugmenter(config, seed=7).augment(images))
    assert not np.array_equal(first, ViewPairAugmenter(config, seed=8).augment(images))


def test_jitter_factor_mapping():
    factors = views._jitter_factors((0.4, 0.3, 0.4, 0.1), seed=0)
    assert factors["brightness_factor"] == pytest.approx((-0.2, 0.2))
    assert factors["contrast_factor"] == pytest.approx((0.3, 0.3))
    assert factors["hue_factor"] == pytest.approx((0.0, 0.2))
    # keras-cv turns the saturation factor x into the multiplier x / (1 - x).
    x = factors["saturation_factor"](shape=(20000,)).numpy()
    multiplier = x / (1.0 - x)
    assert multiplier.min() >= 0.6 - 1e-5 and multiplier.max() <= 1.4 + 1e-5
    np.testing.assert_allclose(np.histogram(multiplier, bins=4, range=(0.6, 1.4))[0] / 20000,
                               0.25, atol=0.02)  # uniform, like torchvision's


def _jitter_only(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
    config = AugmentationConfig(image_size=4, **dict(
        IDENTITY, jitter_prob=1.0, jitter_strength=(brightness, contrast, saturation, hue)))
    return ViewPairAugmenter(config, seed=3)


def test_brightness_shifts_mid_grey_by_up_to_half_the_strength():
    images = np.full((400, 4, 4, 3), 128, np.uint8)
    out = _jitter_only(brightness=0.4).augment(images).numpy()[:, 0, 0, 0]
    assert out.min() >= 128 / 255 - 0.2 - 1e-4 and out.max() <= 128 / 255 + 0.2 + 1e-4
    assert out.min() < 128 / 255 - 0.15 and out.max() > 128 / 255 + 0.15


def test_hue_shift_stays_within_strength_in_both_directions():
    rgb = colorsys.hsv_to_rgb(0.5, 1.0, 1.0)
    images = np.tile(np.round(np.array(rgb) * 255).astype(np.uint8), (400, 4, 4, 1))
    out = _jitter_only(hue=0.1).augment(images).numpy()[:, 0, 0]
    shift = np.array([colorsys.rgb_to_hsv(*pixel)[0] for pixel in out]) - 0.5
    assert np.all(np.abs(shift) <= 0.1 + 1e-3)
    assert shift.min() < -0.08 and shift.max() > 0.08


def test_saturation_scales_within_strength():
    rgb = colorsys.hsv_to_rgb(0.0, 0.5, 1.0)
    images = np.tile(np.round(np.array(rgb) * 255).astype(np.uint8), (400, 4, 4, 1))
    out = _jitter_only(saturation=0.4).augment(images).numpy()[:, 0, 0]
    ratio = np.array([colorsys.rgb_to_hsv(*pixel)[1] for pixel in out]) / 0.5
    assert ratio.min() >= 0.6 - 0.01 and ratio.max() <= 1.4 + 0.01
    assert ratio.min() < 0.7 and ratio.max() > 1.3


def test_blur_smooths_without_darkening_the_border():
    config = AugmentationConfig(image_size=20, **dict(IDENTITY, blur_prob=1.0,
                                                      blur_sigma=(1.5, 2.0)))
    augmenter = ViewPairAugmenter(config, seed=0)
    flat = augmenter.augment(np.full((2, 20, 20, 3), 200, np.uint8)).numpy()
    np.testing.assert_allclose(flat, 200 / 255, atol=1e-4)  # zero padding would darken edges
    noise = _random_images(2, 20)
    blurred = augmenter.augment(noise).numpy()
    assert blurred.std() < 0.5 * (noise / 255.0).std()


def test_augmenter_stays_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        augmenter = ViewPairAugmenter(views.cifar_recipe(image_size=8), seed=0)
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy(previous)
    view1, _ = augmenter(_random_images(4, 8))
    assert view1.dtype == tf.float32


def test_views_inside_tf_data_map():
    augmenter = ViewPairAugmenter(views.cifar_recipe(image_size=8), seed=0)
    dataset = tf.data.Dataset.from_tensor_slices(_random_images(32, 10)).batch(8)
    batches = list(dataset.map(augmenter, num_parallel_calls=tf.data.AUTOTUNE))
    assert len(batches) == 4
    assert all(v.shape == (8, 8, 8, 3) and v.dtype == tf.float32 for b in batches for v in b)


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


def test_batch_size_must_divide_over_replicas():
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=4)
    with pytest.raises(ValueError, match="--batch_size=6.*4"):
        pipeline.make_pretrain_dataset(_indexed_source(8), _pass_through, 6, context)
    with pytest.raises(ValueError, match="--batch_size"):
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

"""nac_tf.search.png: the PNG files decode, pixel for pixel, with two independent decoders
(Pillow, which matplotlib reads PNG with, and TensorFlow's libpng); bad images are refused
naming the parameter."""
import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from nac_tf.search.png import PNG_SIGNATURE, encode_png, image_pixels, png_data_uri

# Odd sizes, both colour types, and the 1 x 1 and one-row / one-column edge cases.
SHAPES = [(1, 1), (1, 7), (9, 1), (5, 3), (13, 11), (1, 1, 3), (3, 7, 3), (17, 9, 3),
          (8, 8, 3)]


def _random_image(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_png_decodes_pixel_exactly_with_pillow_and_tensorflow(shape):
    import tensorflow as tf

    image = _random_image(shape, seed=sum(shape))
    data = encode_png(image)
    assert data.startswith(PNG_SIGNATURE)

    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "PNG"
        assert decoded.mode == ("L" if len(shape) == 2 else "RGB")
        np.testing.assert_array_equal(np.asarray(decoded), image)

    channels = 1 if len(shape) == 2 else 3
    decoded = tf.io.decode_png(data, channels=channels).numpy()
    np.testing.assert_array_equal(decoded, image.reshape(shape[0], shape[1], channels))


def test_grey_image_with_a_channel_axis_is_the_grey_image():
    image = _random_image((6, 5), seed=1)
    assert encode_png(image[:, :, np.newaxis]) == encode_png(image)


def test_png_of_a_strided_view_is_that_of_a_copy():
    image = _random_image((12, 10, 3), seed=2)
    view = image[::2, ::-3]  # not C-contiguous
    with Image.open(io.BytesIO(encode_png(view))) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), view)


def test_data_uri_holds_the_png_in_base64():
    image = _random_image((4, 3, 3), seed=3)
    uri = png_data_uri(image)
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix):], validate=True) == encode_png(image)


@pytest.mark.parametrize("image, words", [
    (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((4, 4), np.int64), "uint8"),
    (np.zeros((4, 4), bool), "uint8"),
    (np.zeros((4, 4, 4), np.uint8), "[H, W, 3]"),
    (np.zeros((4, 4, 2), np.uint8), "[H, W, 3]"),
    (np.zeros((2, 4, 4, 3), np.uint8), "[H, W, 3]"),
    (np.zeros(4, np.uint8), "[H, W, 3]"),
    (np.zeros((0, 4, 3), np.uint8), "at least 1 x 1"),
    (np.zeros((4, 0), np.uint8), "at least 1 x 1"),
], ids=["float", "int64", "bool", "rgba", "two-channels", "batch", "vector", "no-rows",
        "no-columns"])
def test_bad_images_are_refused_naming_the_parameter(image, words):
    with pytest.raises(ValueError, match=r"^thumb: .*" + re.escape(words)):
        encode_png(image, name="thumb")
    with pytest.raises(ValueError, match=r"^image: "):
        png_data_uri(image)
    with pytest.raises(ValueError, match=r"^image: "):
        image_pixels(image)

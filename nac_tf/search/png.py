"""PNG encoding of uint8 images with zlib alone (no PIL, no TensorFlow): the thumbnails that
the search report embeds as data URIs.

The file is the smallest valid PNG: the signature, IHDR (8-bit greyscale or truecolour, no
interlace), one IDAT of the zlib-compressed scanlines, each led by filter type 0 (none), and
IEND; every chunk ends in the CRC-32 of its type and data (PNG specification, sections 5
and 11).
"""
import base64
import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MEDIA_TYPE = "image/png"
# PNG colour type by the number of channels: 0 greyscale, 2 truecolour (RGB).
_COLOUR_TYPE = {1: 0, 3: 2}
_BIT_DEPTH = 8
# No filter on any scanline: thumbnails are small, and zlib alone keeps them compact.
_FILTER_NONE = 0


def _chunk(kind, data):
    """One PNG chunk: length, type, data, CRC-32 of type and data (big-endian)."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def image_pixels(image, name="image"):
    """`image` (uint8 [H, W, 3] RGB, or grey [H, W] or [H, W, 1]) as a uint8 array
    [H, W, C] with C = 1 or 3; ValueError naming `name` for any other dtype or shape."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise ValueError(f"{name}: must be a uint8 array; received dtype {pixels.dtype}.")
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    if pixels.ndim != 3 or pixels.shape[2] not in _COLOUR_TYPE:
        raise ValueError(f"{name}: must be an image [H, W, 3] (RGB) or [H, W] (grey); "
                         f"received shape {pixels.shape}.")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"{name}: must be at least 1 x 1 pixels; received shape "
                         f"{pixels.shape}.")
    return pixels


def encode_png(image, name="image"):
    """The PNG file (bytes) of `image`: uint8 [H, W, 3] (RGB) or [H, W] (grey; [H, W, 1]
    too). A wrong dtype or shape raises ValueError naming `name`."""
    pixels = image_pixels(image, name)
    height, width, channels = pixels.shape
    scanlines = np.empty((height, 1 + width * channels), np.uint8)
    scanlines[:, 0] = _FILTER_NONE
    scanlines[:, 1:] = pixels.reshape(height, width * channels)
    # Width, height, bit depth, colour type, compression 0 (deflate), filter method 0,
    # interlace 0 (none).
    header = struct.pack(">IIBBBBB", width, height, _BIT_DEPTH, _COLOUR_TYPE[channels], 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9)) + _chunk(b"IEND", b""))


def data_uri(data, media_type=PNG_MEDIA_TYPE):
    """`data` (bytes) as a base64 data URI: "data:<media_type>;base64,..."."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def png_data_uri(image, name="image"):
    """`image` (as `encode_png` takes it) as a data:image/png;base64 URI."""
    return data_uri(encode_png(image, name))

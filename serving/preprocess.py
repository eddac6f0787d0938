"""Image bytes or pixel lists -> model input laid out like MNIST and Fashion-MNIST.

The datasets show a light object on a black background, cropped to the object, scaled to fit a box
(20x20 for MNIST) and centred by centre of mass in a 28x28 field. Uploads are usually the opposite:
dark ink on light paper, photographs, drawings on a transparent canvas, in any size, mode and
format. `to_model_input` brings them to the dataset's layout. Only numpy and Pillow are used, so
importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serving import resample

IMAGE_SIZE = 28
# MNIST scaled each digit to fit 20x20; Fashion-MNIST products fill the whole 28x28 field.
MNIST_CONTENT_SIZE = 20
# Decoders we accept. Pillow knows dozens of formats; rarely used decoders are attack surface a
# service that receives images from strangers does not need.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
# The same list as people write it: every message, the API document and the docs say this.
FORMAT_NAMES = "PNG, JPEG, BMP, GIF or WebP"
# Pixels must stand out from the background by this fraction of full scale to count as content,
# so JPEG noise and paper texture neither defeat the crop nor make a blank image look drawn on.
CONTENT_THRESHOLD = 0.1
# ... and by this many noise standard deviations, the noise measured on the border, so that noisy
# photographs are cropped to the object rather than to the whole frame.
NOISE_SIGMAS = 5.0
# Larger images are first shrunk by an integer factor to at most this side: the object ends up
# 20 pixels long anyway, and the full-resolution float arrays of a 16-megapixel photo would cost
# hundreds of megabytes per request.
WORKING_SIZE = 1024
# The median absolute deviation times this is the standard deviation, for normal noise.
_MAD_TO_SIGMA = 1.4826
# The grey levels of 8-bit images.
_LEVELS = np.arange(256, dtype=np.float64)


class ImageError(ValueError):
    """The input is not an image (or pixel batch) that can be turned into model input."""


def load_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode image bytes (PNG, JPEG, BMP, GIF's first frame, WebP), rejecting oversized images."""
    if not data:
        raise ImageError(f"the image is empty (0 bytes); send the bytes of a {FORMAT_NAMES} file")
    try:
        # Image.open reads only the header, so the size check below runs before any pixel data is
        # decompressed. Pillow raises its own DecompressionBombError here for absurd sizes.
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            f"the data ({len(data)} bytes) is not an image in a supported format ({FORMAT_NAMES})"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"the image is too large: {error}; send a smaller image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"the image header is corrupt ({error}); send a valid image") from None

    width, height = image.size
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; holding the limit to its value as
    # well turns that warning into a refusal without touching global warning filters.
    limit = (
        max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    )
    if width * height > limit:
        raise ImageError(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of {limit};"
            " send a smaller image"
        )
    if width == 0 or height == 0:
        raise ImageError(f"the image is {width}x{height} pixels; send an image with content")
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageError(f"the image is too large: {error}; send a smaller image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(
            f"the image data is truncated or corrupt ({error}); send the complete file"
        ) from None
    # Phone cameras store pixels sideways and record the rotation in EXIF. Broken EXIF metadata
    # should not cost a readable image, which is then merely left unrotated.
    with contextlib.suppress(OSError, SyntaxError, ValueError, KeyError, TypeError):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def to_model_input(image: Image.Image, *, content_size: int = MNIST_CONTENT_SIZE) -> np.ndarray:
    """A light-on-dark float32 (28, 28) array in [0, 1], cropped, scaled and centred like MNIST.

    `content_size` is the box the object is scaled to fit: 20 as in MNIST, 28 for data laid out
    like Fashion-MNIST, whose products fill the field.
    """
    if not 1 <= content_size <= IMAGE_SIZE:
        raise ValueError(f"content_size must be in [1, {IMAGE_SIZE}], got {content_size}")
    try:
        levels = _gray_levels(_shrink(image))
    except ImageError:
        raise
    except ValueError as error:
        # Pillow cannot convert a few exotic modes (premultiplied La, say) to grey.
        raise ImageError(f"images of mode {image.mode} are not supported ({error})") from None
    ink, span = _object_ink(levels)
    return _centre(_fitted(ink, span, content_size))


def _object_ink(levels: np.ndarray) -> tuple[np.ndarray, float]:
    """The object cut out of grey `levels` as ink (light on dark, not yet scaled) and the span
    that full ink has, judged against the border's background and noise."""
    # Most uploads stay in whole grey levels (0-255) until the object is cut out: converting the
    # whole image to floats was most of what preprocessing cost.
    full_scale = 255.0 if levels.dtype == np.uint8 else 1.0
    background, distance = _median_and_distance(_border(levels))
    # People draw and photograph dark on light; the datasets are light on dark. The border decides
    # which is which, since the object may well cover more than half of the image.
    inverted = background > full_scale / 2
    # Ink is the distance from the background towards full contrast, as a fraction of the way:
    # grey paper becomes black like the datasets' backgrounds, and the darkest ink on it full ink.
    span = background if inverted else full_scale - background
    noise = _MAD_TO_SIGMA * distance / span
    threshold = max(CONTENT_THRESHOLD, NOISE_SIGMAS * noise)

    cut = background + (-threshold if inverted else threshold) * span
    if levels.dtype == np.uint8:
        # For whole levels, < cut is < ceil(cut) and > cut is > floor(cut), and comparing with an
        # integer keeps numpy from converting the whole image to floats.
        cut = min(max(math.ceil(cut), 0), 256) if inverted else min(max(math.floor(cut), -1), 255)
    content = levels < cut if inverted else levels > cut
    rows = np.flatnonzero(content.any(axis=1))
    if rows.size == 0:
        raise ImageError(
            "the image is blank: no pixel differs from the background by more than"
            f" {threshold:.0%}; send an image with a visible object"
        )
    columns = np.flatnonzero(content[rows[0] : rows[-1] + 1].any(axis=0))
    crop = levels[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    # Pixels beyond the background (paper brighter than the border's median) are no ink at all.
    level = np.float32(background)
    ink = level - np.minimum(crop, level) if inverted else np.maximum(crop, level) - level
    return ink, span


def _fitted(ink: np.ndarray, span: float, content_size: int) -> np.ndarray:
    """The ink scaled to fit `content_size` and stretched to full intensity, in [0, 1]."""
    height, width = ink.shape
    scale = content_size / max(height, width)
    new_height = max(1, round(height * scale))
    new_width = max(1, round(width * scale))
    # Scaling is linear, so dividing by the span after it gives what scaling the ink would.
    rows = resample.lanczos_weights(new_height, height)
    columns = resample.lanczos_weights(new_width, width)
    scaled = resample.product(resample.product(rows, ink), columns.T)
    # Lanczos overshoots around sharp edges; the overshoot is not ink.
    patch_pixels = np.clip(scaled / np.float32(span), 0.0, 1.0, dtype=np.float32)
    peak = float(patch_pixels.max())
    if peak <= 0:
        raise ImageError("the image is blank after scaling; send an image with a visible object")
    # Nearly every MNIST and Fashion-MNIST image peaks at full intensity, while pale ink, grey
    # paper and strokes thinned by downscaling do not; stretching to the peak undoes all three.
    return patch_pixels / np.float32(peak)


def preprocess(
    data: bytes, *, max_pixels: int = 4096 * 4096, content_size: int = MNIST_CONTENT_SIZE
) -> np.ndarray:
    """Image bytes -> float32 (28, 28) model input in [0, 1]; bad input raises ImageError."""
    return to_model_input(load_image(data, max_pixels=max_pixels), content_size=content_size)


def pixels_to_batch(pixels: Any, *, max_items: int) -> np.ndarray:
    """Check a JSON-decoded batch of (N, 28, 28) or (N, 784) pixels; return float32 (N, 28, 28).

    Values are floats in [0, 1], or integers in [0, 255] when any value is above 1.
    """
    # Counting before converting keeps an oversized request from costing a full conversion. A list
    # of up to 784 may be a single image, which the shape check below explains better.
    longest_single = IMAGE_SIZE * IMAGE_SIZE
    if isinstance(pixels, (list, tuple)) and len(pixels) > max(max_items, longest_single):
        raise ImageError(f"pixels holds {len(pixels)} images, over the limit of {max_items}")
    try:
        array = np.asarray(pixels)
    except ValueError:
        # numpy refuses nested lists whose lengths differ ("inhomogeneous shape").
        raise ImageError(
            "pixels is ragged: every image must have the same number of rows and columns;"
            f" expected (N, {IMAGE_SIZE}, {IMAGE_SIZE}) or (N, {IMAGE_SIZE * IMAGE_SIZE})"
        ) from None
    if array.dtype.kind not in "iuf":
        raise ImageError(
            f"pixels must hold only numbers, got {_describe_dtype(array.dtype)}; send numbers"
            " in [0, 1] or integers in [0, 255]"
        )
    if array.ndim >= 1 and array.shape[0] == 0:
        raise ImageError("empty batch: pixels holds no images; send at least one")
    if array.shape in ((IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE * IMAGE_SIZE,)):
        raise ImageError(
            f"pixels has shape {array.shape}, a single image; wrap it in a list to send a batch"
            " of one"
        )
    images = array.ndim == 3 and array.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)
    flattened = array.ndim == 2 and array.shape[1] == IMAGE_SIZE * IMAGE_SIZE
    if not (images or flattened):
        raise ImageError(
            f"pixels has shape {array.shape}; expected (N, {IMAGE_SIZE}, {IMAGE_SIZE})"
            f" or (N, {IMAGE_SIZE * IMAGE_SIZE})"
        )
    if array.shape[0] > max_items:
        raise ImageError(f"pixels holds {array.shape[0]} images, over the limit of {max_items}")

    return _scaled(array).reshape(-1, IMAGE_SIZE, IMAGE_SIZE).astype(np.float32)


def _scaled(array: np.ndarray) -> np.ndarray:
    """Pixel values in [0, 1]: floats in [0, 1] as they are, integers in [0, 255] divided."""
    # float64 holds every integer a uint8 range check needs exactly.
    values = array.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise ImageError("pixels contains NaN or infinity; send finite numbers")
    lowest, highest = float(values.min()), float(values.max())
    if lowest < 0:
        raise ImageError(f"pixels contains a negative value ({lowest:g}); values must be >= 0")
    if highest <= 1:
        return values
    if highest > 255:
        raise ImageError(
            f"pixels contains {highest:g}, above 255; send integers in [0, 255] or floats in [0, 1]"
        )
    fractional = values != np.floor(values)
    if fractional.any():
        example = float(values[fractional][0])
        raise ImageError(
            f"pixels has values above 1, so it is read as 0-255, but contains the non-integer"
            f" {example:g}; send integers in [0, 255] or floats in [0, 1]"
        )
    return values / 255.0


def _shrink(image: Image.Image) -> Image.Image:
    """The image reduced by an integer factor so its longer side is at most WORKING_SIZE."""
    factor = math.ceil(max(image.size) / WORKING_SIZE)
    if factor <= 1:
        return image
    if image.mode.startswith("I;16"):
        # Pillow cannot reduce 16-bit images; scale them to [0, 1] floats first.
        image = Image.fromarray(_high_depth_gray(image), mode="F")
    # Pillow averages LA and RGBA with premultiplied alpha, so the (often black) colour hidden
    # under transparent pixels does not bleed into the edges of the drawing.
    if _has_alpha(image) and image.mode not in ("LA", "RGBA"):
        image = image.convert("RGBA")
    elif image.mode in ("P", "1", "CMYK", "YCbCr", "HSV", "RGBX"):
        image = image.convert("L")
    return image.reduce(factor)


def _has_alpha(image: Image.Image) -> bool:
    """Whether some pixels of `image` may be transparent (an alpha band or a transparent colour)."""
    return "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info


def _gray_levels(image: Image.Image) -> np.ndarray:
    """Luminance: uint8 levels of 8-bit opaque images, else float32 in [0, 1] (alpha filled in)."""
    if image.mode.startswith(("I", "F")):
        return _high_depth_gray(image)
    if not _has_alpha(image):
        converted = image.getchannel("L") if image.mode == "LAB" else image.convert("L")
        return np.asarray(converted)
    pair = np.asarray(image.convert("RGBA").convert("LA"), dtype=np.float32) / 255.0
    gray, alpha = pair[..., 0], pair[..., 1]
    if alpha.min() >= 1.0:
        return gray
    return alpha * gray + (1.0 - alpha) * _fill_colour(gray, alpha)


def _fill_colour(gray: np.ndarray, alpha: np.ndarray) -> float:
    """The grey that transparent pixels should show so that they read as background.

    The colour stored under a transparent pixel means nothing (an HTML canvas stores black), so
    transparency is composited onto a chosen grey rather than taken at face value or always
    onto white, which would erase white ink drawn on a transparent canvas.
    """
    border_gray, border_alpha = _border(gray), _border(alpha)
    opaque_border = border_alpha >= 0.5
    if opaque_border.mean() >= 0.5:
        # An opaque frame is the background: holes inside it are filled with the frame's colour.
        return float(np.median(border_gray[opaque_border]))
    # Ink on a transparent canvas: fill with white under dark ink and black under light ink, so
    # the ink keeps its contrast whichever colour it was drawn in.
    opaque = alpha >= 0.5
    if opaque.any():
        ink = float(np.median(gray[opaque]))
    elif alpha.sum() > 0:
        ink = float(np.average(gray, weights=alpha))
    else:
        return 1.0
    return 1.0 if ink < 0.5 else 0.0


def _high_depth_gray(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] of a 16/32-bit integer or float image."""
    # Pillow's own conversion to L clips 16-bit values at 255 instead of scaling them.
    values = np.asarray(image, dtype=np.float32)
    highest = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or highest > 255:
        full_scale = 65535.0 if highest <= 65535 else highest
    elif image.mode == "F" and highest <= 1:
        full_scale = 1.0
    else:
        full_scale = 255.0
    return np.clip(values / full_scale, 0.0, 1.0)


def _border(values: np.ndarray) -> np.ndarray:
    """The outer ring of a 2-D array, about 2% of the shorter side wide (at least 1 pixel)."""
    width = max(1, round(0.02 * min(values.shape)))
    return np.concatenate(
        [
            values[:width].ravel(),
            values[-width:].ravel(),
            values[width:-width, :width].ravel(),
            values[width:-width, -width:].ravel(),
        ]
    )


def _median_and_distance(values: np.ndarray) -> tuple[float, float]:
    """The median of `values` and their median distance from it; uint8 ones counted per level."""
    if values.dtype != np.uint8:
        median = float(np.median(values))
        return median, float(np.median(np.abs(values - median)))
    counts = np.bincount(values, minlength=_LEVELS.size)
    median = _counted_median(_LEVELS, counts)
    distances = np.abs(_LEVELS - median)
    order = np.argsort(distances, kind="stable")
    return median, _counted_median(distances[order], counts[order])


def _counted_median(values: np.ndarray, counts: np.ndarray) -> float:
    """The median, as numpy's, of a sample given as ascending `values` and their counts."""
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    lower, upper = np.searchsorted(cumulative, [(total - 1) // 2, total // 2], side="right")
    return float(values[lower] + values[upper]) / 2


def _centre(patch: np.ndarray) -> np.ndarray:
    """Paste `patch` into a black 28x28 field with its centre of mass at (14, 14), as MNIST did."""
    height, width = patch.shape
    row_sums, column_sums = np.add.reduce(patch, axis=1), np.add.reduce(patch, axis=0)
    total = float(np.add.reduce(row_sums))
    centre_row = float(row_sums @ np.arange(height)) / total
    centre_column = float(column_sums @ np.arange(width)) / total
    # A whole-pixel shift keeps the strokes sharp; clipping keeps the object inside the field,
    # which matters for lopsided objects whose centre of mass is near one end. Rounding the shift
    # first sends a symmetric object's tie (a centre between two pixels) always down and right.
    target = IMAGE_SIZE / 2
    top = min(max(math.floor(round(target - centre_row, 4) + 0.5), 0), IMAGE_SIZE - height)
    left = min(max(math.floor(round(target - centre_column, 4) + 0.5), 0), IMAGE_SIZE - width)
    field = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    field[top : top + height, left : left + width] = patch
    return field


def _describe_dtype(dtype: np.dtype) -> str:
    """What a non-numeric array holds, in words for an error message."""
    if dtype.kind in "US":
        return "strings"
    if dtype.kind == "b":
        return "booleans"
    return "values that are not all numbers"

"""Image bytes and pixel lists -> model input: formats, modes, layout and refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from serving import preprocess, resample
from serving.preprocess import ImageError
from tests.support.shapes import png_of_size

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
MODES = ("L", "RGB", "RGBA", "P", "1")
# JPEG has no alpha channel and no palette; Pillow reads its own 32-bit BMP back without the alpha,
# which leaves ink on a transparent canvas as black on black.
UNSAVABLE = {("JPEG", "RGBA"), ("JPEG", "P"), ("BMP", "RGBA")}


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    """The bytes of `image` saved in `image_format`."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def drawing(
    size: tuple[int, int], box: tuple[int, int, int, int], *, ink: int = 0, paper: int = 255
) -> Image.Image:
    """An L image of `size` (width, height): a filled rectangle `box` (inclusive) on plain paper."""
    image = Image.new("L", size, paper)
    ImageDraw.Draw(image).rectangle(box, fill=ink)
    return image


def in_mode(image: Image.Image, mode: str) -> Image.Image:
    """A dark-on-light L drawing in `mode`; RGBA is ink on a transparent canvas, as HTML exports."""
    if mode == "RGBA":
        # Transparent pixels store black, as a browser canvas does, so the colour under them
        # must not be taken at face value.
        alpha = Image.eval(image, lambda value: 255 - value)
        return Image.merge("RGBA", (*Image.new("RGB", image.size, (0, 0, 0)).split(), alpha))
    if mode == "1":
        return image.convert("1", dither=Image.Dither.NONE)
    if mode == "RGB":
        # Dark blue ink on cream paper: colour must be turned into luminance, not into one channel.
        paper = np.asarray(image, dtype=np.float32)[..., np.newaxis] / 255.0
        ink, cream = np.array([40, 40, 120]), np.array([245, 240, 230])
        return Image.fromarray((ink + (cream - ink) * paper).astype(np.uint8), mode="RGB")
    return image.convert(mode)


def content_box(output: np.ndarray, threshold: float = 0.3) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the pixels above `threshold`."""
    rows = np.flatnonzero((output > threshold).any(axis=1))
    columns = np.flatnonzero((output > threshold).any(axis=0))
    return rows[0], columns[0], rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1


def centre_of_mass(output: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centroid."""
    rows, columns = np.indices(output.shape)
    total = output.sum()
    return float((rows * output).sum() / total), float((columns * output).sum() / total)


def assert_model_input(output: np.ndarray) -> None:
    """Shape, type and range are what the model takes."""
    assert output.shape == (28, 28)
    assert output.dtype == np.float32
    assert output.min() >= 0.0 and output.max() <= 1.0


@pytest.mark.parametrize(
    ("image_format", "mode"),
    [(f, m) for f in FORMATS for m in MODES if (f, m) not in UNSAVABLE],
)
def test_every_format_and_mode_gives_a_bright_object_on_black(image_format: str, mode: str) -> None:
    image = in_mode(drawing((100, 40), (30, 5, 69, 34)), mode)
    output = preprocess.preprocess(encode(image, image_format))
    assert_model_input(output)
    # The drawing was dark on light, so it comes out inverted: black field, bright object.
    assert output[:3].max() < 0.05 and output[-3:].max() < 0.05
    assert output.max() == pytest.approx(1.0)
    # A 40x30 rectangle scaled to fit 20x20 is 20 wide and 15 tall.
    _, _, height, width = content_box(output)
    assert abs(width - 20) <= 1 and abs(height - 15) <= 1


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
@pytest.mark.parametrize("size", [(28, 28), (100, 40), (1000, 1000), (3, 50)])
def test_any_size_is_cropped_and_scaled_to_fit_20(image_format: str, size: tuple[int, int]) -> None:
    width, height = size
    margin_x, margin_y = max(1, width // 4), max(1, height // 4)
    box = (margin_x, margin_y, width - margin_x - 1, height - margin_y - 1)
    output = preprocess.preprocess(encode(drawing(size, box), image_format))
    assert_model_input(output)
    _, _, out_height, out_width = content_box(output)
    box_width, box_height = box[2] - box[0] + 1, box[3] - box[1] + 1
    assert abs(max(out_height, out_width) - 20) <= 1
    expected_short = max(1, round(20 * min(box_width, box_height) / max(box_width, box_height)))
    assert abs(min(out_height, out_width) - expected_short) <= 1


def test_light_on_dark_is_not_inverted_and_matches_its_negative() -> None:
    box = (20, 30, 60, 90)
    light_on_dark = preprocess.preprocess(encode(drawing((100, 120), box, ink=255, paper=0), "PNG"))
    dark_on_light = preprocess.preprocess(encode(drawing((100, 120), box), "PNG"))
    assert light_on_dark.max() > 0.9 and light_on_dark[0].max() == 0.0
    np.testing.assert_allclose(light_on_dark, dark_on_light, atol=1e-6)


def test_off_centre_object_is_centred_by_mass() -> None:
    # An L shape in the top-left corner: its centre of mass is not the centre of its box.
    image = Image.new("L", (300, 200), 255)
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 25, 90), fill=0)
    draw.rectangle((10, 75, 70, 90), fill=0)
    output = preprocess.preprocess(encode(image, "PNG"))
    centre_row, centre_column = centre_of_mass(output)
    assert abs(centre_row - 14) <= 1 and abs(centre_column - 14) <= 1


def test_tall_thin_bar_stays_tall_and_thin() -> None:
    output = preprocess.preprocess(encode(drawing((200, 300), (50, 40, 59, 239)), "PNG"))
    _, _, height, width = content_box(output)
    assert abs(height - 20) <= 1 and width <= 2


def test_mnist_like_input_comes_out_close_to_itself() -> None:
    mnist_like = preprocess.preprocess(encode(drawing((60, 80), (10, 10, 40, 60)), "PNG"))
    again = preprocess.to_model_input(Image.fromarray((mnist_like * 255).round().astype(np.uint8)))
    assert np.abs(again - mnist_like).mean() < 0.02


def test_content_size_28_fills_the_field_like_fashion_mnist() -> None:
    output = preprocess.preprocess(
        encode(drawing((50, 50), (5, 5, 44, 44)), "PNG"), content_size=28
    )
    assert content_box(output) == (0, 0, 28, 28)


def test_noisy_grey_photo_is_cropped_to_the_object() -> None:
    rng = np.random.default_rng(0)
    photo = np.full((240, 320), 0.75) + rng.normal(0.0, 0.04, size=(240, 320))
    photo[60:180, 200:230] = 0.15
    image = Image.fromarray((np.clip(photo, 0, 1) * 255).astype(np.uint8))
    output = preprocess.preprocess(encode(image, "JPEG", quality=80))
    _, _, height, width = content_box(output)
    assert abs(height - 20) <= 1 and abs(width - 5) <= 1
    # Grey paper and its noise become black, like the datasets' backgrounds.
    assert np.median(output) == 0.0


@pytest.mark.parametrize("ink", [0, 255])
def test_ink_on_transparent_canvas_is_drawn_whatever_its_colour(ink: int) -> None:
    # The colour under transparent pixels is the opposite of the ink, the worst case for both.
    alpha = drawing((80, 80), (20, 10, 39, 69), ink=255, paper=0)
    gray = Image.new("L", (80, 80), ink)
    gray.paste(255 - ink, (0, 0, 80, 80), mask=Image.eval(alpha, lambda value: 255 - value))
    output = preprocess.preprocess(encode(Image.merge("LA", (gray, alpha)), "PNG"))
    _, _, height, width = content_box(output)
    assert abs(height - 20) <= 1 and abs(width - 7) <= 1
    assert output[0].max() == 0.0


def test_transparent_hole_in_opaque_picture_counts_as_background() -> None:
    image = in_mode(drawing((60, 60), (10, 10, 29, 49)), "RGB").convert("RGBA")
    # A hole that would read as a black blob if the black stored under it were taken as is.
    ImageDraw.Draw(image).rectangle((40, 40, 55, 55), fill=(0, 0, 0, 0))
    output = preprocess.preprocess(encode(image, "PNG"))
    _, _, height, width = content_box(output)
    assert abs(height - 20) <= 1 and abs(width - 10) <= 1


def test_palette_transparency_is_background() -> None:
    image = drawing((64, 64), (16, 8, 47, 55)).convert("P")
    transparent_index = image.getpixel((0, 0))
    output = preprocess.preprocess(encode(image, "GIF", transparency=transparent_index))
    _, _, height, width = content_box(output)
    assert abs(height - 20) <= 1 and abs(width - 13) <= 1


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    pixels = np.full((40, 40), 60000, dtype=np.uint16)
    pixels[10:30, 15:25] = 3000
    image = Image.fromarray(pixels)
    assert image.mode == "I;16"
    output = preprocess.preprocess(encode(image, "PNG"))
    _, _, height, width = content_box(output)
    assert (height, width) == (20, 10)


def test_cmyk_jpeg_is_read() -> None:
    image = drawing((50, 50), (10, 10, 39, 39)).convert("CMYK")
    output = preprocess.preprocess(encode(image, "JPEG"))
    assert content_box(output)[2:] == (20, 20)


def test_animated_gif_uses_its_first_frame() -> None:
    first = drawing((60, 60), (25, 5, 34, 54))
    second = drawing((60, 60), (5, 25, 54, 34))
    data = encode(first, "GIF", save_all=True, append_images=[second])
    _, _, height, width = content_box(preprocess.preprocess(data))
    assert height > width


def test_exif_rotation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was held sideways.
    data = encode(drawing((120, 60), (10, 20, 109, 39)), "JPEG", exif=exif)
    _, _, height, width = content_box(preprocess.preprocess(data))
    assert height > width


def test_large_image_is_shrunk_before_processing() -> None:
    image = drawing((3000, 2000), (1000, 500, 1199, 1499))
    output = preprocess.preprocess(encode(image, "PNG", compress_level=1))
    _, _, height, width = content_box(output)
    assert abs(height - 20) <= 1 and abs(width - 4) <= 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(2000), "not an image"),
        (b"GIF89a" + bytes(10), r"not an image|corrupt"),
        (encode(Image.new("L", (40, 40)), "TIFF"), "not an image"),
    ],
    ids=["empty", "garbage", "corrupt-header", "unsupported-format"],
)
def test_bad_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        preprocess.preprocess(data)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_truncated_image_is_refused(image_format: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64), dtype=np.uint8)
    data = encode(Image.fromarray(noise), image_format)
    with pytest.raises(ImageError, match=r"truncated|corrupt|not an image"):
        preprocess.preprocess(data[: len(data) // 2])


def test_decompression_bomb_is_refused() -> None:
    # 400 megapixels in under 50 KB: Pillow itself refuses this size.
    data = png_of_size(20000, 20000)
    assert len(data) < 100_000
    with pytest.raises(ImageError, match="too large"):
        preprocess.load_image(data, max_pixels=4096 * 4096)


def test_image_over_max_pixels_is_refused_before_decoding() -> None:
    data = png_of_size(5000, 5000)
    with pytest.raises(
        ImageError, match=r"5000x5000 = 25000000 pixels, over the limit of 16777216"
    ):
        preprocess.preprocess(data)
    small = encode(drawing((20, 20), (5, 5, 14, 14)), "PNG")
    with pytest.raises(ImageError, match="over the limit of 100"):
        preprocess.load_image(small, max_pixels=100)
    assert preprocess.load_image(small, max_pixels=400).size == (20, 20)


def test_pillow_limit_holds_when_max_pixels_is_higher(monkeypatch: pytest.MonkeyPatch) -> None:
    # Between its limit and twice that Pillow only warns; the image must still be refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(drawing((40, 40), (5, 5, 14, 14)), "PNG")
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(ImageError, match="1600 pixels, over the limit of 1000"),
    ):
        preprocess.load_image(data, max_pixels=10**9)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (50, 50), 255),
        Image.new("L", (50, 50), 0),
        Image.new("RGB", (50, 50), (128, 128, 128)),
        Image.new("RGBA", (50, 50), (0, 0, 0, 0)),
        drawing((50, 50), (20, 20, 30, 30), ink=240, paper=250),
    ],
    ids=["white", "black", "grey", "transparent", "too-faint"],
)
def test_blank_image_is_refused(image: Image.Image) -> None:
    with pytest.raises(ImageError, match="blank"):
        preprocess.preprocess(encode(image, "PNG"))


def test_to_model_input_rejects_bad_content_size() -> None:
    with pytest.raises(ValueError, match="content_size"):
        preprocess.to_model_input(Image.new("L", (28, 28)), content_size=29)


# pixels_to_batch


@pytest.mark.parametrize("flat", [False, True])
def test_uint8_batch_is_scaled_to_unit_range(flat: bool) -> None:
    images = np.random.default_rng(2).integers(0, 256, size=(3, 28, 28))
    images[0, 0, 0] = 255
    pixels = images.reshape(3, 784).tolist() if flat else images.tolist()
    batch = preprocess.pixels_to_batch(pixels, max_items=8)
    assert batch.shape == (3, 28, 28) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, images / 255.0, rtol=1e-6)


@pytest.mark.parametrize("flat", [False, True])
def test_float_batch_is_kept(flat: bool) -> None:
    images = np.random.default_rng(3).random(size=(2, 28, 28))
    pixels = images.reshape(2, 784).tolist() if flat else images.tolist()
    batch = preprocess.pixels_to_batch(pixels, max_items=8)
    np.testing.assert_allclose(batch, images, rtol=1e-6)


def test_ndarray_and_binary_batches_are_accepted() -> None:
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    images[:, 10:20, 12:16] = 1
    # All values are at most 1, so the batch is read as [0, 1]: the ones are full-intensity ink.
    batch = preprocess.pixels_to_batch(images, max_items=4)
    assert batch.max() == 1.0 and batch.shape == (4, 28, 28)


def test_large_batch_is_converted_quickly() -> None:
    pixels = np.random.default_rng(4).integers(0, 256, size=(500, 784)).tolist()
    assert preprocess.pixels_to_batch(pixels, max_items=500).shape == (500, 28, 28)


ZEROS = [[0] * 28] * 28


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        ([], "empty batch"),
        (np.zeros((0, 784)), "empty batch"),
        (np.zeros((3, 27, 27)).tolist(), r"shape \(3, 27, 27\); expected \(N, 28, 28\)"),
        (np.zeros((2, 783)).tolist(), r"shape \(2, 783\)"),
        (7, r"shape \(\)"),
        (ZEROS, "single image; wrap it in a list"),
        ([0] * 784, "single image; wrap it in a list"),
        ([ZEROS, [[0] * 27] * 28], "ragged"),
        ([ZEROS, ZEROS[:5]], "ragged"),
        ([[*[0.5] * 783, float("nan")]], "NaN or infinity"),
        ([[*[0.5] * 783, float("inf")]], "NaN or infinity"),
        ([[*[0.5] * 783, -0.1]], "negative"),
        ([[*[1] * 783, 256]], "above 255"),
        ([[*[1] * 783, 3.5]], "non-integer 3.5"),
        ([[*["0"] * 784]], "strings"),
        ([[*[0] * 783, None]], "not all numbers"),
        ([[*[True] * 784]], "booleans"),
        ([[0] * 784] * 9, "9 images, over the limit of 8"),
        (np.zeros((9, 784)), "9 images, over the limit of 8"),
        # Counted before conversion, so the wrong inner shape is never looked at.
        ([[0]] * 1000, "1000 images, over the limit of 8"),
    ],
    ids=[
        "empty",
        "empty-array",
        "wrong-shape",
        "wrong-flat-shape",
        "scalar",
        "single-image",
        "single-flat-image",
        "ragged-columns",
        "ragged-rows",
        "nan",
        "inf",
        "negative",
        "above-255",
        "fraction-above-1",
        "strings",
        "null",
        "booleans",
        "too-many",
        "too-many-array",
        "too-many-counted-first",
    ],
)
def test_bad_pixels_are_refused(pixels: object, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        preprocess.pixels_to_batch(pixels, max_items=8)


def test_one_list_of_formats_in_every_message_and_page() -> None:
    """The decoders accepted, the errors, the API document and the docs name the same formats."""
    from serving import openapi
    from tests.support.servers import REPO_ROOT

    named = preprocess.FORMAT_NAMES.replace(" or ", ", ").upper().split(", ")
    assert sorted(named) == sorted(preprocess.FORMATS)
    for data in (b"", b"not an image"):
        with pytest.raises(ImageError, match=preprocess.FORMAT_NAMES):
            preprocess.load_image(data, max_pixels=1000)
    upload = openapi.upload_paths(max_images=4, max_body_bytes=1024)["/predict_image"]["post"]
    assert preprocess.FORMAT_NAMES in upload["description"]
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    mentions = [
        (page.name, line)
        for page in pages
        for line in page.read_text().splitlines()
        if "PNG, JPEG" in line or "PNG or JPEG" in line
    ]
    assert mentions, "the docs name no image formats"
    for page, line in mentions:
        assert preprocess.FORMAT_NAMES in line, f"{page}: {line}"


# How the model input is computed: the cheaper arithmetic gives what Pillow and numpy would.


@pytest.mark.parametrize(
    ("height", "width"), [(126, 126), (28, 28), (10, 3), (3, 50), (200, 37), (1, 1), (700, 29)]
)
def test_lanczos_weights_resample_as_pillow_does(height: int, width: int) -> None:
    pixels = np.random.default_rng(height * width).random((height, width)).astype(np.float32)
    scale = 20 / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    pillow = Image.fromarray(pixels, mode="F").resize(
        (new_width, new_height), Image.Resampling.LANCZOS
    )
    rows = resample.lanczos_weights(new_height, height)
    columns = resample.lanczos_weights(new_width, width)
    np.testing.assert_allclose(rows @ pixels @ columns.T, np.asarray(pillow), atol=1e-6)


def test_product_in_slices_is_the_matrix_product() -> None:
    rng = np.random.default_rng(5)
    left, right = rng.random((28, 900)), rng.random((900, 700))  # 17.6 M multiply-adds
    np.testing.assert_allclose(resample.product(left, right), left @ right, rtol=1e-12)


@pytest.mark.parametrize("count", [1, 2, 7, 1000, 1001])
def test_median_counted_per_level_is_numpys(count: int) -> None:
    levels = np.random.default_rng(count).integers(0, 256, size=count, dtype=np.uint8)
    median, distance = preprocess._median_and_distance(levels)
    assert median == np.median(levels)
    assert distance == np.median(np.abs(levels - np.median(levels)))
    as_floats = preprocess._median_and_distance(levels.astype(np.float32))
    assert as_floats == pytest.approx((median, distance))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_whole_levels_give_what_floats_give(mode: str) -> None:
    # 8-bit images are worked on in whole grey levels, others as floats: same model input.
    rng = np.random.default_rng(6)
    photo = np.clip(200 + rng.normal(0, 6, size=(120, 90)), 0, 255)
    photo[30:95, 20:60] -= 150 * rng.random((65, 40))
    image = in_mode(Image.fromarray(photo.astype(np.uint8)), mode)
    as_floats = Image.fromarray(np.asarray(image.convert("L"), dtype=np.float32), mode="F")
    np.testing.assert_allclose(
        preprocess.to_model_input(image), preprocess.to_model_input(as_floats), atol=1e-5
    )


@pytest.mark.parametrize("side", [20, 40, 60, 100])
def test_symmetric_object_is_always_shifted_the_same_way(side: int) -> None:
    # A square's centre of mass lies between two pixels; the tie goes down and right.
    size = side + 20
    output = preprocess.preprocess(
        encode(drawing((size, size), (10, 10, side + 9, side + 9)), "PNG")
    )
    assert content_box(output) == (5, 5, 20, 20)

"""The page at /ui in a real headless Chromium against a real `bentoml serve` of a Fashion
model: draw a stroke (mouse, then a finger on a phone-sized window), upload a test image, read
the bars, check them against /predict_image on the same image, see the errors in words.
Screenshots go to reports/screenshots/ (and docs/images/ with DOCS_IMAGES=1)."""

from __future__ import annotations

import base64
import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serving import preprocess
from tests.support import chromium, shapes
from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = REPO_ROOT / "reports" / "screenshots"
WAIT_S = 30


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium driven through chromedriver (Debian's `chromium`, `chromium-driver`)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "no Chromium here: `make test` installs Debian's chromium and chromium-driver when it"
            " runs as root or with passwordless sudo"
        )
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, fashion_served):
    """The page, loaded, with the model's name shown (so /metadata has answered)."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1200, 1000)
    browser.get(f"{fashion_served.url}/ui")
    WebDriverWait(browser, WAIT_S).until(
        lambda driver: driver.find_element("id", "model-name").text != "…"
    )
    return browser


def settled(driver, action) -> str:
    """Run `action` (which makes the page ask the service), wait until the page shows the answer
    or an error, and return which ("done" or "error")."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("document.body.dataset.state = 'waiting'")
    action()
    WebDriverWait(driver, WAIT_S).until(
        lambda d: (
            d.find_element("tag name", "body").get_attribute("data-state") in ("done", "error")
        )
    )
    return driver.find_element("tag name", "body").get_attribute("data-state")


def shown_answer(driver) -> dict:
    """What the page shows: winner, every bar's class and width, the 28x28 picture (0-255)."""
    bars = driver.find_elements("css selector", "#bars li")
    return {
        "winner": driver.find_element("id", "winner").text,
        "highlighted": [
            bar.get_attribute("data-class")
            for bar in bars
            if "winner" in (bar.get_attribute("class") or "")
        ],
        "classes": [bar.get_attribute("data-class") for bar in bars],
        "widths": [
            float(bar.find_element("css selector", ".fill").value_of_css_property("width")[:-2])
            / float(bar.find_element("css selector", ".bar").value_of_css_property("width")[:-2])
            for bar in bars
        ],
        "picture": np.array(
            driver.execute_script(
                "return Array.from(document.getElementById('seen').getContext('2d')"
                ".getImageData(0, 0, 28, 28).data)"
            )
        ).reshape(28, 28, 4)[..., 0],
    }


def assert_same_as_service(url: str, shown: dict, image: bytes, class_names) -> None:
    """The page's answer is /predict_image's on the same image bytes."""
    answer = httpx.post(
        f"{url}/predict_image?show_input=true", files={"image": ("i.png", image, "image/png")}
    ).json()
    assert shown["winner"] == answer["class_name"]
    assert shown["highlighted"] == [answer["class_name"]]
    assert shown["classes"] == list(class_names)
    np.testing.assert_allclose(shown["widths"], list(answer["probabilities"].values()), atol=0.01)
    expected = np.rint(np.array(answer["input"]) * 255)
    np.testing.assert_allclose(shown["picture"], expected, atol=1)
    model_input = preprocess.preprocess(image, content_size=28)
    np.testing.assert_allclose(expected / 255, model_input, atol=0.003)


def drawing_on_pad(driver) -> bytes:
    data_url = driver.execute_script("return document.getElementById('pad').toDataURL('image/png')")
    return base64.b64decode(data_url.split(",", 1)[1])


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / path.name)
    with Image.open(path) as picture:
        assert picture.size[0] > 300
    chromium.for_docs(path)
    return path


def test_page_shows_the_model(page, fashion_store) -> None:
    assert page.find_element("id", "model-name").text == "fashion-mnist-classifier"
    assert page.find_element("id", "model-version").text == "1"
    # When this version took over (the service follows the registry): a UTC time.
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", page.find_element("id", "model-since").text
    )
    accuracy = page.find_element("id", "model-accuracy").text
    assert accuracy == f"{fashion_store.test_accuracy * 100:.1f}%"
    # Everything the page loaded came from the service itself.
    loaded = page.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    assert loaded and all(name.startswith(page.current_url.rsplit("/ui", 1)[0]) for name in loaded)


def test_a_mouse_stroke_is_classified(page, fashion_served, fashion_store, tmp_path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    pad = page.find_element("id", "pad")

    def stroke() -> None:
        chain = ActionChains(page).move_to_element_with_offset(pad, -10, -90).click_and_hold()
        for x, y in ((-5, -30), (0, 30), (5, 90)):
            chain = chain.move_to_element_with_offset(pad, x, y)
        chain.release().perform()

    assert settled(page, stroke) == "done"
    shown = shown_answer(page)
    assert shown["picture"].max() == 255  # the stroke, stretched to full ink
    assert_same_as_service(
        fashion_served.url, shown, drawing_on_pad(page), fashion_store.class_names
    )
    screenshot(page, "ui-drawing", tmp_path)


def test_an_uploaded_test_image_is_classified(page, fashion_served, fashion_store, tmp_path):
    # A test image as people photograph things: larger, dark on light.
    image = Image.fromarray(255 - fashion_store.test_images[0]).resize((112, 112))
    path = tmp_path / "ankle-boot.png"
    image.save(path)
    file_input = page.find_element("id", "file")
    assert settled(page, lambda: file_input.send_keys(str(path))) == "done"
    shown = shown_answer(page)
    assert_same_as_service(fashion_served.url, shown, path.read_bytes(), fashion_store.class_names)
    screenshot(page, "ui-upload", tmp_path)


def error_after(page, action) -> str:
    assert settled(page, action) == "error"
    error = page.find_element("id", "error")
    assert error.is_displayed() and not page.find_element("id", "answer").is_displayed()
    return error.text


def test_errors_are_said_in_words(page, tmp_path) -> None:
    page.find_element("id", "clear").click()
    blank = error_after(page, page.find_element("id", "classify").click)
    assert blank.startswith("The service refused this image (HTTP 400): image: the image is blank")
    text = tmp_path / "notes.png"
    text.write_text("not a picture at all")
    file_input = page.find_element("id", "file")
    wrong = error_after(page, lambda: file_input.send_keys(str(text)))
    assert "(HTTP 400)" in wrong and "is not an image in a supported format" in wrong
    large = tmp_path / "large.png"
    large.write_bytes(shapes.png_of_size(64, 64) + bytes(1536 * 1024))  # over the 1 MiB limit
    too_large = error_after(page, lambda: file_input.send_keys(str(large)))
    assert "(HTTP 413)" in too_large and "over the limit" in too_large, too_large
    screenshot(page, "ui-error", tmp_path)


def test_a_finger_draws_on_a_phone(page, fashion_served, fashion_store, tmp_path) -> None:
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    page.set_window_size(390, 844)
    width = page.execute_script("return document.documentElement.clientWidth")
    assert page.execute_script("return document.documentElement.scrollWidth") <= width
    page.find_element("css selector", "input[name=ink][value=black]").click()
    pad = page.find_element("id", "pad")
    assert pad.size["width"] <= width

    def touch() -> None:
        actions = ActionBuilder(page, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
        actions.pointer_action.move_to(pad, -60, -60).pointer_down()
        for x, y in ((-20, -20), (20, 20), (60, 60)):
            actions.pointer_action.move_to(pad, x, y)
        actions.pointer_action.pointer_up()
        actions.perform()

    assert settled(page, touch) == "done"
    drawn = np.asarray(Image.open(io.BytesIO(drawing_on_pad(page))).convert("L"))
    assert drawn[0, 0] == 255 and drawn.min() == 0  # black ink on white paper
    shown = shown_answer(page)
    assert_same_as_service(
        fashion_served.url, shown, drawing_on_pad(page), fashion_store.class_names
    )
    # The verdict is repeated under the pad, where the finger is; the bars are further down.
    verdict = page.find_element("id", "status")
    assert verdict.is_displayed() and verdict.text.startswith(f"It is {shown['winner']} (")
    screenshot(page, "ui-phone", tmp_path)
    page.execute_script("document.getElementById('answer').scrollIntoView()")
    screenshot(page, "ui-phone-answer", tmp_path)

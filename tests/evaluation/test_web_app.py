"""The web demo (code/app.py): served on localhost, queried with gradio_client and driven in a
headless Chromium, for real.

Without gradio (the `app` extra) only the install hint is tested; without Chromium and its
driver (Debian's `chromium` and `chromium-driver`) the browser test skips with that reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from budgetnet.data.normalization import Normalization, Preprocessing
from budgetnet.data.sources import ImageSet
from budgetnet.evaluation.ensemble import load_ensemble
from budgetnet.models.builder import build
from budgetnet.models.checkpoint import save_release
from budgetnet.models.spec import ResNetSpec

from cifar_files import CIFAR10_CLASSES, write_image_folder
from conftest import REPO

PER_CLASS = 2  # test images per class in the example data
STARTUP_S = 120  # importing torch and gradio on 2 busy cores takes a while


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A tiny random network whose classifier is scaled up, so that its top-5 classes are
    well apart and come out in the same order in every process."""
    torch.manual_seed(0)
    model = build(ResNetSpec(blocks=(1,), channels=(8,)))
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, nn.Linear)).weight.mul_(30)
    folder = tmp_path_factory.mktemp("release")
    normalization = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "test")
    preprocessing = Preprocessing(32, True, normalization)
    return save_release(folder, model, CIFAR10_CLASSES, preprocessing, {}, {})


@pytest.fixture(scope="module")
def test_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_image_folder(root, dict.fromkeys(CIFAR10_CLASSES, PER_CLASS), split="test")
    return root


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> Path:
    """An image as users upload them: large, not square, with an alpha channel."""
    path = tmp_path_factory.mktemp("upload") / "photo.png"
    pixels = np.random.default_rng(1).integers(0, 256, (300, 200, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


@pytest.fixture(scope="module")
def classify(release):
    """The demo's prediction function, in this process: what the served page must answer."""
    web_app = pytest.importorskip(
        "budgetnet.evaluation.web_app", reason="gradio is not installed (the app extra)"
    )
    return web_app.Classifier(load_ensemble([release], web_app.CPU), tta=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(release, test_folder, tmp_path_factory):
    """`python code/app.py` on a free localhost port; its URL. Always stopped afterwards."""
    pytest.importorskip("gradio", reason="gradio is not installed (the app extra)")
    tmp = tmp_path_factory.mktemp("server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = (tmp / "app.log").open("w+")
    env = {
        **os.environ,
        "BUDGETNET_CACHE": str(tmp / "cache"),
        "GRADIO_TEMP_DIR": str(tmp / "gradio"),  # uploads and examples stay in the test's tmp
    }
    command = [sys.executable, "code/app.py", "--checkpoint", str(release)]
    command += ["--data", str(test_folder), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"code/app.py exited with {process.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"code/app.py did not answer on {url} in {STARTUP_S} s")
                time.sleep(0.5)
        yield url
    finally:
        # Ctrl-C ends gradio's launch() cleanly; kill it if that does not work.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_without_gradio_says_what_to_install():
    # None in sys.modules makes `import gradio` fail as it does where gradio is not installed;
    # code/ goes first on the path, as when the script is run. A new process: this one may have
    # imported gradio and the demo already.
    code = (
        "import runpy, sys; sys.modules['gradio'] = None; sys.path.insert(0, 'code'); "
        "sys.argv = ['code/app.py', '--checkpoint', 'nowhere']; "
        "runpy.run_path('code/app.py', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the web demo needs gradio: pip install -e '.[app]'"
    ]


def _image_set(count: int, classes: list[str]) -> ImageSet:
    labels = np.repeat(np.arange(len(classes)), count // len(classes))
    images = np.zeros((len(labels), 32, 32, 3), dtype=np.uint8)
    return ImageSet(images, labels, classes, "test")


def test_examples_take_the_classes_in_turn():
    web_app = pytest.importorskip(
        "budgetnet.evaluation.web_app", reason="gradio is not installed (the app extra)"
    )
    test = _image_set(12, ["a", "b", "c"])  # labels 0 0 0 0 1 1 1 1 2 2 2 2
    assert web_app.pick_examples(test, 5).tolist() == [0, 4, 8, 1, 5]
    assert web_app.pick_examples(test, 20).tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


def test_examples_come_from_the_test_split(test_folder, tmp_path, monkeypatch):
    web_app = pytest.importorskip(
        "budgetnet.evaluation.web_app", reason="gradio is not installed (the app extra)"
    )
    monkeypatch.setenv("BUDGETNET_CACHE", str(tmp_path / "cache"))
    examples = web_app.load_examples(str(test_folder), 10, CIFAR10_CLASSES)
    assert examples.labels.tolist() == list(range(10))
    assert web_app.load_examples(str(test_folder), 0, CIFAR10_CLASSES) is None
    with pytest.raises(web_app.UserError, match="differ from the model's"):
        web_app.load_examples(str(test_folder), 10, CIFAR10_CLASSES[::-1])
    # No --data and nothing at the default places: no examples rather than a download.
    monkeypatch.delenv("BUDGETNET_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert web_app.load_examples(None, 10, CIFAR10_CLASSES) is None


def test_uploads_are_resized_as_the_data_layer_reads_images(classify, upload):
    with Image.open(upload) as image:  # the data layer's conversion, written out here
        pixels = np.array(image.convert("RGB").resize((32, 32), Image.BILINEAR))
    probs = classify.ensemble.probs(pixels[None], tta=1, batch_size=1, device=torch.device("cpu"))
    expected = np.argsort(-probs[0])[:5]
    top5 = classify(str(upload))
    assert list(top5) == [CIFAR10_CLASSES[i] for i in expected]
    np.testing.assert_allclose(list(top5.values()), probs[0][expected], rtol=1e-6)


def test_an_undecodable_upload_is_one_message_on_the_page(classify, tmp_path):
    import gradio as gr

    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    with pytest.raises(gr.Error, match="cannot decode image"):
        classify(str(fake))


@pytest.mark.slow
def test_gradio_client_gets_the_top5(server, classify, upload):
    from gradio_client import Client, handle_file

    answer = Client(server, verbose=False).predict(handle_file(str(upload)), api_name="/predict")
    expected = classify(str(upload))
    assert answer["label"] == next(iter(expected))
    got = {c["label"]: c["confidence"] for c in answer["confidences"]}
    assert list(got) == list(expected)
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-5)


def _chromium() -> tuple[str, str]:
    """Paths of Chromium and its WebDriver, or skip."""
    pytest.importorskip("selenium", reason="selenium is not installed (the app extra)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(
            "no headless browser: install Chromium and its driver "
            "(apt-get install chromium chromium-driver)"
        )
    return browser, driver


def _shown_classes(text: str) -> list[str]:
    """Class names in the label's text: 'Top 5', the top class, then name/percentage pairs."""
    return text.splitlines()[2::2]


@pytest.mark.slow
def test_browser_uploads_an_image_and_reads_the_labels(
    server, classify, upload, test_folder, tmp_path
):
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from budgetnet.evaluation.web_app import IMAGE_ID, LABEL_ID

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless",
        "--no-sandbox",  # as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    wait = WebDriverWait(driver, 60)

    def shown_image() -> str | None:
        """The src of the input's image once it is there (the server has the file then)."""
        found = driver.find_elements(By.CSS_SELECTOR, f"#{IMAGE_ID} img")
        return found[0].get_attribute("src") if found else None

    def submit_when_shown(previous_image: str | None) -> None:
        wait.until(lambda _: shown_image() not in (None, previous_image))
        next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.text == "Submit").click()

    def shown_classes() -> list[str]:
        return _shown_classes(driver.find_element(By.ID, LABEL_ID).text)

    try:
        driver.get(server)
        wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(upload))
        submit_when_shown(None)
        expected = list(classify(str(upload)))
        wait.until(lambda _: shown_classes() == expected)
        screenshot = tmp_path / "demo.png"
        assert driver.save_screenshot(str(screenshot))

        # The first example is the first test image of the first class.
        uploaded = shown_image()
        driver.find_element(By.CSS_SELECTOR, "button.gallery-item").click()
        submit_when_shown(uploaded)
        expected = list(classify(str(test_folder / "test" / CIFAR10_CLASSES[0] / "0000.png")))
        wait.until(lambda _: shown_classes() == expected)
    finally:
        driver.quit()
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size[0] >= 640

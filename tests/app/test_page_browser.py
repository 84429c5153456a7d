"""The page at `/` in a real headless Chromium, against a real server on tiny weights in demo mode.

One browser and one server for the module. The real UNet is held at a chosen forward call through a
forward pre-hook (the network's public seam), so "running, with progress" is a state the test waits
for instead of a race against a fast tiny model. A screenshot of each state is saved; the terminal
summary says where.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
from browser_helpers import (
    DESKTOP,
    PHONE,
    alert_texts,
    by_accessible_name,
    image_loaded,
    require_browser,
    screenshot,
    set_viewport,
    start_chromium,
    wait_until,
)
from http_helpers import (
    heic_bytes,
    held_back_worker,
    image_bytes,
    multipart,
    serve,
    tiny_settings,
    try_on_parts,
    wait_until_ready,
)
from jobs_helpers import UNetGate
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from app.inference.models import load_models
from app.inference.worker import InferenceWorker
from catvton.tiny import TINY_SIZE

BROWSER_PATHS = require_browser()  # before any fixture: one skip line for the module, or CI fails
RESULT = 'img[alt="Try-on result"]'


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = start_chromium(*BROWSER_PATHS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page_server(tiny_weights: Path) -> Iterator[tuple[str, InferenceWorker]]:
    """The app as `--demo` serves it (the banner, /health's `demo`), its worker loading the
    session's tiny weights rather than writing the same tiny weights again (6 s)."""
    # One page (one client) fills the job bound: no per-client share.
    settings = tiny_settings(tiny_weights, demo=True, max_queued_jobs=1, max_active_per_client=0)
    worker = InferenceWorker.from_settings(
        settings, partial(load_models, tiny_settings(tiny_weights))
    )
    with serve(settings, worker) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield base_url, worker


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files as a user would pick them: two photos, and a PDF where a photo belongs."""
    folder = tmp_path_factory.mktemp("photos")
    files = {
        "person": ("person.jpg", image_bytes((300, 400))),
        "garment": ("garment.png", image_bytes((240, 240), "PNG")),
        "pdf": ("scan.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"),
        "heic": ("IMG_0001.HEIC", heic_bytes(Image.open(io.BytesIO(image_bytes((300, 400)))))),
    }
    paths = {}
    for key, (name, content) in files.items():
        paths[key] = folder / name
        paths[key].write_bytes(content)
    return paths


def choose_photos(driver: WebDriver, person: Path, garment: Path, steps: str) -> None:
    """Pick both files and ask for few steps (tests stay fast; each test its own count, since a
    repeated fixed-seed request would come from the result cache)."""
    by_accessible_name(driver, "Person photo").send_keys(str(person))
    by_accessible_name(driver, "Garment photo").send_keys(str(garment))
    driver.find_element(By.CSS_SELECTOR, "details.options summary").click()
    steps_field = by_accessible_name(driver, "Steps (10 to 100)")
    steps_field.clear()
    steps_field.send_keys(steps)


@dataclass
class DemoPage:
    """The browser on the demo server's page, with the photos and the screenshot folder."""

    driver: WebDriver
    base_url: str
    worker: InferenceWorker
    photos: dict[str, Path]
    screenshots: Path

    def open(self, viewport: tuple[int, int]) -> WebDriver:
        set_viewport(self.driver, viewport)
        self.driver.get(f"{self.base_url}/")
        # /health answered: the demo banner is up.
        banner = self.driver.find_element(By.ID, "banner")
        wait_until(self.driver, lambda d: "DEMO MODE" in banner.text, 30)
        return self.driver

    def choose(self, person: str, steps: str) -> None:
        choose_photos(self.driver, self.photos[person], self.photos["garment"], steps)

    def hold_unet(self, hold_at: int) -> UNetGate:
        return UNetGate(self.worker.device.models.pipeline.unet, hold_at)

    def shot(self, name: str) -> None:
        screenshot(self.driver, self.screenshots, name)


@pytest.fixture
def demo_page(
    browser: WebDriver,
    page_server: tuple[str, InferenceWorker],
    photos: dict[str, Path],
    screenshots: Path,
) -> DemoPage:
    base_url, worker = page_server
    return DemoPage(browser, base_url, worker, photos, screenshots)


@contextmanager
def gpu_held_by_api_jobs(page: DemoPage, queued: int) -> Iterator[None]:
    """Another client's job running (held in the UNet) and `queued` more of them behind it."""
    body, content_type = multipart(try_on_parts(seed="-1", num_inference_steps="10"))
    with (
        page.hold_unet(hold_at=1) as gate,
        httpx.Client(base_url=page.base_url, headers={"Content-Type": content_type}) as client,
    ):
        assert client.post("/api/try-on/jobs", content=body).status_code == 202
        assert gate.reached.wait(60)
        for _ in range(queued):
            assert client.post("/api/try-on/jobs", content=body).status_code == 202
        yield


def progress_percent(driver: WebDriver) -> int:
    bar = driver.find_element(By.CSS_SELECTOR, "[role=progressbar]")
    return int(bar.get_attribute("aria-valuenow"))


def wait_running_with_progress(driver: WebDriver, gate: UNetGate) -> None:
    """The job holds inside the UNet and the bar shows the steps done before it."""
    assert gate.reached.wait(60), "the job never reached the UNet"
    wait_until(driver, lambda d: progress_percent(d) > 0)
    assert by_accessible_name(driver, "Cancel").is_enabled()
    assert "Denoising" in driver.find_element(By.ID, "stage").text


def test_page_names_its_controls_and_shows_the_demo_banner(demo_page: DemoPage) -> None:
    browser = demo_page.open(DESKTOP)
    for name in ("Person photo", "Garment photo", "Garment type", "Try on"):
        by_accessible_name(browser, name)
    garment_type = Select(by_accessible_name(browser, "Garment type"))
    assert garment_type.first_selected_option.get_attribute("value") == "upper"  # API default
    assert browser.find_element(By.ID, "banner").get_attribute("role") == "alert"
    demo_page.shot("start-desktop")


def test_keyboard_reaches_every_control_in_order(demo_page: DemoPage) -> None:
    browser = demo_page.open(PHONE)
    focused = []
    for _ in range(6):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        focused.append(browser.switch_to.active_element.accessible_name)
    expected = ["Skip to the form", "Person photo", "Garment photo", "Garment type", "Options"]
    assert focused == [*expected, "Try on"]
    demo_page.shot("keyboard-focus-phone")
    # Enter on "Try on" without photos: the page says which one is missing and focuses it.
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert "Choose a person photo first" in alert_texts(browser)
    assert browser.switch_to.active_element.accessible_name == "Person photo"


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_full_try_on_through_the_page(demo_page: DemoPage, viewport: tuple[int, int]) -> None:
    label = "phone" if viewport == PHONE else "desktop"
    steps = "10" if viewport == PHONE else "11"
    browser = demo_page.open(viewport)
    demo_page.choose("person", steps)
    wait_until(browser, lambda d: image_loaded(d, "#person-preview"))
    wait_until(browser, lambda d: image_loaded(d, "#garment-preview"))
    demo_page.shot(f"photos-chosen-{label}")

    with demo_page.hold_unet(hold_at=3) as gate:
        by_accessible_name(browser, "Try on").click()
        wait_running_with_progress(browser, gate)
        demo_page.shot(f"progress-{label}")
    wait_until(browser, lambda d: image_loaded(d, RESULT))

    result_size = browser.execute_script(
        "const i = document.querySelector(arguments[0]); return [i.naturalWidth, i.naturalHeight];",
        RESULT,
    )
    assert tuple(result_size) == TINY_SIZE  # the server's image, at the working size
    assert not browser.find_element(By.ID, "progress-area").is_displayed()  # ended
    details = browser.find_element(By.ID, "details").text
    assert "Seed\n42" in details and "in total" in details, details
    download = by_accessible_name(browser, "Download")
    assert download.get_attribute("href").startswith("blob:")
    assert download.get_attribute("download") == "try-on-seed-42.png"
    by_accessible_name(browser, "Show mask").click()
    wait_until(browser, lambda d: image_loaded(d, "#mask-image"))
    assert not by_accessible_name(browser, "Try on").get_attribute("disabled")
    demo_page.shot(f"result-{label}")

    # A second try-on with a random seed: the first result moves to "Earlier results".
    browser.find_element(By.ID, "random-seed").click()
    by_accessible_name(browser, "Try on").click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history-list li")) == 1)
    wait_until(browser, lambda d: image_loaded(d, "#history-list img"))
    wait_until(browser, lambda d: image_loaded(d, RESULT))
    history = browser.find_element(By.ID, "history")
    assert f"{steps} steps, seed 42" in history.text, history.text
    browser.execute_script("arguments[0].scrollIntoView()", history)
    demo_page.shot(f"history-{label}")

    # The first request again: answered from the result cache, and the page says so.
    browser.find_element(By.ID, "random-seed").click()
    by_accessible_name(browser, "Try on").click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history-list li")) == 2)
    wait_until(browser, lambda d: "From cache\nyes" in d.find_element(By.ID, "details").text)


PREVIEW = 'img[alt="Try-on preview"]'


@pytest.mark.parametrize("viewport", [(390, 844), DESKTOP], ids=["phone", "desktop"])
def test_the_preview_fills_the_result_area_until_the_result_replaces_it(
    demo_page: DemoPage, viewport: tuple[int, int]
) -> None:
    label = "phone" if viewport != DESKTOP else "desktop"
    browser = demo_page.open(viewport)
    demo_page.choose("person", "12" if label == "phone" else "13")  # previews at 5, 10 and last
    with demo_page.hold_unet(hold_at=7) as gate:  # held in step 7: the step-5 preview exists
        by_accessible_name(browser, "Try on").click()
        wait_running_with_progress(browser, gate)
        wait_until(browser, lambda d: image_loaded(d, PREVIEW))
        caption = browser.find_element(By.ID, "preview-caption").text
        assert "step 5" in caption, caption
        assert not browser.find_element(By.ID, "result-view").is_displayed()
        assert not browser.find_element(By.ID, "result-empty").is_displayed()
        browser.execute_script("document.getElementById('result').scrollIntoView()")
        demo_page.shot(f"preview-{label}")
    wait_until(browser, lambda d: image_loaded(d, RESULT))
    assert not browser.find_elements(By.CSS_SELECTOR, f"{PREVIEW}[src]")  # the result replaced it
    assert not browser.find_element(By.ID, "preview-area").is_displayed()
    demo_page.shot(f"preview-replaced-{label}")


def test_cancel_stops_the_running_job(demo_page: DemoPage) -> None:
    browser = demo_page.open(DESKTOP)
    demo_page.choose("person", "50")
    with demo_page.hold_unet(hold_at=3) as gate:
        by_accessible_name(browser, "Try on").click()
        wait_running_with_progress(browser, gate)
        by_accessible_name(browser, "Cancel").click()
        wait_until(browser, lambda d: "Canceling" in d.find_element(By.ID, "stage").text)
    # Released: the pipeline stops at its next step and the job ends "canceled".
    wait_until(browser, lambda d: "cancel" in alert_texts(d).lower())
    assert not browser.find_element(By.ID, "progress-area").is_displayed()
    assert not browser.find_element(By.ID, "result-view").is_displayed()
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    assert by_accessible_name(browser, "Try on").is_enabled()
    demo_page.shot("canceled-desktop")


def test_unsupported_file_is_named_and_focused(demo_page: DemoPage) -> None:
    browser = demo_page.open(PHONE)
    demo_page.choose("pdf", "10")
    by_accessible_name(browser, "Try on").click()
    wait_until(browser, lambda d: "person_image" in alert_texts(d))
    person_input = by_accessible_name(browser, "Person photo")
    assert person_input.get_attribute("aria-invalid") == "true"
    assert browser.switch_to.active_element == person_input
    assert by_accessible_name(browser, "Garment photo").get_attribute("aria-invalid") is None
    demo_page.shot("unsupported-file-phone")


def test_heic_photo_from_an_iphone(demo_page: DemoPage) -> None:
    """Chromium cannot draw HEIC: the page says the server reads it, and the server does."""
    browser = demo_page.open(PHONE)
    demo_page.choose("heic", "15")
    hint = browser.find_element(By.ID, "person-hint")
    wait_until(browser, lambda d: image_loaded(d, "#person-preview") or "HEIC" in hint.text)
    drawn = image_loaded(browser, "#person-preview")
    by_accessible_name(browser, "Try on").click()
    wait_until(browser, lambda d: image_loaded(d, RESULT))
    # Without a drawable "before", the comparison gives way to the whole result.
    assert browser.find_element(By.ID, "compare-field").is_displayed() == drawn
    demo_page.shot("heic-phone")


def test_gpu_busy_is_retried_after_retry_after(demo_page: DemoPage) -> None:
    browser = demo_page.open(DESKTOP)
    demo_page.choose("person", "12")
    with gpu_held_by_api_jobs(demo_page, queued=1):  # the demo server's --max-queued-jobs
        by_accessible_name(browser, "Try on").click()
        wait_until(browser, lambda d: "GPU is busy" in alert_texts(d))
        assert "Trying again in" in alert_texts(browser)
        demo_page.shot("gpu-busy-desktop")
    # Released: both jobs finish, and the page's own retry is taken and runs.
    wait_until(browser, lambda d: image_loaded(d, RESULT), 120)
    assert "GPU is busy" not in alert_texts(browser)


def test_queue_position_then_polling_when_the_events_stream_fails(demo_page: DemoPage) -> None:
    browser = demo_page.open(DESKTOP)
    demo_page.choose("person", "14")
    # The browser itself refuses the events URL: the page must fall back to polling the job.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/events"]})
    try:
        with gpu_held_by_api_jobs(demo_page, queued=0):
            by_accessible_name(browser, "Try on").click()
            stage = browser.find_element(By.ID, "stage")
            wait_until(browser, lambda d: "Waiting in the queue: next in line" in stage.text)
            demo_page.shot("queued-desktop")
        wait_until(browser, lambda d: image_loaded(d, RESULT), 120)
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        browser.execute_cdp_cmd("Network.disable", {})


def test_banners_say_loading_then_why_the_load_failed(
    browser: WebDriver,
    tmp_path: Path,
    photos: dict[str, Path],
    screenshots: Path,
) -> None:
    settings = tiny_settings(tmp_path)  # an empty weights folder: the load fails, naming files
    released = threading.Event()
    with serve(settings, held_back_worker(settings, released)) as base_url:
        set_viewport(browser, PHONE)
        browser.get(f"{base_url}/")
        banner = browser.find_element(By.ID, "banner")
        wait_until(browser, lambda d: "Models are still loading" in banner.text, 30)
        screenshot(browser, screenshots, "models-loading-phone")
        released.set()
        wait_until(browser, lambda d: "The models failed to load" in banner.text, 30)
        assert "python -m catvton download" in banner.text, banner.text  # the reason and the fix
        choose_photos(browser, photos["person"], photos["garment"], "10")
        by_accessible_name(browser, "Try on").click()
        wait_until(browser, lambda d: "Model loading failed" in alert_texts(d))
        screenshot(browser, screenshots, "load-failed-phone")


def test_key_prompt_when_the_server_answers_401(
    browser: WebDriver,
    tiny_weights: Path,
    tmp_path: Path,
    photos: dict[str, Path],
    screenshots: Path,
) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("page-user page-test-key-0123456789\n")
    with serve(tiny_settings(tiny_weights, api_keys_file=keys_file)) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        set_viewport(browser, PHONE)
        browser.get(f"{base_url}/")  # the page itself is open without a key
        assert not browser.find_element(By.ID, "key-form").is_displayed()
        choose_photos(browser, photos["person"], photos["garment"], "13")
        by_accessible_name(browser, "Try on").click()
        wait_until(browser, lambda d: "An API key is required" in alert_texts(d))
        key_field = by_accessible_name(browser, "API key")
        assert browser.switch_to.active_element == key_field
        screenshot(browser, screenshots, "key-prompt-phone")

        key_field.send_keys("page-test-key-0123456789\n")  # Enter saves it and tries again
        wait_until(browser, lambda d: image_loaded(d, RESULT))
        stored = browser.execute_script("return localStorage.getItem('catvton.apiKey')")
        assert stored == "page-test-key-0123456789"
        by_accessible_name(browser, "Show mask").click()  # the mask is fetched with the key too
        wait_until(browser, lambda d: image_loaded(d, "#mask-image"))
        screenshot(browser, screenshots, "key-accepted-phone")


def test_changing_only_the_garment_sends_the_stored_person(demo_page: DemoPage) -> None:
    """After a try-on the person photo stays stored: the next submission with another garment
    sends person_image_id, never the person file again (the page's own requests, logged)."""
    browser = demo_page.open(DESKTOP)
    demo_page.choose("person", "12")
    browser.execute_script(
        """window.sentForms = [];
        const original = window.fetch;
        window.fetch = (url, options = {}) => {
          if (options.body instanceof FormData) {
            window.sentForms.push([String(url), [...options.body.keys()]]);
          }
          return original(url, options);
        };"""
    )
    by_accessible_name(browser, "Try on").click()
    wait_until(browser, lambda d: image_loaded(d, RESULT))
    by_accessible_name(browser, "Garment photo").send_keys(str(demo_page.photos["person"]))
    by_accessible_name(browser, "Try on").click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history-list li")) == 1)
    sent = browser.execute_script("return window.sentForms;")
    stores = [keys for url, keys in sent if url.endswith("/api/try-on/images")]
    jobs = [keys for url, keys in sent if url.endswith("/api/try-on/jobs")]
    assert stores == [["image"]], sent  # the person, uploaded once
    assert len(jobs) == 2 and all("person_image" not in keys for keys in jobs), sent
    assert all("person_image_id" in keys and "cloth_image" in keys for keys in jobs), sent

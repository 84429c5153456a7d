"""Helpers for the browser tests: headless Chromium through chromedriver, screenshots, waits.

Debian's `chromium` and `chromium-driver` are used as installed (no download). Outside CI a missing
browser skips the browser tests with one line saying how to install it; in CI (`CI=true`) it fails,
so a CI image without the browser never passes by skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

PHONE = (375, 812)
DESKTOP = (1280, 800)
SCREENSHOTS_KEY = pytest.StashKey[Path]()
MISSING_BROWSER = (
    "browser tests need chromium and chromedriver on PATH "
    "(Debian: apt-get install chromium chromium-driver)"
)
# Elements that may carry one of the page's fixed accessible names (app/static/index.html).
NAMED_CONTROLS = "input, select, button, a, img, [role]"

T = TypeVar("T")


def browser_paths() -> tuple[str, str] | None:
    """(browser binary, chromedriver) found on PATH, or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def require_browser() -> tuple[str, str]:
    """The browser's paths. When the browser is missing, outside CI this skips with one line saying
    how to install it, and in CI it fails. Called at a test module's import it skips (or fails to
    collect) the whole module; called from a fixture, only the tests that use that fixture."""
    paths = browser_paths()
    if paths is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {MISSING_BROWSER}", pytrace=False)
        pytest.skip(MISSING_BROWSER, allow_module_level=True)
    return paths


def start_chromium(
    browser: str,
    chromedriver: str,
    extra_arguments: Iterable[str] = (),
    capabilities: Mapping[str, object] | None = None,
) -> webdriver.Chrome:
    """Headless Chromium with the paths given (Selenium Manager never downloads anything), plus
    `extra_arguments` (Chromium switches) and `capabilities` (e.g. `goog:loggingPrefs`)."""
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--lang=en-US",
        *extra_arguments,
    ):
        options.add_argument(argument)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


def set_viewport(driver: WebDriver, size: tuple[int, int]) -> None:
    """The page's viewport exactly (a window size would include the browser's own frame)."""
    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def screenshot(driver: WebDriver, directory: Path, name: str) -> Path:
    """Save the viewport as `directory/name.png` (a name per state, so a rerun overwrites)."""
    path = directory / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    return path


# A cheap first pass in the page (each computed name is a round trip to the browser): the
# controls whose label, text, alt or aria-label mentions the name at all.
_CANDIDATES_SCRIPT = """
const [selector, name] = arguments;
const mentions = (element) => [
  element.innerText, element.alt, element.getAttribute("aria-label"),
  ...Array.from(element.labels || [], (label) => label.innerText),
].some((text) => text && text.includes(name));
return Array.from(document.querySelectorAll(selector)).filter(mentions);
"""


def by_accessible_name(driver: WebDriver, name: str) -> WebElement:
    """The one displayed control whose computed accessible name is `name` (as a screen reader
    would find it); fails when there is none or more than one."""
    candidates = driver.execute_script(_CANDIDATES_SCRIPT, NAMED_CONTROLS, name)
    matches = [
        element
        for element in candidates
        if element.is_displayed() and element.accessible_name == name
    ]
    assert len(matches) == 1, f"{len(matches)} displayed controls named {name!r}"
    return matches[0]


def wait_until(driver: WebDriver, condition: Callable[[WebDriver], T], timeout: float = 60) -> T:
    """The first truthy value of `condition`; on timeout, fail with the page's messages."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        alerts = [element.text for element in driver.find_elements(By.CSS_SELECTOR, "[role=alert]")]
        stage = driver.find_element(By.ID, "stage").text
        raise AssertionError(f"timed out; alerts: {alerts}, stage: {stage!r}") from None


def alert_texts(driver: WebDriver) -> str:
    """Every role=alert region's visible text, one per line."""
    return "\n".join(
        element.text for element in driver.find_elements(By.CSS_SELECTOR, "[role=alert]")
    )


def image_loaded(driver: WebDriver, selector: str) -> bool:
    """True when the image matching `selector` is visible and fully decoded."""
    return bool(
        driver.execute_script(
            "const image = document.querySelector(arguments[0]);"
            "return !!image && image.complete && image.naturalWidth > 0"
            " && image.getClientRects().length > 0;",
            selector,
        )
    )

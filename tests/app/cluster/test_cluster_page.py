"""The try-on page served by the cluster: the same page, its job streamed through Ray's proxy from
a try-on replica, in a real headless Chromium (the page's own tests run on the single process)."""

from __future__ import annotations

from pathlib import Path

from browser_helpers import (
    PHONE,
    by_accessible_name,
    image_loaded,
    screenshot,
    set_viewport,
    wait_until,
)
from cluster_helpers import Cluster
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from test_page_browser import (  # noqa: F401  (fixtures: one browser, photos)
    RESULT,
    browser,
    choose_photos,
    photos,
)

from catvton.tiny import TINY_SIZE


def test_a_try_on_through_the_page_on_the_cluster(
    cluster: Cluster,
    browser: WebDriver,  # noqa: F811  (the imported fixtures, by name)
    photos: dict[str, Path],  # noqa: F811
    screenshots: Path,
) -> None:
    set_viewport(browser, PHONE)
    browser.get(f"{cluster.url}/")
    banner = browser.find_element(By.ID, "banner")
    wait_until(browser, lambda d: "DEMO MODE" in banner.text, 30)  # /health, through the proxy
    choose_photos(browser, photos["person"], photos["garment"], "12")
    by_accessible_name(browser, "Try on").click()
    wait_until(browser, lambda d: image_loaded(d, RESULT), 120)
    size = browser.execute_script(
        "const i = document.querySelector(arguments[0]); return [i.naturalWidth, i.naturalHeight];",
        RESULT,
    )
    assert tuple(size) == TINY_SIZE  # the replica's image (the test cluster runs at 96 x 128)
    assert "Seed\n42" in browser.find_element(By.ID, "details").text
    screenshot(browser, screenshots, "cluster-result-phone")

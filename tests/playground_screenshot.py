"""Write the README's picture of the playground (make screenshot): the MLP example in headless Chromium."""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright
from test_browser import launch, settled

from indexgrad.serve import running


def main(out: str) -> None:
    with running() as url, sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
        page.goto(url + "/")
        settled(page)
        page.click("#examples button[data-name=mlp]")
        settled(page)
        page.screenshot(path=out)  # the first screen, as a visitor sees it
        browser.close()
    print(f"wrote {out} ({Path(out).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/playground.png")

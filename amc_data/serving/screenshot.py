"""Re-make the docs' screenshot of the search page: `python -m amc_data.serving.screenshot
[OUT.png]` (default docs/images/serve.png).

It makes the sample world (`sample.make_sample`: a synthetic folder with pictures, AMC and the
visual baseline), starts `amc-data serve` on it as a process, opens the page for a test query
in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium) and saves
what the browser shows. The browser test drives the page with the same `chrome`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingDependencyError

CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = "chromedriver"
WINDOW = (1400, 1000)
READY_SECONDS = 30.0


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) found on PATH, or None when either is missing."""
    browser = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver = shutil.which(CHROMEDRIVER)
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def chrome(window: tuple[int, int] = WINDOW) -> Iterator[Any]:
    """A headless Chromium driven by Selenium (Debian's chromium and chromedriver)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise MissingDependencyError(
            f"Selenium drives the browser ({exc}): pip install selenium."
        ) from exc
    paths = browser_paths()
    if paths is None:
        raise MissingDependencyError(
            "Chromium and its driver are needed: apt-get install chromium chromium-driver."
        )
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    driver = webdriver.Chrome(options=options, service=Service(paths[1]))
    try:
        yield driver
    finally:
        driver.quit()


def wait_ready(driver: Any, seconds: float = READY_SECONDS) -> None:
    """Wait until the page has drawn its answer (or its error) to the current query."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(
        lambda d: d.execute_script("return document.body.dataset.state") == "ready"
    )
    # The pictures too, so that a screenshot shows them.
    WebDriverWait(driver, seconds).until(
        lambda d: d.execute_script(
            "return [...document.images].every((i) => i.complete && i.naturalWidth > 0)"
        )
    )


@contextlib.contextmanager
def serving(*args: str | Path) -> Iterator[str]:
    """`amc-data serve ARGS --port 0` as a process; yields its address, then stops it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "amc_data", "serve", *map(str, args), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        if " at http://" not in first:
            raise InputError(f"amc-data serve did not start: {first!r}")
        yield first.split(" at ", 1)[1].split()[0]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def screenshot(out: Path, work: Path) -> Path:
    """The page for the sample's first visual-intent test query, saved as a PNG at `out`."""
    from ..prepare.format import load_prepared
    from .sample import TRAIN_SHOWN, make_sample

    world = make_sample(work, images=1000, queries=300, baseline="visual", training=TRAIN_SHOWN)
    queries = load_prepared(world.data).split_queries("test")
    query = str(queries.loc[queries["intent"] == "visual", "query"].iloc[0])
    args = (world.runs["amc"], world.runs["visual"], "--data", world.data)
    with serving(*args, "--images", world.pictures, "--top", "4") as url, chrome() as driver:
        driver.get(f"{url}?{urllib.parse.urlencode({'q': query})}")
        wait_ready(driver)
        time.sleep(0.2)  # the last paint
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    out = Path(args[0] if args else "docs/images/serve.png")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="amc-serve-shot-") as work:
        print(f"wrote {screenshot(out, Path(work))}")


if __name__ == "__main__":
    main()

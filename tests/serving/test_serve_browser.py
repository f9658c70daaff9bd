"""The search page in a real browser (headless Chromium, driven by Selenium): a query typed, the
results drawn with their heat maps and keywords exactly as the API and `search --json` give
them, a shareable `?q=` link, the large view; a screenshot saved."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import COMMAND, Served, sample_queries, start_serve

from amc_data.serving.sample import SampleWorld
from amc_data.serving.screenshot import browser_paths, chrome, wait_ready

pytest.importorskip("selenium")
if browser_paths() is None:
    pytest.skip(
        "Chromium or chromedriver is absent (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

AMC = "section.run[data-run='0']"  # the first run's column
# Each drawn cell's opacity, read back from the canvas at the cell's centre.
CELL_ALPHAS = """
const canvas = arguments[0];
const columns = arguments[1];
const cell = canvas.width / columns;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
const weights = JSON.parse(canvas.dataset.weights);
return weights.map((_, r) => {
  const x = Math.floor((r % columns + 0.5) * cell);
  const y = Math.floor((Math.floor(r / columns) + 0.5) * cell);
  return data[4 * (y * canvas.width + x) + 3];
});
"""


def _drawn_hits(driver: Any, run: int) -> list[dict[str, Any]]:
    """What the page shows for each result of `run`: ids, scores, cells, keywords, geometry."""
    hits = []
    for card in driver.find_elements(By.CSS_SELECTOR, f"section.run[data-run='{run}'] .hit"):
        canvases = card.find_elements(By.CSS_SELECTOR, "canvas.heat")
        shown: dict[str, Any] = {
            "img_id": int(card.get_attribute("data-img-id")),
            "rank": int(card.get_attribute("data-rank")),
            "score": float(card.get_attribute("data-score")),
            "keywords": [
                {
                    "word": k.get_attribute("data-word"),
                    "weight": float(k.get_attribute("data-weight")),
                }
                for k in card.find_elements(By.CSS_SELECTOR, ".keywords span")
            ],
            "heat": None,
        }
        if canvases:
            heat = canvases[0]
            image = card.find_element(By.TAG_NAME, "img")
            shown["heat"] = {
                "weights": json.loads(heat.get_attribute("data-weights")),
                "alphas": driver.execute_script(CELL_ALPHAS, heat, 7),
                "box": heat.rect,
                "image": image.rect,
            }
        hits.append(shown)
    return hits


def _keyword(span: Any) -> dict[str, Any]:
    return {
        "word": span.get_attribute("data-word"),
        "weight": float(span.get_attribute("data-weight")),
    }


def _search_json(sample: SampleWorld, query: str, top: int) -> list[dict[str, Any]]:
    done = subprocess.run(
        [
            *COMMAND,
            "search",
            str(sample.runs["amc"]),
            query,
            "--data",
            str(sample.data),
            "--top",
            str(top),
            "--json",
            "-q",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout)


def test_a_typed_query_is_drawn_as_the_api_and_search_give_it(
    served: Served, sample: SampleWorld, tmp_path: Path
) -> None:
    query = sample_queries(sample.data)[0]
    typed = f"{query} the qqqzzz"
    status, api = served.api("/api/search", q=typed)
    assert status == 200
    expected = _search_json(sample, typed, top=len(api["results"]))
    with chrome() as driver:
        driver.get(served.url)
        wait_ready(driver)
        box = driver.find_element(By.ID, "q")
        box.send_keys(typed, Keys.ENTER)
        wait_ready(driver)
        assert driver.find_elements(By.CSS_SELECTOR, ".hit")
        # The address now names the query: a link to share.
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query) == {
            "q": [typed]
        }
        drawn = _drawn_hits(driver, 0)
        words = {
            kind: [
                s.text
                for s in driver.find_elements(
                    By.CSS_SELECTOR, f"section.run[data-run='0'] .word-{kind}"
                )
            ]
            for kind in ("known", "unknown", "ignored")
        }
        driver.save_screenshot(str(tmp_path / "serve.png"))
        baseline = _drawn_hits(driver, 1)
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    assert [(h["rank"], h["img_id"], h["score"]) for h in drawn] == [
        (h["rank"], h["img_id"], h["score"]) for h in expected
    ]
    for shown, hit in zip(drawn, api["results"], strict=True):
        assert shown["keywords"] == hit["keyword_weights"]
        assert shown["heat"]["weights"] == hit["region_weights"]
        weights, alphas = hit["region_weights"], shown["heat"]["alphas"]
        # Each cell's opacity is its weight's share of the strongest (0.8 at the strongest).
        assert alphas == pytest.approx([204 * w / max(weights) for w in weights], abs=1.5)
        # The heat map lies on the part of the picture the features saw.
        crop, image, box = hit["picture"]["crop"], shown["heat"]["image"], shown["heat"]["box"]
        assert box["x"] - image["x"] == pytest.approx(crop["x"] * image["width"], abs=1.5)
        assert box["y"] - image["y"] == pytest.approx(crop["y"] * image["height"], abs=1.5)
        assert box["width"] == pytest.approx(crop["w"] * image["width"], abs=1.5)
    # The three strongest keywords of `search --json` are among those highlighted, as strong.
    for shown, hit in zip(drawn, expected, strict=True):
        strongest = sorted(shown["keywords"], key=lambda k: -k["weight"])[: len(hit["keywords"])]
        assert [k["word"] for k in strongest] == [k["word"] for k in hit["keywords"]]
    assert words["unknown"] == ["qqqzzz"] and "the" in words["ignored"]
    assert words["known"] == api["words"]
    assert baseline and all(h["heat"] is None and not h["keywords"] for h in baseline)


def test_a_shared_link_opens_the_results_and_a_click_shows_one_large(
    served: Served, sample: SampleWorld
) -> None:
    query = sample_queries(sample.data)[1]
    status, api = served.api("/api/search", q=query, page=2)
    assert status == 200
    with chrome() as driver:
        driver.get(f"{served.url}?{urllib.parse.urlencode({'q': query, 'page': 2})}")
        wait_ready(driver)
        assert driver.find_element(By.ID, "q").get_attribute("value") == query
        drawn = _drawn_hits(driver, 0)
        assert [h["img_id"] for h in drawn] == [h["img_id"] for h in api["results"]]
        assert drawn[0]["rank"] == api["top"] + 1
        driver.find_elements(By.CSS_SELECTOR, "section.run[data-run='0'] .hit")[0].click()
        large = driver.find_element(By.ID, "large")
        assert large.is_displayed()
        picture = large.find_element(By.TAG_NAME, "img")
        assert picture.get_attribute("src").endswith(f"/images/{drawn[0]['img_id']}/large")
        assert large.find_elements(By.CSS_SELECTOR, "canvas.heat")
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        assert not large.is_displayed()


@pytest.fixture(scope="module")
def eight_regions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """synth's own layout: 8 regions (no grid), and no pictures."""
    import amc_data
    from amc_data.ranking.training import TrainConfig, train
    from amc_data.serving.sample import TRAIN_FAST

    root = tmp_path_factory.mktemp("eight")
    amc_data.synth(root / "data", seed=1, images=240, queries=90)
    train(root / "data", root / "amc", TrainConfig(**TRAIN_FAST))
    return root / "data", root / "amc"


def test_regions_that_are_no_grid_are_drawn_as_a_strip(eight_regions: tuple[Path, Path]) -> None:
    data, run = eight_regions
    query = sample_queries(data)[0]
    served = start_serve(run, "--data", data)
    try:
        assert served.api("/api/info")[1]["grid"] is None
        status, api = served.api("/api/search", q=query)
        assert status == 200
        with chrome() as driver:
            driver.get(f"{served.url}?{urllib.parse.urlencode({'q': query})}")
            wait_ready(driver)
            cards = driver.find_elements(By.CSS_SELECTOR, f"{AMC} .hit")
            assert len(cards) == len(api["results"]) == 10 and not driver.find_elements(
                By.TAG_NAME, "img"
            )
            for card, hit in zip(cards, api["results"], strict=True):
                [strip] = card.find_elements(By.CSS_SELECTOR, "canvas.strip")
                weights = json.loads(strip.get_attribute("data-weights"))
                assert weights == hit["region_weights"] and len(weights) == 8
                alphas = driver.execute_script(CELL_ALPHAS, strip, 8)
                assert alphas == pytest.approx([204 * w / max(weights) for w in weights], abs=1.5)
    finally:
        served.stop()

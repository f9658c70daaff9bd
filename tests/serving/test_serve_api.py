"""The search page's JSON API, asked over a real loopback connection: the same ranking and fields
as `search --json` (the `Searcher`), every attention weight, refusals with a message (huge
queries, bad parameters), and many queries at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from serve_helpers import Served, sample_queries

from amc_data import load_prepared
from amc_data.ranking.search import Searcher
from amc_data.ranking.search_config import MAX_QUERY_CHARS
from amc_data.serving.sample import SampleWorld

EXTRA_RESULT_KEYS = {"run", "page", "top", "ignored"}
EXTRA_HIT_KEYS = {"region_weights", "keyword_weights", "picture"}


def _as_search_json(body: dict[str, Any]) -> dict[str, Any]:
    """The API's answer less what it adds to `SearchResult.to_dict()`."""
    plain = {k: v for k, v in body.items() if k not in EXTRA_RESULT_KEYS}
    plain["results"] = [
        {k: v for k, v in hit.items() if k not in EXTRA_HIT_KEYS} for hit in body["results"]
    ]
    return plain


@pytest.fixture(scope="module")
def searchers(sample: SampleWorld) -> list[Searcher]:
    prepared = load_prepared(sample.data)
    return [Searcher(sample.runs[kind], prepared) for kind in ("amc", "visual")]


def test_the_api_answers_what_the_searcher_answers(
    served: Served, sample: SampleWorld, searchers: list[Searcher]
) -> None:
    known = sample_queries(sample.data)
    queries = [*known[:4], f"{known[0]} the qqqzzz"]
    for run, searcher in enumerate(searchers):
        for text in queries:
            status, body = served.api("/api/search", q=text, top=5, run=run)
            assert status == 200, body
            expected = searcher.search(text, top=5)
            assert _as_search_json(body) == expected.to_dict()
            assert [hit["region_weights"] for hit in body["results"]] == [
                hit.to_dict(every_weight=True)["region_weights"] for hit in expected.hits
            ]
            assert [hit["keyword_weights"] for hit in body["results"]] == [
                hit.to_dict(every_weight=True)["keyword_weights"] for hit in expected.hits
            ]
    status, body = served.api("/api/search", q=queries[-1], top=5)
    assert body["unknown"] == ["qqqzzz"] and body["ignored"] == ["the"]


def test_a_later_page_is_the_next_slice_of_the_same_ranking(
    served: Served, sample: SampleWorld, searchers: list[Searcher]
) -> None:
    text = sample_queries(sample.data)[1]
    status, body = served.api("/api/search", q=text, top=4, page=3)
    assert status == 200, body
    expected = searchers[0].search(text, top=12).to_dict()["results"][8:12]
    assert [{k: hit[k] for k in expected[0]} for hit in body["results"]] == expected
    assert [hit["rank"] for hit in body["results"]] == [9, 10, 11, 12]


def test_every_weight_covers_the_grid_and_the_images_keywords(
    served: Served, sample: SampleWorld
) -> None:
    prepared = load_prepared(sample.data)
    status, body = served.api("/api/search", q=sample_queries(sample.data)[0], top=3)
    assert status == 200
    for hit in body["results"]:
        weights = np.array(hit["region_weights"])
        assert weights.shape == (49,)
        assert weights.sum() == pytest.approx(1.0, abs=1e-4)  # attention over the regions
        strongest = sorted(range(49), key=lambda r: -weights[r])[:3]
        assert [r["region"] for r in hit["regions"]] == strongest
        assert [(r["row"], r["col"]) for r in hit["regions"]] == [divmod(r, 7) for r in strongest]
        row = prepared.rows(np.array([hit["img_id"]]))[0]
        own = {prepared.vocabulary[i] for i in prepared.keywords[row].indices}
        assert {k["word"] for k in hit["keyword_weights"]} == own
        crop = hit["picture"]["crop"]
        width, height = hit["picture"]["width"], hit["picture"]["height"]
        # The features' square, centred: inset on the longer side only.
        assert crop["w"] * width == pytest.approx(crop["h"] * height, abs=2)
        assert crop["x"] == pytest.approx((1 - crop["w"]) / 2, abs=0.01)
    status, visual = served.api("/api/search", q=sample_queries(sample.data)[0], top=3, run=1)
    assert visual["results"][0]["region_weights"] is None  # the baseline has no attention


def test_info_describes_the_runs_and_the_grid(served: Served) -> None:
    status, info = served.api("/api/info")
    assert status == 200
    assert info["runs"] == ["amc", "visual"]
    assert info["grid"] == 7 and info["regions"] == 49
    assert info["geometry"] == {"image_size": 224, "resize": 256, "grid": 7}
    assert info["max_query_chars"] == MAX_QUERY_CHARS and info["pictures"] is True


@pytest.mark.parametrize(
    "text",
    ["x" * (1 << 20), " ".join(["jaguar"] * 10_000), "a" * (MAX_QUERY_CHARS + 1)],
    ids=["1 MB", "10,000 words", "one character too many"],
)
def test_huge_queries_are_refused_with_a_message(served: Served, text: str) -> None:
    status, body = served.api("/api/search", q=text)
    assert status == 413
    assert f"at most {MAX_QUERY_CHARS:,}" in body["error"]
    assert f"{len(text):,} characters" in body["error"]
    assert served.api("/api/info")[0] == 200  # and the server goes on


def test_a_query_of_the_longest_length_is_taken(served: Served, sample: SampleWorld) -> None:
    text = sample_queries(sample.data)[0]
    text = (text + " " * MAX_QUERY_CHARS)[:MAX_QUERY_CHARS]
    status, body = served.api("/api/search", q=text, top=2)
    assert status == 200, body


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"q": "qqqzzz wwwyyy"}, "query vocabulary"),
        ({"q": "the of"}, "no word the analyzer keeps"),
        ({"q": ""}, "no word the analyzer keeps"),
        ({"q": "jaguar", "top": "ten"}, "top must be a whole number"),
        ({"q": "jaguar", "top": "0"}, "top must be from 1"),
        ({"q": "jaguar", "page": "-1"}, "page must be from 1"),
        ({"q": "jaguar", "top": "100", "page": "11"}, "top x page may be at most"),
        ({"q": "jaguar", "run": "2"}, "run must be from 0 to 1"),
    ],
)
def test_bad_requests_are_refused_with_a_message(
    served: Served, params: dict[str, str], says: str
) -> None:
    status, body = served.api("/api/search", **params)
    assert status == 400
    assert says in body["error"]


def test_unknown_words_are_listed_when_nothing_is_left_to_search(served: Served) -> None:
    status, body = served.api("/api/search", q="the qqqzzz wwwyyy")
    assert status == 400
    assert body["unknown"] == ["qqqzzz", "wwwyyy"] and body["ignored"] == ["the"]


def test_known_words_past_the_32nd_are_listed_as_ignored(
    served: Served, sample: SampleWorld
) -> None:
    vocabulary = load_prepared(sample.data).query_vocabulary
    assert len(vocabulary) >= 36
    words = vocabulary[:36]
    status, body = served.api("/api/search", q=" ".join([words[0], *words]), top=1)
    assert status == 200, body
    assert body["ignored"] == words[31:]  # the first word twice: 32 read, then the rest
    status, body = served.api("/api/search", q=" ".join([words[0]] * 40), top=1)
    assert body["ignored"] == []  # a word read is not ignored, however often repeated


def test_twenty_concurrent_queries_are_each_answered_correctly(
    served: Served, sample: SampleWorld
) -> None:
    queries = sample_queries(sample.data)
    asks = [(queries[i % len(queries)], i % 2) for i in range(20)]
    alone = {ask: served.api("/api/search", q=ask[0], run=ask[1], top=5)[1] for ask in set(asks)}
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(
            pool.map(lambda ask: served.api("/api/search", q=ask[0], run=ask[1], top=5), asks)
        )
    for ask, (status, body) in zip(asks, answers, strict=True):
        assert status == 200
        assert body == alone[ask]


def test_the_page_and_its_files_come_from_the_package(served: Served) -> None:
    status, headers, page = served.get("/", q="jaguar")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        assert f"/static/{name}".encode() in page
        status, headers, body = served.get(f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(kind) and body
    # Nothing from the internet: no address outside the page's own server.
    for name in ("/", "/static/app.js", "/static/style.css"):
        assert b"http://" not in served.get(name)[2] and b"https://" not in served.get(name)[2]

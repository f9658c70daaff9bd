"""The pictures: only the prepared folder's images, only from the `--images` folders, whatever
the request says; shrunk on the fly into a bounded cache; the features' crop placed where
`amc-data features` cut it."""

from __future__ import annotations

import http.client
import io
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_helpers import Served

from amc_data import load_prepared
from amc_data.featurizing.sources import CenterCrop
from amc_data.serving.pictures import Pictures, crop_box
from amc_data.serving.sample import SampleWorld


def _raw_get(served: Served, path: str) -> tuple[int, bytes]:
    """A GET of `path` exactly as written (no client-side normalising of `..`)."""
    parsed = urllib.parse.urlsplit(served.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_listed_image_is_served_shrunk(served: Served, sample: SampleWorld) -> None:
    img_id = int(load_prepared(sample.data).images["img_id"].iloc[0])
    for size, longest in (("thumb", 320), ("large", 1024)):
        status, headers, body = served.get(f"/images/{img_id}/{size}")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(body)) as image:
            original = Image.open(sample.pictures / f"sample_{img_id:06d}.png")
            assert max(image.size) <= longest
            assert image.size[0] / image.size[1] == pytest.approx(
                original.size[0] / original.size[1], abs=0.02
            )


@pytest.mark.parametrize(
    "path",
    [
        "/images/../../../../etc/passwd",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/..%2f..%2f..%2fetc%2fpasswd/thumb",
        "/images//etc/passwd/thumb",
        "/images/%2Fetc%2Fpasswd/thumb",
        "/images/sample_000001.png/thumb",
        "/images/999999999/thumb",
        "/images/-1/thumb",
        "/images/1/../../../etc/passwd",
        "/static/../serving/app.py",
        "/static/%2e%2e%2fapp.py",
        "/static/index.html/../../../pictures.py",
    ],
)
def test_path_tricks_reach_no_file(served: Served, path: str) -> None:
    status, body = _raw_get(served, path)
    assert status == 404, (path, body[:200])
    assert b"root:" not in body and b"import" not in body


def test_an_image_the_folder_does_not_list_is_not_served(
    served: Served, sample: SampleWorld
) -> None:
    listed = set(load_prepared(sample.data).images["img_id"].tolist())
    stray = max(listed) + 1
    Image.new("RGB", (8, 8)).save(sample.pictures / f"sample_{stray:06d}.png")
    status, _, _ = served.get(f"/images/{stray}/thumb")
    assert status == 404


def test_a_recorded_name_leading_outside_the_folder_is_not_followed(tmp_path: Path) -> None:
    folder, outside = tmp_path / "pictures", tmp_path / "secret"
    folder.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "s.png")
    Image.new("RGB", (8, 8)).save(folder / "ok.png")
    os.symlink(outside / "s.png", folder / "link.png")
    pictures = Pictures(
        [folder],
        {1: "../secret/s.png", 2: str(outside / "s.png"), 3: "link.png", 4: "ok.png", 5: ""}
        | {7: "a\x00b.png", 8: "loop.png"},
    )
    os.symlink(folder / "loop.png", folder / "loop.png")
    assert [pictures.path(i) for i in (1, 2, 3, 5, 6, 7, 8)] == [None] * 7
    assert pictures.path(4) == (folder / "ok.png").resolve()
    assert pictures.picture(1, 64) is None and pictures.picture(4, 64) is not None


def test_the_second_folder_is_tried_and_damaged_files_are_skipped(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    (second / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 20)).save(second / "sub" / "x.png")
    (first / "bad.jpg").write_bytes(b"not a picture")
    pictures = Pictures([first, second], {1: "sub/x.png", 2: "bad.jpg"})
    found = pictures.picture(1, 10)
    assert found is not None and (found.width, found.height) == (40, 20)
    assert pictures.picture(2, 10) is None


def test_the_cache_stays_within_its_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = {}
    for i in range(12):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)  # noise: no small JPEG
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        names[i] = f"{i}.png"
    one = Pictures([tmp_path], names).picture(0, 64)
    assert one is not None
    limit = 3 * len(one.data)
    pictures = Pictures([tmp_path], names, cache_bytes=limit)
    for i in range(12):
        assert pictures.picture(i, 64) is not None
        assert pictures.cached_bytes <= limit
    assert pictures.cached_bytes > 0
    assert not any(p.suffix == ".jpg" for p in tmp_path.iterdir())  # nothing written beside


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (500, 213), (257, 256), (224, 224)])
def test_the_crop_box_is_where_features_cuts(size: tuple[int, int]) -> None:
    """A picture whose red and green channels are its x and y: the features' crop's corners
    hold the coordinates the crop box says."""
    width, height = size
    xs = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    pixels = np.stack([xs, ys, np.zeros_like(xs)], axis=2).round().astype(np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    cut = CenterCrop(size=224, resize=256)(encoded.getvalue()).astype(float)
    box = crop_box(width, height, {"image_size": 224, "resize": 256, "grid": 7})
    # The crop's first and last pixel columns and rows, as fractions of the picture.
    assert cut[0, 0, 0] / 255 == pytest.approx(box["x"], abs=0.02)
    assert cut[0, -1, 0] / 255 == pytest.approx(box["x"] + box["w"], abs=0.02)
    assert cut[0, 0, 1] / 255 == pytest.approx(box["y"], abs=0.02)
    assert cut[-1, 0, 1] / 255 == pytest.approx(box["y"] + box["h"], abs=0.02)

"""CLIP as a backbone and as a baseline: `features --backbone open_clip:ARCH` writes the vision
tower's patch tokens and pooled embeddings; `clip-scores` ranks a prepared folder's queries by
CLIP cosine into a scores file that `eval --scores` reads. A tiny open_clip architecture,
registered here, with random weights: the whole path runs offline, and every number is checked
against open_clip's own computation for that model."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="feature extraction needs torch (the train extra)")
Image = pytest.importorskip("PIL.Image", reason="feature extraction needs Pillow (the train extra)")

ARCH = "amc-tiny-clip"
SIZE, PATCH, EMBED = 64, 16, 16  # a 4 x 4 token grid
TINY_CONFIG = {
    "embed_dim": EMBED,
    "vision_cfg": {
        "image_size": SIZE,
        "layers": 2,
        "width": 32,
        "head_width": 16,
        "patch_size": PATCH,
    },
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[types.ModuleType]:
    """open_clip, with the tiny architecture registered. Where the installed torchvision is the
    CUDA build beside a CPU torch (its compiled operators do not load, and its import stops at
    registering them), its pure-Python transforms, all open_clip uses here, are imported without
    that registration; the modules imported for this are forgotten afterwards, so other tests
    see torchvision as it is."""
    before = set(sys.modules)
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        stub = types.ModuleType("torchvision._meta_registrations")
        sys.modules["torchvision._meta_registrations"] = stub
    except ImportError:
        pass
    module = pytest.importorskip("open_clip", reason="the CLIP backbone needs the clip extra")
    config = tmp_path_factory.mktemp("clip") / f"{ARCH}.json"
    config.write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    module.add_model_config(config)
    yield module
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("torchvision", "open_clip", "timm"):
            del sys.modules[name]


def reference_model(open_clip: types.ModuleType) -> tuple[torch.nn.Module, object]:
    """The tiny model with the weights `features` draws (seed 0), and open_clip's own
    evaluation transform for it."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    return model.eval(), preprocess


@pytest.fixture(scope="module")
def world(open_clip: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic prepared folder, one picture (PNG, various sizes) per image, and its CLIP
    features extracted by the CLI."""
    from amc_data import synth

    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    synth(data, seed=1, images=240, queries=20)
    img_ids = pd.read_parquet(data / "images.parquet")["img_id"].to_numpy()
    pictures = root / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(0)
    for img_id in img_ids:
        width, height = (int(v) for v in rng.integers(40, 120, 2))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(pictures / f"image_{img_id}.png")
    features = root / "clip" / "features.npy"
    result = CliRunner().invoke(
        cli,
        [
            *("features", str(pictures), "--out", str(features)),
            *("--backbone", f"open_clip:{ARCH}", "--dtype", "float32", "--workers", "0"),
            *("--grid", str(SIZE // PATCH), "--batch-size", "64", "-q"),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"data": data, "pictures": pictures, "features": features}


def test_regions_are_the_patch_tokens_after_the_final_norm_and_projection(
    open_clip: types.ModuleType, world: dict[str, Path]
) -> None:
    features = np.load(world["features"])
    ids = np.load(world["features"].with_name("feature_ids.npy"))
    pooled = np.load(world["features"].with_name("features_pooled.npy"))
    report = json.loads(world["features"].with_suffix(".json").read_text())
    grid = SIZE // PATCH
    assert features.shape == (len(ids), grid * grid, EMBED)
    assert pooled.shape == (len(ids), EMBED)
    assert report["pooled"] == {"file": "features_pooled.npy", "shape": [len(ids), EMBED]}
    assert report["backbone"]["kind"] == "open_clip"
    assert (report["image_size"], report["resize"]) == (SIZE, SIZE)

    model, preprocess = reference_model(open_clip)
    chosen = [0, 7, len(ids) - 1]
    batch = torch.stack(
        [preprocess(Image.open(world["pictures"] / f"image_{ids[i]}.png")) for i in chosen]
    )
    with torch.no_grad():
        embedding = model.encode_image(batch)
        model.visual.output_tokens = True  # open_clip's own tokens path
        _, tokens = model.visual(batch)
        tokens = tokens @ model.visual.proj
    np.testing.assert_allclose(pooled[chosen], embedding.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(features[chosen], tokens.numpy(), atol=1e-5, rtol=1e-5)


def test_clip_scores_are_open_clips_cosines_and_eval_shows_the_row(
    open_clip: types.ModuleType, world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "clip.parquet"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            *("clip-scores", str(world["data"]), "--features", str(world["features"])),
            *("--out", str(out), "--device", "cpu", "-q"),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    scores = pd.read_parquet(out)
    queries = pd.read_parquet(world["data"] / "queries.parquet")
    judgments = pd.read_parquet(world["data"] / "judgments.parquet")
    test_queries = queries[queries["split"] == "test"]
    expected_pairs = judgments[judgments["query_id"].isin(test_queries["query_id"])]
    assert len(scores) == len(expected_pairs) > 0
    merged = scores.merge(expected_pairs, on=["query_id", "img_id"], suffixes=("", "_judged"))
    assert (merged["label"] == merged["label_judged"]).all() and len(merged) == len(scores)

    model, preprocess = reference_model(open_clip)
    tokenizer = open_clip.get_tokenizer(ARCH)
    text = dict(zip(queries["query_id"], queries["query"], strict=True))
    shown = scores.drop_duplicates("query_id").head(3)  # a few queries, all their candidates
    sample = scores[scores["query_id"].isin(shown["query_id"])]
    images = torch.stack(
        [preprocess(Image.open(world["pictures"] / f"image_{i}.png")) for i in sample["img_id"]]
    )
    with torch.no_grad():
        image_embeddings = model.encode_image(images, normalize=True)
        text_embeddings = model.encode_text(
            tokenizer([text[q] for q in sample["query_id"]]), normalize=True
        )
    expected = (image_embeddings * text_embeddings).sum(dim=1).numpy()
    np.testing.assert_allclose(sample["score"].to_numpy(), expected, atol=1e-5)

    shown_eval = runner.invoke(cli, ["eval", "--scores", str(out)])
    assert shown_eval.exit_code == 0, shown_eval.output
    row = next(line for line in shown_eval.output.splitlines() if str(out) in line)
    assert f"{scores['query_id'].nunique()}" in row.split()


def test_clip_scores_refuse_features_of_another_backbone(
    world: dict[str, Path], tmp_path: Path
) -> None:
    other = tmp_path / "features.npy"
    report = json.loads(world["features"].with_suffix(".json").read_text())
    report["backbone"] = {"kind": "torchvision", "name": "resnet50"}
    np.save(other, np.load(world["features"]))
    np.save(tmp_path / "feature_ids.npy", np.load(world["features"].with_name("feature_ids.npy")))
    other.with_suffix(".json").write_text(json.dumps(report))
    result = CliRunner().invoke(
        cli, ["clip-scores", str(world["data"]), "--features", str(other), "--out", "x.parquet"]
    )
    assert result.exit_code != 0
    assert "resnet50, not an open_clip model" in result.output

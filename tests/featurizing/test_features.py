"""`amc-data features`: grid features from a folder of images or a base64 TSV, through a small
TorchScript CNN made here (the registry's torchvision does not import with the CPU torch wheel)."""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data import (
    ConfigError,
    DownloadError,
    InputError,
    LockTimeoutError,
    MissingDependencyError,
)

torch = pytest.importorskip("torch", reason="feature extraction needs torch (the train extra)")
Image = pytest.importorskip("PIL.Image", reason="feature extraction needs Pillow (the train extra)")

from amc_data import FeatureConfig, extract_features  # noqa: E402

SIZE, GRID, DIM = 32, 2, 16


def tiny_net() -> torch.nn.Module:
    """A tiny CNN, the same every call: (B, 3, H, W) -> (B, 16, H/4, W/4)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, DIM, 3, stride=2, padding=1),
        ).eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CNN saved as TorchScript."""
    return save_script(tiny_net(), tmp_path_factory.mktemp("model") / "tiny.pt")


def save_script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still have it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
    return path


def load_script(path: Path) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


def picture(seed: int, width: int = 48, height: int = 40, mode: str = "RGB") -> Image.Image:
    """A smooth gradient with noise: compresses like a photo, differs per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * (3 + seed % 5), y * (2 + seed % 3), (x + y) * 2], axis=-1)
    pixels = (base + rng.integers(0, 40, (height, width, 3))) % 256
    return Image.fromarray(pixels.astype(np.uint8)).convert(mode)


def coco_name(number: int) -> str:
    return f"COCO_val2014_{number:012d}.jpg"


def make_folder(folder: Path, count: int) -> list[int]:
    """`count` images named like COCO's, in assorted sizes and modes; returns their numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [1000 + 7 * i for i in range(count)]
    modes = ["RGB", "L", "RGB", "CMYK"]
    for i, number in enumerate(numbers):
        picture(i, 40 + 5 * i, 36 + 3 * (i % 4), modes[i % 4]).save(folder / coco_name(number))
    return numbers


def config(model_file: Path, **overrides: object) -> FeatureConfig:
    settings = {
        "model_file": model_file,
        "grid": GRID,
        "image_size": SIZE,
        "batch_size": 2,
        "workers": 0,
    }
    return FeatureConfig(**{**settings, **overrides})  # type: ignore[arg-type]


def files(out: Path) -> tuple[bytes, bytes]:
    return out.read_bytes(), out.with_name("feature_ids.npy").read_bytes()


def reference_features(path: Path, model_file: Path, resize: int = 37) -> np.ndarray:
    """ImageNet evaluation transform and grid pooling, written out plainly: (G*G, D)."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    size = (
        (resize, int(resize * height / width))
        if width <= height
        else (int(resize * width / height), resize)
    )
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - SIZE) / 2), round((size[1] - SIZE) / 2)
    image = image.crop((left, top, left + SIZE, top + SIZE))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        fmap = load_script(model_file)((x - mean) / std)  # (1, D, h, w)
    return torch.nn.functional.adaptive_avg_pool2d(fmap, GRID).flatten(2).transpose(1, 2)[0].numpy()


# -- inputs, shapes, ids, values ---------------------------------------------------------------
def test_folder_gives_grid_features_ids_and_a_report(tmp_path, model_file, caplog):
    numbers = make_folder(tmp_path / "images", 5)
    (tmp_path / "images" / "sub").mkdir()
    picture(9, mode="RGBA").save(tmp_path / "images" / "sub" / "COCO_val2014_000000000003.png")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / "._COCO_val2014_000000000001.jpg").write_bytes(b"macOS junk")
    out = tmp_path / "prepared" / "features.npy"

    with caplog.at_level(logging.WARNING):
        result = extract_features(tmp_path / "images", out, config=config(model_file))
    assert "--ids-from dataset-json" in caplog.text  # COCO's ids are not Karpathy's imgids

    features = np.load(out, mmap_mode="r")
    ids = np.load(out.with_name("feature_ids.npy"))
    assert features.shape == (6, GRID * GRID, DIM) == result.shape
    assert features.dtype == np.float16 and ids.dtype == np.int64
    assert ids.tolist() == [*numbers, 3]  # sorted by path: COCO_... before sub/COCO_...
    assert result.complete and not result.up_to_date and not result.skipped
    expected = reference_features(tmp_path / "images" / coco_name(numbers[1]), model_file)
    np.testing.assert_allclose(features[1].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    report = json.loads((out.with_name("features.json")).read_text())
    assert report["shape"] == [6, 4, DIM] and report["ids"] == "feature_ids.npy"
    assert report["backbone"]["kind"] == "torchscript" and report["grid"] == GRID
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.startswith(".")) == [
        "feature_ids.npy",
        "features.json",
        "features.npy",
    ]


def test_other_output_names_put_ids_beside_or_where_asked(tmp_path, model_file):
    make_folder(tmp_path / "images", 2)
    extract_features(tmp_path / "images", tmp_path / "coco.npy", config=config(model_file))
    assert np.load(tmp_path / "coco_ids.npy").shape == (2,)
    extract_features(
        tmp_path / "images",
        tmp_path / "b.npy",
        ids=tmp_path / "ids" / "rows.npy",
        config=config(model_file),
    )
    assert np.load(tmp_path / "ids" / "rows.npy").shape == (2,)
    with pytest.raises(InputError, match=r"must end in \.npy"):
        extract_features(tmp_path / "images", tmp_path / "features.bin", config=config(model_file))


def write_tsv(
    path: Path, folder: Path, keys: list[str], extra: dict[int, bytes] | None = None
) -> None:
    """Clickture's layout: `key<TAB>base64 of the image file`, one image a line."""
    lines = []
    for key, image in zip(keys, sorted(folder.iterdir()), strict=True):
        lines.append(key.encode() + b"\t" + base64.b64encode(image.read_bytes()) + b"\n")
    for position, line in (extra or {}).items():
        lines.insert(position, line)
    path.write_bytes(b"".join(lines))


def test_tsv_of_base64_images_gives_the_folder_features(tmp_path, model_file):
    numbers = make_folder(tmp_path / "images", 5)
    from_folder = tmp_path / "folder" / "features.npy"
    extract_features(tmp_path / "images", from_folder, config=config(model_file))

    tsv = tmp_path / "images.tsv"
    write_tsv(tsv, tmp_path / "images", [str(n) for n in numbers])
    from_tsv = tmp_path / "tsv" / "features.npy"
    extract_features(tsv, from_tsv, config=config(model_file))
    assert files(from_tsv) == files(from_folder)

    # String keys through the authors' id map (a protocol-2 pickle of plain data).
    keys = [f"img{n}" for n in numbers]
    write_tsv(tsv, tmp_path / "images", keys)
    id_map = tmp_path / "img_id_map.pkl"
    id_map.write_bytes(pickle.dumps({k: 5 * i for i, k in enumerate(keys)}, protocol=2))
    mapped = tmp_path / "mapped" / "features.npy"
    extract_features(tsv, mapped, config=config(model_file, id_source="id-map", id_file=id_map))
    assert np.load(mapped.with_name("feature_ids.npy")).tolist() == [0, 5, 10, 15, 20]
    assert mapped.read_bytes() == from_folder.read_bytes()

    # Other column orders, and a key-to-id TSV with a header.
    swapped = tmp_path / "swapped.tsv"
    swapped.write_bytes(
        b"".join(
            b"\t".join([b"x", line.split(b"\t")[1].rstrip(), line.split(b"\t")[0]]) + b"\r\n"
            for line in tsv.read_bytes().splitlines(keepends=True)
        )
    )
    key_ids = tmp_path / "ids.tsv"
    key_ids.write_text("key\timg_id\n" + "".join(f"{k}\t{100 + i}\n" for i, k in enumerate(keys)))
    other = tmp_path / "other" / "features.npy"
    extract_features(
        swapped,
        other,
        config=config(model_file, tsv_columns=(2, 1), id_source="tsv", id_file=key_ids),
    )
    assert np.load(other.with_name("feature_ids.npy")).tolist() == [100, 101, 102, 103, 104]
    assert other.read_bytes() == from_folder.read_bytes()


def test_dataset_json_maps_file_names_to_imgids(tmp_path, model_file):
    numbers = make_folder(tmp_path / "images", 4)
    entries = [
        {"filename": coco_name(n), "imgid": 40 - i, "split": "test"} for i, n in enumerate(numbers)
    ]
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"images": entries[:3]}))  # the last image is unknown
    out = tmp_path / "features.npy"
    with pytest.raises(InputError, match=rf"{coco_name(numbers[3])}.*not in the dataset-json"):
        extract_features(
            tmp_path / "images",
            out,
            config=config(model_file, id_source="dataset-json", id_file=dataset_json),
        )
    assert not out.exists()

    result = extract_features(
        tmp_path / "images",
        out,
        config=config(model_file, id_source="dataset-json", id_file=dataset_json, on_error="skip"),
    )
    assert np.load(tmp_path / "feature_ids.npy").tolist() == [40, 39, 38]
    assert [s.img_id for s in result.skipped] == [None]
    assert (
        coco_name(numbers[3])
        in json.loads((tmp_path / "features.json").read_text())["skipped"][0]["source"]
    )

    # The same file read from inside keywords_coco.zip, as `encode` finds it.
    archive = tmp_path / "keywords_coco.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("coco/dataset.json", json.dumps({"images": entries}))
        zipped.writestr("coco/keyword_test/x.json", "{}")
    zipped_out = tmp_path / "z" / "features.npy"
    extract_features(
        tmp_path / "images",
        zipped_out,
        config=config(model_file, id_source="dataset-json", id_file=archive),
    )
    assert np.load(zipped_out.with_name("feature_ids.npy")).tolist() == [40, 39, 38, 37]


def test_names_without_a_number_or_with_a_repeated_id_are_named(tmp_path, model_file):
    folder = tmp_path / "images"
    make_folder(folder, 2)
    picture(5).save(folder / "cat.jpg")
    picture(6).save(folder / "COCO_train2014_000000001000.jpg")  # same number as the first
    with pytest.raises(InputError, match=r"2 of the 4 images") as caught:
        extract_features(folder, tmp_path / "features.npy", config=config(model_file))
    assert "cat.jpg: its file name has no number" in str(caught.value)
    assert f"{coco_name(1000)}: repeats img_id 1000 of file" in str(caught.value)
    result = extract_features(
        folder, tmp_path / "features.npy", config=config(model_file, on_error="skip")
    )
    assert result.shape[0] == 2 and len(result.skipped) == 2


# -- determinism, workers, resuming ------------------------------------------------------------
def test_same_bytes_every_run_and_with_worker_processes(tmp_path, model_file):
    make_folder(tmp_path / "images", 7)
    first, second = tmp_path / "a" / "features.npy", tmp_path / "b" / "features.npy"
    extract_features(tmp_path / "images", first, config=config(model_file))
    extract_features(tmp_path / "images", second, config=config(model_file, workers=2))
    assert files(first) == files(second)


def test_an_interrupted_run_resumes_to_the_same_bytes(tmp_path, model_file):
    make_folder(tmp_path / "images", 7)
    whole = tmp_path / "whole" / "features.npy"
    extract_features(tmp_path / "images", whole, config=config(model_file))

    out = tmp_path / "resumed" / "features.npy"
    partial = out.with_name("features.npy.partial")
    first = extract_features(tmp_path / "images", out, config=config(model_file, max_batches=1))
    assert not first.complete and first.shape[0] == 2
    assert not out.exists() and not out.with_name("feature_ids.npy").exists()
    assert (
        partial.is_file()
        and json.loads(out.with_name("features.npy.progress.json").read_text())["rows"] == 2
    )
    second = extract_features(tmp_path / "images", out, config=config(model_file, max_batches=2))
    assert second.resumed_from == 2 and second.shape[0] == 6 and not second.complete
    last = extract_features(tmp_path / "images", out, config=config(model_file, batch_size=3))
    assert last.complete and last.resumed_from == 6
    assert files(out) == files(whole)
    assert not partial.exists() and not out.with_name("features.npy.progress.json").exists()


def test_a_bad_image_stops_the_run_and_the_fixed_run_resumes(tmp_path, model_file):
    numbers = make_folder(tmp_path / "images", 7)
    whole = tmp_path / "whole" / "features.npy"
    extract_features(tmp_path / "images", whole, config=config(model_file))

    bad = tmp_path / "images" / coco_name(numbers[4])
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # a truncated download
    out = tmp_path / "out" / "features.npy"
    with pytest.raises(InputError, match=rf"{bad.name} cannot be decoded.*4 rows already written"):
        extract_features(tmp_path / "images", out, config=config(model_file))
    assert not out.exists() and out.with_name("features.npy.partial").exists()

    bad.write_bytes(good)
    result = extract_features(tmp_path / "images", out, config=config(model_file))
    assert result.resumed_from == 4
    assert files(out) == files(whole)


def test_skip_leaves_bad_images_out_and_lists_them(tmp_path, model_file):
    numbers = make_folder(tmp_path / "images", 5)
    whole = tmp_path / "whole" / "features.npy"
    extract_features(tmp_path / "images", whole, config=config(model_file))
    (tmp_path / "images" / coco_name(numbers[1])).write_bytes(b"\xff\xd8 not really a JPEG")

    out = tmp_path / "out" / "features.npy"
    result = extract_features(tmp_path / "images", out, config=config(model_file, on_error="skip"))
    assert result.shape == (4, 4, DIM)
    ids = np.load(out.with_name("feature_ids.npy"))
    assert ids.tolist() == [n for i, n in enumerate(numbers) if i != 1]
    np.testing.assert_array_equal(np.load(out), np.load(whole)[[0, 2, 3, 4]])
    skipped = json.loads(out.with_name("features.json").read_text())["skipped"]
    assert [s["img_id"] for s in skipped] == [numbers[1]]
    assert coco_name(numbers[1]) in skipped[0]["source"] and skipped[0]["reason"]
    assert np.load(out, mmap_mode="r").shape == (4, 4, DIM)  # header and size agree


@pytest.mark.timeout(60)  # a FIFO opened for reading blocks until a writer comes: never here
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_fifo_named_like_an_image_is_refused_by_name_not_read(tmp_path, model_file, on_error):
    numbers = make_folder(tmp_path / "images", 3)
    fifo = tmp_path / "images" / "x_4242.jpg"  # a number in its name: it gets an img_id
    os.mkfifo(fifo)
    args = [
        "features",
        str(tmp_path / "images"),
        "--out",
        str(tmp_path / "out" / "features.npy"),
        "--model-file",
        str(model_file),
        "--grid",
        "2",
        "--image-size",
        "32",
        "--workers",
        "0",
        "--on-error",
        on_error,
    ]
    result = CliRunner().invoke(cli, args)
    if on_error == "fail":
        assert result.exit_code == 1
        [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert "x_4242.jpg" in error and "FIFO" in error and "not a regular file" in error
        return
    assert result.exit_code == 0, result.output
    assert "1 image(s) skipped" in result.output
    ids = np.load(tmp_path / "out" / "feature_ids.npy")
    assert ids.tolist() == numbers  # the FIFO's id (4242) is not among them
    [skipped] = json.loads((tmp_path / "out" / "features.json").read_text())["skipped"]
    assert skipped["img_id"] == 4242 and "x_4242.jpg" in skipped["source"]
    assert "FIFO" in skipped["reason"]


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_a_fifo_as_tsv_model_or_mapping_file_is_refused_not_read(tmp_path, model_file):
    make_folder(tmp_path / "images", 2)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = tmp_path / "features.npy"
    with pytest.raises(InputError, match="neither a folder nor a regular file"):
        extract_features(fifo, out, config=config(model_file))
    with pytest.raises(InputError, match=r"pipe is a FIFO.*not a regular file"):
        extract_features(tmp_path / "images", out, config=config(fifo))
    json_fifo = tmp_path / "dataset.json"
    os.mkfifo(json_fifo)
    for kind, path in (("dataset-json", json_fifo), ("tsv", fifo), ("id-map", fifo)):
        mapped = config(model_file, id_source=kind, id_file=path)
        with pytest.raises(InputError, match=rf"{path.name} is a FIFO.*not a regular file"):
            extract_features(tmp_path / "images", out, config=mapped)


def test_bad_tsv_lines_are_named_by_line_number(tmp_path, model_file):
    numbers = make_folder(tmp_path / "images", 3)
    tsv = tmp_path / "images.tsv"
    write_tsv(tsv, tmp_path / "images", [str(n) for n in numbers], {2: b"77\tnot*base64!\n"})
    with pytest.raises(
        InputError, match=rf"{tsv.name} line 3 \(key '77'\) cannot be decoded.*base64"
    ):
        extract_features(tsv, tmp_path / "features.npy", config=config(model_file))

    write_tsv(tsv, tmp_path / "images", [str(n) for n in numbers], {1: b"88 no tab here\n"})
    with pytest.raises(InputError, match=rf"{tsv.name} line 2: has 1 tab-separated column"):
        extract_features(tsv, tmp_path / "features.npy", config=config(model_file, resume=False))

    result = extract_features(
        tsv, tmp_path / "features.npy", config=config(model_file, on_error="skip", resume=False)
    )
    assert result.shape[0] == 3 and "line 2" in result.skipped[0].source


def test_a_changed_run_is_not_resumed_silently(tmp_path, model_file):
    make_folder(tmp_path / "images", 5)
    out = tmp_path / "features.npy"
    extract_features(tmp_path / "images", out, config=config(model_file, max_batches=1))
    with pytest.raises(ConfigError, match=r"interrupted run \(2 rows written\).*--no-resume"):
        extract_features(tmp_path / "images", out, config=config(model_file, grid=1))
    result = extract_features(
        tmp_path / "images", out, config=config(model_file, grid=1, resume=False)
    )
    assert result.complete and result.resumed_from == 0 and result.shape == (5, 1, DIM)


def test_a_finished_output_is_up_to_date_until_something_changes(tmp_path, model_file):
    make_folder(tmp_path / "images", 3)
    out = tmp_path / "features.npy"
    extract_features(tmp_path / "images", out, config=config(model_file))
    before = out.stat().st_mtime_ns
    again = extract_features(tmp_path / "images", out, config=config(model_file))
    assert again.up_to_date and out.stat().st_mtime_ns == before
    assert not extract_features(
        tmp_path / "images", out, config=config(model_file, force=True)
    ).up_to_date
    assert not extract_features(
        tmp_path / "images", out, config=config(model_file, dtype="float32")
    ).up_to_date
    assert np.load(out).dtype == np.float32


def test_an_image_replaced_under_the_same_name_makes_the_output_out_of_date(tmp_path, model_file):
    # BMP files of one size: the replacement has the same name, the same size and (set below)
    # the same mtime as the image it replaces; only its content (and ctime) differ.
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        picture(i).save(images / f"img_{i + 1}.bmp")
    replacement = tmp_path / "other.bmp"
    picture(99).save(replacement)
    out = tmp_path / "features.npy"
    extract_features(images, out, config=config(model_file))
    replaced = images / "img_2.bmp"
    assert replacement.stat().st_size == replaced.stat().st_size
    old_mtime = replaced.stat().st_mtime_ns
    os.replace(replacement, replaced)
    os.utime(replaced, ns=(old_mtime, old_mtime))

    again = extract_features(images, out, config=config(model_file))
    assert not again.up_to_date and again.complete
    fresh = tmp_path / "fresh" / "features.npy"
    extract_features(images, fresh, config=config(model_file))
    assert files(out) == files(fresh)


def test_a_second_run_on_the_same_output_is_refused(tmp_path, model_file):
    filelock = pytest.importorskip("filelock")
    make_folder(tmp_path / "images", 1)
    with (
        filelock.FileLock(tmp_path / ".features.npy.lock"),
        pytest.raises(LockTimeoutError, match="Another"),
    ):
        extract_features(tmp_path / "images", tmp_path / "features.npy", config=config(model_file))


# -- backbones ---------------------------------------------------------------------------------
def test_bad_model_files_and_outputs_are_explained(tmp_path, model_file):
    make_folder(tmp_path / "images", 2)
    out = tmp_path / "features.npy"
    state_dict = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, state_dict)
    with pytest.raises(InputError, match=r"weights\.pt is not a TorchScript file"):
        extract_features(tmp_path / "images", out, config=config(state_dict))

    pooled = tmp_path / "pooled.pt"
    save_script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()), pooled)
    with pytest.raises(InputError, match=r"returned \(1, \d+\).*expected a feature map"):
        extract_features(tmp_path / "images", out, config=config(pooled))

    huge = tmp_path / "huge.pt"
    conv = torch.nn.Conv2d(3, 4, 1)
    torch.nn.init.constant_(conv.bias, 1e6)
    save_script(conv, huge)
    with pytest.raises(InputError, match=r"NaN or Inf.*--dtype float32"):
        extract_features(tmp_path / "images", out, config=config(huge))
    assert extract_features(
        tmp_path / "images", out, config=config(huge, dtype="float32", resume=False)
    ).complete


def test_an_exported_program_is_a_backbone_too(tmp_path, model_file):
    make_folder(tmp_path / "images", 3)
    scripted = tmp_path / "scripted" / "features.npy"
    extract_features(tmp_path / "images", scripted, config=config(model_file))
    batch, side = torch.export.Dim("batch"), torch.export.Dim("side", min=8, max=512)
    program = torch.export.export(
        tiny_net(),
        (torch.zeros(2, 3, SIZE, SIZE),),
        dynamic_shapes=({0: batch, 2: side, 3: side},),
    )
    torch.export.save(program, tmp_path / "tiny.pt2")
    exported = tmp_path / "exported" / "features.npy"
    result = extract_features(tmp_path / "images", exported, config=config(tmp_path / "tiny.pt2"))
    assert result.backbone["kind"] == "exported"
    np.testing.assert_allclose(np.load(exported), np.load(scripted), rtol=1e-3, atol=1e-3)


def test_the_gpu_settings_run_on_the_cpu_too(tmp_path, model_file):
    """bf16 autocast and channels-last are what a GPU gets; the same code must hold on a CPU."""
    from amc_data.featurizing.backbone import DeviceSetup, GridExtractor

    pixels = torch.from_numpy(np.stack([np.asarray(picture(i, SIZE, SIZE)) for i in range(3)]))
    plain = GridExtractor(
        load_script(model_file), DeviceSetup(torch.device("cpu"), "fp32", False), GRID, "t"
    )
    gpu_like = GridExtractor(
        load_script(model_file), DeviceSetup(torch.device("cpu"), "bf16", True), GRID, "t"
    )
    expected = plain(pixels)  # (3, G*G, D)
    assert expected.shape == (3, GRID * GRID, DIM) and expected.dtype == torch.float32
    torch.testing.assert_close(gpu_like(pixels), expected, rtol=0.05, atol=0.05)  # bf16: 8 bits

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            make_folder(tmp_path / "images", 1)
            extract_features(
                tmp_path / "images", tmp_path / "f.npy", config=config(model_file, device="cuda")
            )


def test_options_are_checked_up_front(model_file):
    bad_settings = [
        {"grid": 0},
        {"resize": 16},
        {"batch_size": 0},
        {"dtype": "int8"},
        {"id_source": "dataset-json"},
        {"tsv_columns": (1, 1)},
        {"workers": -1},
    ]
    for bad in bad_settings:
        with pytest.raises(ConfigError):
            config(model_file, **bad)


def test_missing_optional_packages_say_what_to_install(tmp_path, monkeypatch, model_file):
    make_folder(tmp_path / "images", 1)
    out = tmp_path / "features.npy"
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    with pytest.raises(
        MissingDependencyError, match=r'torchvision.*pip install "amc-data\[train\]"'
    ):
        extract_features(tmp_path / "images", out, config=FeatureConfig(workers=0, weights="none"))
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(
        MissingDependencyError, match=r'Pillow|PIL.*pip install "amc-data\[train\]"'
    ):
        extract_features(tmp_path / "images", out, config=config(model_file))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r'torch.*pip install "amc-data\[train\]"'):
        extract_features(tmp_path / "images", out, config=config(model_file))


class _FakeWeights:
    url = "https://example.invalid/tiny-0123.pth"

    def __str__(self) -> str:
        return "Tiny_Weights.IMAGENET1K_V1"


def fake_torchvision(monkeypatch: pytest.MonkeyPatch, *, offline: bool = False) -> None:
    """A stand-in for torchvision's model registry, shaped like the real one, for machines where
    torchvision cannot import: it checks our side (trunk cutting, seeding, messages), not
    torchvision itself (the test below does that where it imports)."""
    import types

    def get_model(name: str, weights: object = None) -> torch.nn.Module:
        if weights is not None and offline:
            raise OSError("no network")
        conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        if name == "resnet_tiny":  # a trunk, then avgpool and fc: ResNet's shape
            return torch.nn.Sequential(
                collections.OrderedDict(
                    conv1=conv,
                    relu=torch.nn.ReLU(),
                    avgpool=torch.nn.AdaptiveAvgPool2d(1),
                    fc=torch.nn.Linear(8, 10),
                )
            )
        return torch.nn.Sequential(
            collections.OrderedDict(  # VGG's shape
                features=torch.nn.Sequential(conv), classifier=torch.nn.Linear(8, 10)
            )
        )

    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["resnet_tiny", "vgg_tiny"]  # type: ignore[attr-defined]
    models.get_model_weights = lambda name: types.SimpleNamespace(DEFAULT=_FakeWeights())  # type: ignore[attr-defined]
    models.get_model = get_model  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    package.models = models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)


def test_torchvision_models_lose_their_head_and_random_weights_follow_the_seed(
    tmp_path, monkeypatch
):
    fake_torchvision(monkeypatch)
    make_folder(tmp_path / "images", 3)
    settings = {"weights": "none", "grid": 2, "image_size": SIZE, "workers": 0}
    outputs = {}
    for name, backbone, seed in [
        ("a", "resnet_tiny", 0),
        ("b", "resnet_tiny", 0),
        ("c", "resnet_tiny", 1),
        ("d", "vgg_tiny", 0),
    ]:
        chosen = FeatureConfig(backbone=backbone, seed=seed, **settings)
        result = extract_features(tmp_path / "images", tmp_path / f"{name}.npy", config=chosen)
        assert result.shape == (3, 4, 8)  # the feature map, not the 10 classes of the head
        assert result.backbone["weights"] == f"none (random, seed {seed})"
        outputs[name] = (tmp_path / f"{name}.npy").read_bytes()
    assert outputs["a"] == outputs["b"] != outputs["c"]

    with pytest.raises(ConfigError, match=r"'resnet_huge' is not a torchvision"):
        extract_features(
            tmp_path / "images",
            tmp_path / "e.npy",
            config=FeatureConfig(backbone="resnet_huge", **settings),
        )
    fake_torchvision(monkeypatch, offline=True)
    with pytest.raises(DownloadError, match=r"tiny-0123\.pth there, or pass --weights none"):
        extract_features(
            tmp_path / "images",
            tmp_path / "e.npy",
            config=FeatureConfig(backbone="resnet_tiny", workers=0),
        )


def _torchvision_or_skip() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception as exc:
        pytest.skip(
            f"torchvision cannot be imported here ({type(exc).__name__}: {exc}); it must be the "
            f"build made for torch {torch.__version__}"
        )


def test_torchvision_trunk_with_random_weights(tmp_path):
    _torchvision_or_skip()
    make_folder(tmp_path / "images", 3)
    settings = {
        "backbone": "resnet18",
        "weights": "none",
        "grid": 2,
        "image_size": 64,
        "workers": 0,
    }
    first = extract_features(
        tmp_path / "images", tmp_path / "a.npy", config=FeatureConfig(**settings)
    )
    assert first.shape == (3, 4, 512)
    extract_features(tmp_path / "images", tmp_path / "b.npy", config=FeatureConfig(**settings))
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


# -- the command line --------------------------------------------------------------------------
def test_cli_extracts_resumes_and_reports(tmp_path, model_file):
    numbers = make_folder(tmp_path / "images", 5)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(
        json.dumps(
            {"images": [{"filename": coco_name(n), "imgid": i} for i, n in enumerate(numbers)]}
        )
    )
    out = tmp_path / "prepared" / "features.npy"
    args = [
        "features",
        str(tmp_path / "images"),
        "--out",
        str(out),
        "--model-file",
        str(model_file),
        "--grid",
        "2",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--ids-from",
        "dataset-json",
        str(dataset_json),
    ]
    stopped = CliRunner().invoke(cli, [*args, "--max-batches", "1"])
    assert stopped.exit_code == 0, stopped.output
    assert "run the same command again" in stopped.output
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert (
        "Wrote" in done.output
        and "(5 x 4 x 16)" in done.output
        and "resumed after 2" in done.output
    )
    assert np.load(out.with_name("feature_ids.npy")).tolist() == [0, 1, 2, 3, 4]
    assert "up to date" in CliRunner().invoke(cli, args).output


def test_cli_errors_are_clean(tmp_path, model_file):
    make_folder(tmp_path / "images", 2)
    (tmp_path / "images" / coco_name(5)).write_bytes(b"garbage")
    base = [
        "features",
        str(tmp_path / "images"),
        "--out",
        str(tmp_path / "f.npy"),
        "--workers",
        "0",
    ]
    failed = CliRunner().invoke(cli, [*base, "--model-file", str(model_file), "--image-size", "32"])
    assert failed.exit_code == 1
    [error] = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: file ") and coco_name(5) in error
    both = CliRunner().invoke(
        cli, [*base, "--model-file", str(model_file), "--backbone", "resnet18"]
    )
    assert both.exit_code == 2 and "not both" in both.stderr
    columns = CliRunner().invoke(cli, [*base, "--tsv-columns", "1"])
    assert columns.exit_code == 2 and "key column and image column" in columns.stderr


def test_the_package_and_the_cli_help_do_not_import_torch():
    code = (
        "import sys, inspect, amc_data.featurizing, amc_data\n"
        "assert inspect.isfunction(amc_data.extract_features)\n"
        "from amc_data_cli.main import cli\n"
        "try:\n    cli(['features', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'PIL' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False False")

"""`amc-data features` under torchrun: two gloo processes on the CPU, each extracting its shard
of the images into one output, give the bytes of a single-process run; a process stopped mid-way
resumes its own shard only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="feature extraction needs torch (the train extra)")
pytest.importorskip("PIL.Image", reason="feature extraction needs Pillow (the train extra)")

from test_features import coco_name, config, files, make_folder, save_script, tiny_net  # noqa: E402

from amc_data import ConfigError, extract_features  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CNN of the features tests, saved as TorchScript."""
    return save_script(tiny_net(), tmp_path_factory.mktemp("model") / "tiny.pt")


def torchrun(images: Path, out: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    """`amc-data -v features` in two processes (gloo, the CPU), batches of 2."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "amc_data",
        "-v",
        "features",
        str(images),
        "--out",
        str(out),
        "--model-file",
        str(model),
        "--grid",
        "2",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def report(out: Path) -> dict:
    content = json.loads(out.with_name("features.json").read_text())
    # inputs_stamp: the images' sizes and times, which a test that damages and restores one
    # changes between the runs it compares.
    for key in ("seconds", "images_per_second", "processes", "inputs_stamp"):
        content.pop(key)
    return content


def test_two_processes_write_the_bytes_of_one_even_with_skipped_images(tmp_path, model_file):
    numbers = make_folder(tmp_path / "images", 7)  # shards [0, 4) and [4, 7)
    (tmp_path / "images" / coco_name(numbers[1])).write_bytes(b"\xff\xd8 not really a JPEG")
    single = tmp_path / "single" / "features.npy"
    extract_features(tmp_path / "images", single, config=config(model_file, on_error="skip"))

    out = tmp_path / "ddp" / "features.npy"
    done = torchrun(tmp_path / "images", out, model_file, "--on-error", "skip")
    assert done.returncode == 0, done.stderr[-3000:]
    assert files(out) == files(single)  # shard 1's rows moved up past the skipped image
    assert report(out) == report(single)
    assert json.loads(out.with_name("features.json").read_text())["processes"] == 2
    assert done.stdout.count("Wrote ") == 1  # rank 0 alone reports
    assert sorted(p.name for p in out.parent.iterdir()) == [
        ".features.npy.lock",
        "feature_ids.npy",
        "features.json",
        "features.npy",
    ]


def test_a_process_stopped_mid_shard_resumes_its_shard_only(tmp_path, model_file):
    numbers = make_folder(tmp_path / "images", 9)  # shards [0, 4) and [4, 9)
    single = tmp_path / "single" / "features.npy"
    extract_features(tmp_path / "images", single, config=config(model_file))
    bad = tmp_path / "images" / coco_name(numbers[6])  # in shard 1's second batch
    good = bad.read_bytes()
    bad.write_bytes(good[:300])

    out = tmp_path / "ddp" / "features.npy"
    stopped = torchrun(tmp_path / "images", out, model_file)
    assert stopped.returncode != 0
    [error] = errors(stopped.stderr)  # said once, by the process that met it
    assert bad.name in error and "by this process are kept" in error
    records = {
        rank: json.loads(out.with_name(f"features.npy.progress.{rank}-of-2.json").read_text())
        for rank in (0, 1)
    }
    assert records[0]["next_input"] == 4 and records[0]["rows"] == 4  # shard 0 finished
    assert records[1]["next_input"] == 6 and records[1]["rows"] == 2  # shard 1 stopped at 6
    assert not out.exists()

    with pytest.raises(ConfigError, match=r"2 process\(es\).*this run has 1"):
        extract_features(tmp_path / "images", out, config=config(model_file))

    bad.write_bytes(good)
    resumed = torchrun(tmp_path / "images", out, model_file)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "shard 0 of 2: " in resumed.stderr and "done by an earlier run" in resumed.stderr
    assert "shard 1 of 2: resuming" in resumed.stderr and "at input 6" in resumed.stderr
    assert "resumed after 6 images" in resumed.stdout
    assert files(out) == files(single)
    assert report(out) == report(single)
    assert np.load(out, mmap_mode="r").shape[0] == 9
    assert not list(out.parent.glob("*.progress*"))

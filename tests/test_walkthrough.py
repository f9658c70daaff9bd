"""The "Bring your own data" page (docs/byod.md) as a user follows it: its ```sh blocks, taken
from the page itself so that the page and this test cannot drift apart, run in order in an empty
folder: `example coco`, a look at the files, `encode coco`, `prepare coco`, `train`, `eval`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "byod.md"


def page_commands() -> list[str]:
    """Every fenced ```sh block of the page, in order."""
    return re.findall(r"^```sh\n(.*?)\n```", PAGE.read_text(encoding="utf-8"), re.S | re.M)


def test_the_page_walks_the_whole_path() -> None:
    joined = "\n".join(page_commands())
    for step in ("amc-data example coco", "amc-data encode coco", "amc-data prepare coco"):
        assert step in joined
    assert joined.index("amc-data train") < joined.index("amc-data eval")


def test_the_bring_your_own_data_page_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    outputs = []
    for block in page_commands():
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, f"{block}\nfailed:\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    table = outputs[-1]
    assert re.search(r"^run +amc +\d\.\d{4} +\d\.\d{4}", table, re.M), table
    assert re.search(r"^random +random ", table, re.M), table
    # What the page says the files hold, and what the options it names lead to.
    assert (tmp_path / "byod" / "coco" / "keywords_coco" / "dataset.json").is_file()
    vocab = (tmp_path / "byod" / "coco" / "encoded" / "vocab.tsv").read_text().splitlines()
    assert len(vocab) - 1 == 38  # `--min-df 2` keeps all 38 words, as the page says
    metrics = (tmp_path / "byod" / "run" / "eval-test" / "metrics.json").read_text()
    assert '"t2i_r@1_8"' in metrics and '"t2i_r@1_4"' in metrics  # the fold-size caveat

"""A new user's own 48-image COCO-layout set, through `encode` then `prepare` on the command
line: both report what the vocabularies keep and drop, and warn, naming --min-df, when the
authors' min_df leaves most images without a keyword."""

from __future__ import annotations

import numpy as np
from amc_data_cli.main import cli
from click.testing import CliRunner
from support import corpus
from support.prepare_helpers import save_features

from amc_data.prepare import load_prepared


def test_encode_then_prepare_report_and_warn_about_what_min_df_drops(tmp_path):
    made = corpus.make_own_coco(tmp_path)
    runner = CliRunner()
    encoded = runner.invoke(cli, ["encode", "coco", "--data-dir", str(tmp_path), "-j", "1"])
    assert encoded.exit_code == 0, encoded.output
    assert "vocabulary: 2 words kept" in encoded.output
    assert "32 of 48 documents left empty" in encoded.output
    assert "WARNING" in encoded.output and "--min-df" in encoded.output

    features, ids = save_features(tmp_path, "f", np.array([im.imgid for im in made.images]))
    args = ["prepare", "coco", "--data-dir", str(tmp_path), "--features", str(features)]
    args += ["--feature-ids", str(ids), "--out", str(tmp_path / "prepared")]
    prepared = runner.invoke(cli, args)
    assert prepared.exit_code == 0, prepared.output
    assert "keyword rows left empty: 32 of 48" in prepared.output
    assert "32 of 48 images have no keyword" in prepared.output  # the warning
    assert "lower --min-df" in prepared.output
    report = load_prepared(tmp_path / "prepared").info["coco"]["vocabulary"]
    assert (report["keyword_rows"], report["keyword_rows_empty"]) == (48, 32)
    assert report["queries"] == 240 and report["min_count"] == 4

"""Scores files: reading, every malformed-file error, and `amc-data eval --scores`."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data.errors import ConfigError, InputError
from amc_data.evaluation.metrics import ranking_metrics
from amc_data.evaluation.scores import evaluate_scores, read_scores, scores_metrics

HEADER = "query_id\timg_id\tscore\tlabel\n"


def _frame(seed: int = 0, queries: int = 30, candidates: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 2, 3], size=queries * candidates)
    return pd.DataFrame(
        {
            "query_id": np.repeat(np.arange(queries) * 3 + 100, candidates),
            "img_id": np.tile(np.arange(candidates) * 5, queries),
            "score": np.round(labels + rng.normal(size=queries * candidates), 1),  # some ties
            "label": labels,
        }
    )


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parquet_tsv_gzip_and_frame_agree_with_the_metrics(tmp_path):
    frame = _frame()
    frame.to_parquet(tmp_path / "s.parquet", index=False)
    frame.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    with gzip.open(tmp_path / "s.tsv.gz", "wt") as file:
        frame.to_csv(file, sep="\t", index=False)
    expected = ranking_metrics(frame.query_id, frame.score, frame.label).summary()
    for source in (tmp_path / "s.parquet", tmp_path / "s.tsv", tmp_path / "s.tsv.gz", frame):
        assert evaluate_scores(source) == pytest.approx(expected, abs=1e-12)
    assert expected["queries"] == 30 and expected["pairs"] == 360


def test_read_scores_types_extra_columns_and_text_ids(tmp_path):
    text = "query_id\timg_id\tscore\tlabel\tnote\nq1\t7\t0.5\t2.0\tx\nq1\t8\t1\t0\ty\n"
    path = _write(tmp_path, "s.tsv", text)
    frame = read_scores(path)
    assert list(frame.columns) == ["query_id", "img_id", "score", "label"]
    assert list(frame.query_id) == ["q1", "q1"]
    assert frame.score.dtype == np.float64 and frame.label.dtype == np.int64
    assert list(frame.label) == [2, 0]
    result = scores_metrics(path)
    assert list(result.query_ids) == ["q1"]
    assert result.ndcg[0, 0] == pytest.approx(1 / math.log2(3))  # the one gain (3) at rank 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "query_id\timg_id\tscore\n1\t2\t0.5\n",
            [
                "lacks the column(s) label",
                "found: query_id, img_id, score",
                "needs the columns query_id, img_id, score, label",
            ],
        ),
        ("query_id,img_id,score,label\n1,2,0.5,1\n", ["lacks the column(s)", "comma-separated"]),
        (
            HEADER + "1\t1\t0.5\t1\n\n1\t2\tabc\t0\n",
            ["line 4: score is 'abc', not a number", "Give every row a finite number"],
        ),
        (HEADER + "1\t1\t0.5\t1\n1\t2\tnan\t0\n", ["line 3: score is missing (empty, NA or NaN)"]),
        (HEADER + "1\t1\t0.5\t1\n1\t2\t\t0\n", ["line 3: score is missing"]),
        (HEADER + "1\t1\t0.5\t1\n1\t2\tinf\t0\n", ["line 3: score is inf", "Clip or replace"]),
        (
            HEADER + "1\t1\t0.5\t1\n1\t2\t0.1\t2.5\n",
            ["line 3: label is 2.5, not a whole number", "graded relevance"],
        ),
        (HEADER + "1\t1\t0.5\t1\n1\t2\t0.1\tgood\n", ["line 3: label is 'good', not a number"]),
        (HEADER + "1\t1\t0.5\t1\n1\t2\t0.1\t-1\n", ["line 3: label is -1", "must be 0"]),
        (
            HEADER + "1\t1\t0.5\t1\n1\t2\t0.1\t0\n1\t1\t0.7\t1\n",
            [
                "line 2 and line 4: both score query 1, image 1",
                "Keep one row per (query, image) pair",
            ],
        ),
        ("", ["is empty (0 bytes)", "Write a header line"]),
        (HEADER, ["has no rows", "one row per (query, candidate image)"]),
        (
            HEADER + "1\t1\t0.5\t1\n\n1\t2\t0.5\n",
            ["line 4: expected 4 tab-separated fields, found 3", "separated by tabs"],
        ),
        (HEADER + "1\t1\t0.5\t1\n\t2\t0.5\t1\n", ["line 3: query_id is missing"]),
    ],
    ids=[
        "missing-column",
        "commas",
        "text-score",
        "nan-score",
        "empty-score",
        "inf-score",
        "fractional-label",
        "text-label",
        "negative-label",
        "duplicate",
        "empty-file",
        "header-only",
        "short-row",
        "missing-id",
    ],
)
def test_malformed_tsv_files_name_file_line_and_fix(tmp_path, text, expected):
    path = _write(tmp_path, "bad.tsv", text)
    with pytest.raises(InputError) as info:
        read_scores(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_line_numbers_count_from_the_header_in_a_large_file(tmp_path):
    frame = _frame(queries=2000)  # several CSV blocks
    frame.loc[23_456, "score"] = np.nan
    frame.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="line 23458: score is missing"):
        read_scores(tmp_path / "s.tsv")


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("score", ["0.5", "0.7", "x"], "row index 2: score is 'x', not a number"),
        ("score", [0.5, None, 0.1], "row index 1: score is missing"),
        ("label", [1.0, 0.0, 0.5], "row index 2: label is 0.5, not a whole number"),
        ("img_id", [1, 2, 1], "row index 0 and row index 2: both score query 1, image 1"),
        ("query_id", [1.0, 1.5, 1.0], "row index 1: query_id is 1.5"),
    ],
)
def test_malformed_parquet_files_name_file_row_index_and_fix(tmp_path, column, values, expected):
    frame = pd.DataFrame(
        {"query_id": [1, 1, 1], "img_id": [1, 2, 3], "score": [0.5, 0.7, 0.1], "label": [1, 0, 2]}
    )
    frame[column] = values
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path, index=False)
    with pytest.raises(InputError, match=expected) as info:
        read_scores(path)
    assert str(path) in str(info.value)


def test_parquet_without_columns_rows_or_integrity(tmp_path):
    path = tmp_path / "cols.parquet"
    pd.DataFrame({"query_id": [1], "score": [0.5]}).to_parquet(path)
    with pytest.raises(InputError, match=r"lacks the column\(s\) img_id, label"):
        read_scores(path)
    empty = tmp_path / "empty.parquet"
    _frame().iloc[:0].to_parquet(empty, index=False)
    with pytest.raises(InputError, match="has no rows"):
        read_scores(empty)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(InputError, match="starts like a Parquet file but cannot be read"):
        read_scores(broken)
    with pytest.raises(InputError, match="no such scores file"):
        read_scores(tmp_path / "absent.tsv")


def test_a_frame_names_its_row():
    frame = _frame()
    frame.loc[4, "score"] = np.inf
    expected = r"the scores table, row 4 \(counting from 0\): score is inf"
    with pytest.raises(InputError, match=expected):
        evaluate_scores(frame)


# The command line --------------------------------------------------------------------------


def test_eval_prints_one_row_per_file_and_writes_json(tmp_path):
    frame = _frame()
    frame.to_parquet(tmp_path / "a.parquet", index=False)
    better = frame.assign(score=frame.score + 2 * frame.label)
    better.to_csv(tmp_path / "b.tsv", sep="\t", index=False)
    a, b, out = tmp_path / "a.parquet", tmp_path / "b.tsv", tmp_path / "out" / "m.json"
    result = CliRunner().invoke(
        cli,
        ["eval", "--scores", str(a), "--scores", str(b), "--json", str(out), "--resamples", "500"],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "scores",
        "queries",
        "pairs",
        "no",
        "rel",
        "ndcg@5",
        "ndcg@10",
        "ndcg@15",
        "ndcg@20",
        "ndcg@25",
        "dcg@25",
        "ch",
        "auc",
        "p",
        "rand",
        "p",
        "t",
    ]
    assert lines[2].startswith(str(a)) and lines[3].startswith(str(b))
    data = json.loads(out.read_text())
    assert list(data) == [str(a), str(b)]
    assert data[str(a)].pop("ndcg_gain") == "exp"  # every table names its NDCG's gain
    assert data[str(a)] == pytest.approx(evaluate_scores(a))
    assert "exponential gain" in result.stdout
    assert f"{data[str(a)]['ndcg@10']:.4f}" in lines[2]
    assert "p_randomization_ndcg@10" not in data[str(a)]
    assert data[str(b)]["p_randomization_ndcg@10"] == pytest.approx(1 / 501)
    assert data[str(b)]["p_t_ndcg@10"] < 0.01
    assert "per-query NDCG@10" in result.stdout


def test_eval_relevant_threshold_and_undefined_auc(tmp_path):
    path = _write(tmp_path, "s.tsv", HEADER + "1\t1\t0.9\t1\n1\t2\t0.5\t3\n1\t3\t0.1\t0\n")
    out = tmp_path / "m.json"
    result = CliRunner().invoke(cli, ["eval", "--scores", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())[str(path)]["auc"] == 1.0
    result = CliRunner().invoke(
        cli, ["eval", "--scores", str(path), "--relevant", "2", "--json", str(out)]
    )
    assert json.loads(out.read_text())[str(path)]["auc"] == 0.5  # 0.5 beats 0.1, not 0.9
    none = _write(tmp_path, "none.tsv", HEADER + "1\t1\t0.9\t0\n1\t2\t0.5\t0\n")
    result = CliRunner().invoke(cli, ["eval", "--scores", str(none), "--json", str(out)])
    assert result.exit_code == 0, result.output
    values = json.loads(out.read_text())[str(none)]
    assert values["auc"] is None and values["queries_without_relevant"] == 1
    assert "no rel: queries with no candidate" in result.stdout


def test_eval_errors(tmp_path):
    bad = _write(tmp_path, "bad.tsv", HEADER + "1\t1\tx\t1\n")
    result = CliRunner().invoke(cli, ["eval", "--scores", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {bad}, line 2: score is 'x'")
    a, b = _write(tmp_path, "a.tsv", HEADER), _write(tmp_path, "b.tsv", HEADER)
    result = CliRunner().invoke(cli, ["eval", str(a), str(b)])
    assert result.exit_code == 2
    assert "not a run folder" in result.stderr
    assert f"--scores {a} --scores {b}" in result.stderr
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such run folder or checkpoint" in result.stderr
    result = CliRunner().invoke(cli, ["eval"])
    assert result.exit_code == 2
    assert "or --scores PATH" in result.stderr


def test_eval_loads_neither_torch_nor_scikit_learn(tmp_path):
    path = tmp_path / "s.parquet"
    _frame().to_parquet(path, index=False)
    code = (
        "import sys; from amc_data_cli.main import main\n"
        f"try: main(['eval', '--scores', {str(path)!r}])\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_corrupt_gzip_scores_file_is_one_line_error(tmp_path) -> None:

    rows = "".join(f"{q}\t{i}\t0.5\t1\n" for q in range(50) for i in range(200))
    whole = gzip.compress(("query_id\timg_id\tscore\tlabel\n" + rows).encode())
    path = tmp_path / "scores.tsv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"scores.tsv.gz cannot be read .*Write or copy it again"):
        read_scores(path)


# -- reading in blocks: a bad row found where it is, the row cap, blocks joined exactly ---------


def _rows(start: int, stop: int) -> str:
    return "".join(f"{i // 10}\t{i}\t{i % 7 / 10}\t{i % 3}\n" for i in range(start, stop))


def test_a_bad_row_is_reported_without_reading_what_follows(tmp_path, monkeypatch):
    # A gzip file whose stream is cut short after a bad value: reading block by block reaches
    # the bad value first, and the damage after it is never read.
    import amc_data.evaluation.scores as scores_module

    monkeypatch.setattr(scores_module, "_BLOCK_BYTES", 1 << 12)
    text = HEADER + _rows(0, 200) + "1\t99999\tnope\t0\n" + _rows(200, 300_000)
    whole = gzip.compress(text.encode(), compresslevel=1)
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"line 202: score is 'nope'"):
        read_scores(path)


def test_blocks_are_joined_exactly_and_checked_across_their_boundaries(tmp_path, monkeypatch):
    import amc_data.evaluation.scores as scores_module

    monkeypatch.setattr(scores_module, "_BLOCK_BYTES", 1 << 10)
    monkeypatch.setattr(scores_module, "_BATCH_ROWS", 37)
    frame = _frame(queries=60, candidates=15)
    tsv = tmp_path / "s.tsv"
    frame.to_csv(tsv, sep="\t", index=False)
    parquet = tmp_path / "s.parquet"
    frame.to_parquet(parquet, row_group_size=100)
    for path in (tsv, parquet):
        pd.testing.assert_frame_equal(read_scores(path), read_scores(frame), check_dtype=False)
    # A pair repeated far apart (different blocks) is named by both of its lines.
    repeated = HEADER + _rows(0, 500) + "3\t31\t0.5\t1\n"
    with pytest.raises(InputError, match=r"line 33 and line 502: both score query 3, image 31"):
        read_scores(_write(tmp_path, "twice.tsv", repeated))
    # A negative label in a late block is named by its own line.
    late = HEADER + _rows(0, 500) + "900\t1\t0.5\t-1\n"
    with pytest.raises(InputError, match=r"line 502: label is -1"):
        read_scores(_write(tmp_path, "late.tsv", late))
    # Ids that are numbers in the first block and text later are text throughout.
    mixed = read_scores(_write(tmp_path, "mixed.tsv", HEADER + _rows(0, 500) + "q7\t1\t0.5\t1\n"))
    assert mixed["query_id"].map(type).eq(str).all() and mixed["query_id"].iloc[-1] == "q7"
    assert len(mixed) == 501


@pytest.mark.parametrize("max_rows", [0, -1, 2.5, True, None])
def test_a_bad_row_cap_is_a_config_error_naming_max_rows(tmp_path, max_rows):
    path = _write(tmp_path, "small.tsv", HEADER + _rows(0, 5))
    with pytest.raises(ConfigError, match=r"^max_rows must be a whole number >= 1") as caught:
        read_scores(path, max_rows=max_rows)
    assert caught.value.parameter == "max_rows"


def test_files_over_the_row_cap_are_refused_before_they_are_read_whole(tmp_path):
    path = _write(tmp_path, "big.tsv", HEADER + _rows(0, 50))
    assert len(read_scores(path, max_rows=50)) == 50
    with pytest.raises(InputError, match=r"more than 49 rows.*--max-rows"):
        read_scores(path, max_rows=49)
    parquet = tmp_path / "big.parquet"
    read_scores(path).to_parquet(parquet)
    with pytest.raises(InputError, match="more than 10 rows"):
        evaluate_scores(parquet, max_rows=10)
    runner = CliRunner()
    refused = runner.invoke(cli, ["eval", "--scores", str(path), "--max-rows", "20"])
    assert refused.exit_code != 0 and "more than 20 rows" in refused.output
    assert runner.invoke(cli, ["eval", "--scores", str(path)]).exit_code == 0
    from amc_data.evaluation.protocol import MAX_ROWS

    assert f"{MAX_ROWS:,}" in runner.invoke(cli, ["eval", "--help"]).output.replace("\n", " ")


# -- readers closed on every path ----------------------------------------------------------------


class _RecordedReader:
    """pyarrow's streaming CSV reader, with a record of whether it was closed."""

    def __init__(self, reader) -> None:
        self.reader, self.closed = reader, False

    @property
    def schema(self):
        return self.reader.schema

    def __iter__(self):
        return iter(self.reader)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        self.reader.close()


@pytest.fixture
def opened(monkeypatch) -> list[_RecordedReader]:
    """Every streaming CSV reader the scores module opens."""
    import pyarrow.csv as pacsv

    open_csv, readers = pacsv.open_csv, []

    def recording_open_csv(*args, **kwargs):
        readers.append(_RecordedReader(open_csv(*args, **kwargs)))
        return readers[-1]

    monkeypatch.setattr(pacsv, "open_csv", recording_open_csv)
    return readers


@pytest.mark.parametrize(
    "ending, error",
    [
        ("", None),  # read to the end
        ("q7\t1\t0.5\t1\n", None),  # ids change kind in a late block: read again as text
        ("7\t1\tnope\t1\n", "line 502: score is 'nope'"),  # a value refused by the reader
        ("7\t1\t0.5\n", "line 502: expected 4 tab-separated fields"),  # a short row
        ("7\t1\t0.5\t-2\n", "line 502: label is -2"),  # refused in a block: reading stops early
        ("3\t31\t0.5\t1\n", "both score query 3, image 31"),  # refused once all rows are read
    ],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_every_csv_reader_is_closed_however_the_reading_ends(
    tmp_path, monkeypatch, opened, ending, error, compressed
):
    """An open reader's read-ahead thread could outlive the interpreter and abort its exit
    ('terminate called without an active exception') after a correct result."""
    import amc_data.evaluation.scores as scores_module

    monkeypatch.setattr(scores_module, "_BLOCK_BYTES", 1 << 10)  # many blocks: stops mid-file
    text = HEADER + _rows(0, 500) + ending + _rows(500, 1500)
    path = tmp_path / ("s.tsv.gz" if compressed else "s.tsv")
    path.write_bytes(gzip.compress(text.encode()) if compressed else text.encode())
    if error is None:
        assert len(read_scores(path)) == (1501 if ending else 1500)
    else:
        with pytest.raises(InputError, match=error):
            read_scores(path)
    assert opened and all(reader.closed for reader in opened)


# -- labels too large to score, and the Parquet types pandas writes ------------------------------


def test_a_label_too_large_is_named_by_file_and_line_in_the_second_file(tmp_path):
    first = _write(tmp_path, "a.tsv", HEADER + _rows(0, 20))
    second = _write(tmp_path, "b.tsv", HEADER + "1\t1\t0.5\t2\n1\t2\t0.4\t1100\n1\t3\t0.1\t0\n")
    result = CliRunner().invoke(cli, ["eval", "--scores", str(first), "--scores", str(second)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {second}, line 3: label is 1100;"), result.stderr
    assert "labels[" not in result.stderr
    parquet = tmp_path / "c.parquet"
    pd.DataFrame(
        {"query_id": [1, 1], "img_id": [1, 2], "score": [0.5, 0.4], "label": [2, 1100]}
    ).to_parquet(parquet, index=False)
    with pytest.raises(InputError, match=r"c.parquet, row index 1: label is 1100"):
        read_scores(parquet)


def test_parquet_with_categorical_ids_and_decimal_scores_is_read(tmp_path):
    from decimal import Decimal

    frame = _frame()
    written = frame.assign(
        query_id=frame.query_id.map(lambda q: f"q{q}").astype("category"),
        img_id=frame.img_id.astype("category"),
        score=[Decimal(f"{s:.1f}") for s in frame.score],
        label=[Decimal(int(label)) for label in frame.label],
    )
    path = tmp_path / "typed.parquet"
    written.to_parquet(path, index=False)
    import pyarrow.parquet as pq

    types = pq.read_schema(path)
    assert str(types.field("query_id").type).startswith("dictionary")
    assert str(types.field("score").type).startswith("decimal")
    got = read_scores(path)
    assert got.query_id.tolist() == [f"q{q}" for q in frame.query_id]
    assert got.img_id.tolist() == frame.img_id.tolist()
    assert got.score.tolist() == frame.score.tolist() and got.label.tolist() == frame.label.tolist()
    expected = ranking_metrics(frame.query_id, frame.score, frame.label).summary()
    assert evaluate_scores(path) == pytest.approx(expected, abs=1e-12)
    assert evaluate_scores(written) == pytest.approx(expected, abs=1e-12)  # the frame itself

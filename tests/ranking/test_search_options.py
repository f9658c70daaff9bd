"""Search refuses options it would not use, and a queries file that is not text, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data.errors import ConfigError
from amc_data.ranking.search_config import SearchConfig


def test_a_shortlist_with_the_exact_scan_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^shortlist goes with the index search") as caught:
        SearchConfig(exact=True, shortlist=100)
    assert caught.value.parameter == "shortlist"


def test_a_shortlist_index_without_a_shortlist_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^shortlist_index 'hnsw' goes with a shortlist"):
        SearchConfig(shortlist_index="hnsw")
    assert SearchConfig(shortlist=50, shortlist_index="hnsw").shortlist == 50


def test_the_cli_names_the_flags(tmp_path: Path) -> None:
    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    data.mkdir()
    queries = tmp_path / "queries.txt"
    queries.write_text("red car\n", encoding="utf-8")
    base = ["search", str(run), "--data", str(data)]
    both = CliRunner().invoke(cli, [*base, "--exact", "--shortlist", "10", "red"])
    assert both.exit_code == 2 and "--shortlist goes with the index search" in both.output
    as_json = CliRunner().invoke(cli, [*base, "--queries", str(queries), "--json"])
    assert as_json.exit_code == 2 and "--json shows one query's ranking" in as_json.output


def test_a_queries_file_that_is_not_utf8_is_one_line_error(tmp_path: Path) -> None:
    from amc_data_cli.search import read_queries

    from amc_data.errors import InputError

    queries = tmp_path / "queries.txt"
    queries.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"queries\.txt is not UTF-8 text \(byte 3\)"):
        read_queries(queries)


def test_an_unknown_searcher_option_is_a_config_error_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from amc_data.ranking.search import Searcher

    with pytest.raises(ConfigError, match=r"^shortlist_k is not a search option") as caught:
        Searcher(tmp_path / "run", tmp_path / "data", shortlist_k=100)
    assert caught.value.parameter == "shortlist_k"
    assert "shortlist" in str(caught.value)  # the options there are


def test_an_unknown_option_of_the_search_function_is_a_config_error_too(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from amc_data.ranking.search import search

    with pytest.raises(ConfigError, match=r"^shortlist_k is not a search option"):
        search(tmp_path / "run", tmp_path / "data", "dog", shortlist_k=100)

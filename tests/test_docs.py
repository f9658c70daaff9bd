"""The documentation holds to the code: the site builds strictly (its CLI reference generated from
the Click commands, its API reference from the docstrings), the README's links lead somewhere,
CI finds the README's test command, and the README's own commands run as written."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"

# What `mkdocs build` needs beyond mkdocs itself (the `docs` extra of pyproject.toml).
SITE_MODULES = ("mkdocs", "material", "mkdocs_click", "mkdocstrings", "mkdocstrings_handlers")


def marked_blocks(text: str, marker: str) -> list[str]:
    """The fenced ```sh blocks that directly follow an HTML comment `<!-- marker -->`."""
    pattern = re.compile(rf"<!-- {re.escape(marker)} -->\n```sh\n(.*?)\n```", re.S)
    return pattern.findall(text)


def _command_paths(group: click.Group, prefix: str) -> list[str]:
    """Every command under `group` as the CLI reference's heading ids name it (`amc-data-prepare-
    coco`), asked the way `--help` asks (a group may load its commands on demand)."""
    ctx = click.Context(group)
    paths = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        path = f"{prefix}-{name}"
        paths.append(path)
        if isinstance(command, click.Group):
            paths.extend(_command_paths(command, path))
    return paths


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built with `mkdocs build --strict` (any warning fails it: a broken link, a name
    the API reference cannot find, a missing picture or included file)."""
    missing = [m for m in SITE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"the documentation tools are not installed ({', '.join(missing)}): "
            'pip install -e ".[docs]"'
        )
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
    command += ["--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(out)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=280)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_the_site_builds_strictly_with_every_page(site: Path) -> None:
    pages = sorted(p.stem for p in DOCS.glob("*.md"))
    built = [page for page in pages if (site / page / "index.html").is_file() or page == "index"]
    assert built == pages
    assert (site / "index.html").is_file()
    for picture in DOCS.glob("*.png"):
        assert (site / picture.name).read_bytes() == picture.read_bytes()


def test_the_cli_reference_shows_every_command_nested_ones_included(site: Path) -> None:
    from amc_data_cli.main import cli

    page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    expected = _command_paths(cli, "amc-data")
    assert "amc-data-prepare-coco" in expected
    missing = [path for path in expected if f'id="{path}"' not in page]
    assert not missing, f"the CLI reference lacks {missing}"
    assert "--fold-size" in page  # flags too, taken from the commands


def test_the_api_reference_renders_every_public_name(site: Path) -> None:
    import amc_data

    page = (site / "api" / "index.html").read_text(encoding="utf-8")
    names = [name for name in amc_data.__all__ if name != "__version__"]
    missing = [name for name in names if f'id="amc_data.{name}"' not in page]
    assert not missing, f"the API reference lacks {missing}"


def test_the_api_page_lists_exactly_the_public_names() -> None:
    """docs/api.md names every entry of `amc_data.__all__` once, and nothing else of the
    package's top level: a name added to the API shows up in its reference."""
    import amc_data

    listed = re.findall(r"^::: amc_data\.(\w+)$", (DOCS / "api.md").read_text(), re.M)
    assert sorted(listed) == sorted(set(listed)), "a name is listed twice"
    assert set(listed) == set(amc_data.__all__) - {"__version__"}


def test_the_readme_is_a_front_door_whose_links_lead_somewhere() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\((?!https?://)([^)#]+)(?:#[^)]*)?\)", text)
    assert "docs/byod.md" in links and "docs/demo-attention.png" in links
    broken = [link for link in links if not (REPO / link).exists()]
    assert not broken, f"README links to missing files: {broken}"
    # The pages' own relative links are checked by the strict build; a page that reads on GitHub
    # but is left out of the site's navigation would escape it.
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert [p.name for p in DOCS.glob("*.md") if p.name not in nav] == []


def test_ci_finds_the_readme_s_test_command() -> None:
    """The line of .ci/run that reads the test command out of the README, run on the README."""
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    (line,) = [line for line in script.splitlines() if line.startswith("test_command=")]
    done = subprocess.run(
        ["bash", "-c", f"{line}\nprintf '%s' \"$test_command\""],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "pytest -n auto"


@pytest.mark.slow
def test_the_readme_s_commands_run_in_order_on_a_fresh_folder(tmp_path: Path) -> None:
    """Every block the README marks `<!-- readme-walkthrough -->` (the demo, then a search of its
    run), in order, in an empty folder, as a user would type them. Install and the commands that
    need the network (fetch) or are the suite itself (pytest) are not marked."""
    pytest.importorskip("torch")
    blocks = marked_blocks(README.read_text(encoding="utf-8"), "readme-walkthrough")
    assert len(blocks) >= 2, "the README marks no walkthrough"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # what the README advises on a busy machine
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    outputs = []
    for block in blocks:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=280,
        )
        assert done.returncode == 0, f"{block}\nfailed:\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    demo, search = outputs[0], outputs[-1]
    assert "AMC ranks best, as the paper reports." in demo
    assert re.search(r"^amc +amc +0\.9\d+", demo, re.M), demo
    assert "3 best of 300 test images for 'lighthouse store brand'" in search
    assert (tmp_path / "amc-demo" / "plots" / "roc.png").is_file()

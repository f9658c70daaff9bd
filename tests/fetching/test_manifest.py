"""Manifests (bundled and given), their validation, the checksum record and the resume decision."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.servers import write_manifest

from amc_data.errors import ConfigError, ManifestError
from amc_data.fetching.checksums import (
    Action,
    FileChecksum,
    StreamHasher,
    decide,
    hash_file,
    mismatch,
)
from amc_data.fetching.manifest import (
    CHECKSUMS_FILE_NAME,
    LEGACY_CHECKSUMS_FILE_NAME,
    bundled_manifests,
    expected_checksums,
    load_manifest,
    migrate_checksums,
    read_checksums,
    record_checksum,
    resolve_manifests,
)

REPO = Path(__file__).resolve().parents[2]
COMMIT = "b7b78ee38ea5b0f1f4d975b561c3d8ab932cc520"


def test_bundled_manifests_hold_the_real_sources():
    manifests = bundled_manifests()
    assert sorted(manifests) == ["clickture", "coco"]
    clickture = manifests["clickture"]
    assert [f.name for f in clickture.files] == [
        "keywords_dev.zip",
        "keywords_lite.zip",
        "clickture-dev.lst",
        "clickture-lite.lst",
        "img_id_map_dev.pkl",
        "img_id_map.pkl",
    ]
    assert [f.name for f in manifests["coco"].files] == ["keywords_coco.zip", "data.zip"]
    for manifest in manifests.values():
        assert manifest.bundled
        for entry in manifest.files:
            if entry.optional == "precomp":  # SCAN's precomputed features, from SCAN's README
                assert entry.urls == ("https://iudata.blob.core.windows.net/scan/data.zip",)
            elif entry.name.endswith(".zip"):
                assert "/drive/folders/1x4HAg5Mitx9sWo1XoQJ8aDKuMjObSgiX" in entry.urls[0]
                assert "dropbox" in entry.urls[-1] and "broken" in (entry.note or "")
            else:  # the side files: GitHub, pinned commit, always a git blob sha1
                assert entry.urls == (
                    f"https://raw.githubusercontent.com/kanchen-usc/AMC_ATT/{COMMIT}/clickture/"
                    f"{entry.name}",
                )
                assert entry.git_blob_sha1 is not None


@pytest.mark.parametrize("name", ["clickture-dev.lst", "img_id_map_dev.pkl"])
def test_bundled_values_match_the_real_files(shared_data, name):
    entry = bundled_manifests()["clickture"].file(name)
    digests = hash_file(shared_data / name)
    assert mismatch(entry.checksum, digests) is None
    assert entry.size is not None and entry.sha256 is not None


def test_installed_package_finds_its_manifests(tmp_path):
    """Build the wheel, install it alone in a folder, and load the manifests from there."""
    source, wheel_dir, target = tmp_path / "src", tmp_path / "wheel", tmp_path / "site"
    for part in ("amc_data", "cli", "manifests"):  # a copy: building writes beside the sources
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheel_dir, source],
        check=True,
        cwd=tmp_path,
    )
    [wheel] = wheel_dir.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "amc_data").rglob("*.py")}
    assert sources <= set(names), f"the wheel lacks {sorted(sources - set(names))}"
    assert "amc_data/manifests/clickture.toml" in names
    assert "amc_data/manifests/coco.toml" in names
    subprocess.run([*pip, "install", "--no-deps", "-t", target, wheel], check=True)
    code = (
        "from amc_data.fetching.manifest import bundled_manifests as b; print(b()['coco'].source)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target))


GOOD = {"name": "f.bin", "urls": ["https://example.org/f.bin"]}


@pytest.mark.parametrize(
    ("files", "key", "words"),
    [
        ([{**GOOD, "sha265": "ab"}], "files[0].sha265", "unknown key"),
        ([{**GOOD, "sha256": "xyz"}], "files[0].sha256", "64 hexadecimal"),
        ([{**GOOD, "git_blob_sha1": "a" * 39}], "files[0].git_blob_sha1", "40 hexadecimal"),
        ([{"name": "f.bin"}], "files[0].urls", "non-empty list"),
        ([{**GOOD, "urls": ["ftp://x/y"]}], "files[0].urls[0]", "http(s) URL"),
        ([{**GOOD, "name": "../f.bin"}], "files[0].name", "plain file name"),
        ([{**GOOD, "name": ".hidden"}], "files[0].name", "plain file name"),
        ([{**GOOD, "name": "checksums.json"}], "files[0].name", "plain file name"),
        ([{**GOOD, "name": "amc-data.lock.json"}], "files[0].name", "plain file name"),
        ([{**GOOD, "urls": ["http://h/a b"]}], "files[0].urls[0]", "http(s) URL"),
        ([GOOD, {**GOOD}], "files[1].name", "listed twice"),
        ([], "files", "one or more"),
    ],
)
def test_manifest_errors_name_the_file_and_the_key(tmp_path, files, key, words):
    path = write_manifest(tmp_path / "bad.toml", "bad", files)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    message = str(err.value)
    assert str(path) in message and f"`{key}`" in message and words in message


def test_manifest_size_and_dataset_name_checked(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('name = "x"\n[[files]]\nname = "a"\nurls = ["http://h/a"]\nsize = -1\n')
    with pytest.raises(ManifestError, match=r"`files\[0\]\.size`"):
        load_manifest(path)
    path.write_text('name = "a/b"\n[[files]]\nname = "a"\nurls = ["http://h/a"]\n')
    with pytest.raises(ManifestError, match="`name`"):
        load_manifest(path)
    path.write_text("name = \n")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="Cannot read"):
        load_manifest(tmp_path / "absent.toml")


def test_resolve_manifests(tmp_path):
    assert [m.name for m in resolve_manifests()] == ["clickture", "coco"]
    with pytest.raises(ConfigError, match="Known datasets: clickture, coco"):
        resolve_manifests(["flickr"])
    own = write_manifest(tmp_path / "coco.toml", "coco", [GOOD])
    # A given manifest replaces the bundled one of its name; alone, it is the whole selection.
    [given] = resolve_manifests(manifest_paths=[own])
    assert given.source == str(own) and not given.bundled
    both = resolve_manifests(["clickture", "coco"], [own])
    assert [m.bundled for m in both] == [True, False]


def test_checksum_record_records_and_merges(tmp_path):
    manifest = load_manifest(
        write_manifest(
            tmp_path / "m.toml",
            "m",
            [GOOD, {**GOOD, "name": "g.bin", "git_blob_sha1": "a" * 40}],
        )
    )
    folder = tmp_path / "m"
    assert expected_checksums(folder, manifest)["f.bin"] == FileChecksum(source="none")
    sha = hashlib.sha256(b"x").hexdigest()
    record_checksum(folder, "f.bin", 1, sha, "https://example.org/f.bin")
    record_checksum(folder, "g.bin", 2, sha, "here")
    assert read_checksums(folder)["f.bin"] == FileChecksum(size=1, sha256=sha, source="recorded")
    expected = expected_checksums(folder, manifest)
    assert expected["f.bin"].source == "recorded" and expected["f.bin"].has_hash
    assert expected["g.bin"] == FileChecksum(2, sha, "a" * 40, source="manifest")
    raw = json.loads((folder / CHECKSUMS_FILE_NAME).read_text())
    assert raw["files"]["f.bin"]["origin"] == "https://example.org/f.bin"
    assert not (folder / LEGACY_CHECKSUMS_FILE_NAME).exists()


def _legacy(folder: Path, records: dict[str, tuple[int, str]]) -> Path:
    """A checksum record under its old name, as an earlier amc-data wrote it."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        name: {"size": size, "sha256": sha, "origin": "old"}
        for name, (size, sha) in records.items()
    }
    path = folder / LEGACY_CHECKSUMS_FILE_NAME
    path.write_text(json.dumps({"format": 1, "files": files}))
    return path


def test_legacy_checksum_file_is_read_then_migrated(tmp_path):
    folder = tmp_path / "m"
    old_sha, new_sha = "1" * 64, "2" * 64
    legacy = _legacy(folder, {"a.zip": (10, old_sha), "b.zip": (20, old_sha)})
    # Read as it is: verify and info see the old records without anything being written.
    assert read_checksums(folder)["a.zip"] == FileChecksum(10, old_sha, source="recorded")
    assert not (folder / CHECKSUMS_FILE_NAME).exists()
    # A new record moves every old record into checksums.json and retires the old file.
    record_checksum(folder, "b.zip", 21, new_sha, "new")
    assert not legacy.exists()
    records = json.loads((folder / CHECKSUMS_FILE_NAME).read_text())["files"]
    assert records["a.zip"]["sha256"] == old_sha and records["a.zip"]["origin"] == "old"
    assert records["b.zip"]["sha256"] == new_sha  # the new record wins
    # migrate_checksums alone does the same, and is a no-op without a legacy file.
    other = tmp_path / "n"
    _legacy(other, {"c.zip": (5, old_sha)})
    migrate_checksums(other)
    assert read_checksums(other) == {"c.zip": FileChecksum(5, old_sha, source="recorded")}
    assert sorted(p.name for p in other.iterdir() if not p.name.endswith(".lock")) == [
        CHECKSUMS_FILE_NAME
    ]
    migrate_checksums(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_malformed_checksum_record_is_refused_not_overwritten(tmp_path):
    (tmp_path / CHECKSUMS_FILE_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="delete it"):
        read_checksums(tmp_path)
    with pytest.raises(ManifestError):
        record_checksum(tmp_path, "f", 1, "0" * 64, "x")
    assert (tmp_path / CHECKSUMS_FILE_NAME).read_text() == "{not json"


def test_dataset_name_with_a_trailing_newline_is_refused(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('name = "coco\\n"\n[[files]]\nname = "a"\nurls = ["http://h/a"]\n')
    with pytest.raises(ManifestError, match="`name`"):
        load_manifest(path)


def test_nul_in_a_file_name_is_a_one_line_manifest_error(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('name = "m"\n[[files]]\nname = "a\\u0000b.zip"\nurls = ["http://h/a"]\n')
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    message = str(err.value)
    assert "`files[0].name`" in message and "'a\\x00b.zip'" in message
    assert "\n" not in message and "\x00" not in message


def test_git_blob_sha1_matches_git(shared_data):
    # Values computed by git itself (`git hash-object`); streamed in uneven pieces.
    data = (shared_data / "clickture-dev.lst").read_bytes()
    hasher = StreamHasher(git_size=len(data))
    for start in range(0, len(data), 99_991):
        hasher.update(data[start : start + 99_991])
    assert hasher.digests().git_blob_sha1 == "1bd4325f2791320e1543c317bc06642119a18bf1"
    assert hash_file(shared_data / "img_id_map_dev.pkl").git_blob_sha1 == (
        "f4a1e1b8f6147066d5728699825213ed302ff621"
    )


def test_mismatch_names_each_difference():
    expected = FileChecksum(size=3, sha256="a" * 64, git_blob_sha1="b" * 40, source="manifest")
    actual = StreamHasher(git_size=4)
    actual.update(b"abcd")
    text = mismatch(expected, actual.digests())
    assert "size: expected 3 bytes, found 4 bytes" in text
    assert "sha256: expected " + "a" * 64 in text and "git blob sha1" in text
    assert mismatch(FileChecksum(), actual.digests()) is None


@pytest.mark.parametrize(
    ("held", "size", "resumable", "action"),
    [
        (0, 100, True, Action.DOWNLOAD),
        (10, 100, True, Action.RESUME),
        (10, None, True, Action.RESUME),
        (10, 100, False, Action.DOWNLOAD),  # no validator: the held bytes cannot be trusted
        (100, 100, True, Action.DOWNLOAD),  # complete but unverified, or too long: start over
        (150, 100, True, Action.DOWNLOAD),
    ],
)
def test_decide(held, size, resumable, action):
    assert decide(partial_bytes=held, expected_size=size, resumable=resumable) is action


def test_optional_files_are_left_out_unless_their_group_is_asked_for(tmp_path):
    from amc_data.fetching.manifest import load_manifest, resolve_manifests

    path = tmp_path / "m.toml"
    path.write_text(
        'name = "toy"\n'
        '[[files]]\nname = "a.zip"\nurls = ["https://example.org/a.zip"]\n'
        '[[files]]\nname = "big.zip"\noptional = "precomp"\nurls = ["https://example.org/b"]\n'
    )
    assert load_manifest(path).file("big.zip").optional == "precomp"
    plain = resolve_manifests(["toy"], [path])
    assert [e.name for e in plain[0].files] == ["a.zip"]
    asked = resolve_manifests(["toy"], [path], with_optional=["precomp"])
    assert [e.name for e in asked[0].files] == ["a.zip", "big.zip"]
    with pytest.raises(ConfigError, match="optional group 'nope'; the groups there are: precomp"):
        resolve_manifests(["toy"], [path], with_optional=["nope"])
    path.write_text(
        'name = "toy"\n[[files]]\nname = "a"\noptional = "Has Space"\nurls = ["https://e.org/a"]\n'
    )
    with pytest.raises(ManifestError, match=r"files\[0\]\.optional"):
        load_manifest(path)


def test_the_bundled_coco_manifest_lists_scan_precomp_as_optional():
    from amc_data.fetching.manifest import bundled_manifests, resolve_manifests

    coco = bundled_manifests()["coco"]
    assert coco.file("data.zip").optional == "precomp"
    assert "data.zip" not in [e.name for e in resolve_manifests(["coco"])[0].files]

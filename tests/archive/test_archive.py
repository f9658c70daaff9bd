"""The safe archive reader and the safe pickle loader, on real zip files and real pickles."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from amc_data.archive import (
    ArchiveLimits,
    DirectoryArchive,
    MemberLayout,
    ZipArchive,
    find_layout,
    load_id_map,
    open_archive,
    repeated_rows,
)
from amc_data.errors import ArchiveError, InputError, UnsafePickleError

CONTENT = {
    "keywords_dev/00000001.json": b'{"tagging": {"keywords": ["white sink", "WC"]}}',
    "keywords_dev/00000002.json": b'{"tagging": {"keywords": []}}',
    "keywords_dev/caf\u00e9.json": '{"tagging": {"keywords": ["caf\u00e9"]}}'.encode(),
    "dataset.json": b'{"images": []}' * 500,
}


def write_zip(path: Path, members: dict[str, bytes], **kwargs) -> Path:
    with zipfile.ZipFile(path, "w", **kwargs) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_reads_every_member_exactly_as_zipfile_does(tmp_path, compression):
    path = write_zip(tmp_path / "a.zip", CONTENT, compression=compression)
    with ZipArchive(path) as archive, zipfile.ZipFile(path) as reference:
        assert sorted(m.name for m in archive.members()) == sorted(CONTENT)
        for name in CONTENT:
            assert archive.read(name) == reference.read(name) == CONTENT[name]
        streamed = {member.name: data for member, data in archive.iter_members()}
    assert streamed == CONTENT


def test_reads_zip64_archives(tmp_path):
    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in CONTENT.items():
            with archive.open(name, "w", force_zip64=True) as member:
                member.write(data)
    with ZipArchive(path) as archive:
        assert {m.name: archive.read_member(m) for m in archive.members()} == CONTENT


def test_reads_archives_with_bytes_prepended(tmp_path):
    """Self-extracting archives carry a stub before the zip; offsets shift alike."""
    plain = write_zip(tmp_path / "plain.zip", CONTENT, compression=zipfile.ZIP_DEFLATED)
    shifted = tmp_path / "shifted.zip"
    shifted.write_bytes(b"#!/bin/sh\nexit 0\n" * 10 + plain.read_bytes())
    with ZipArchive(shifted) as archive:
        assert archive.read("dataset.json") == CONTENT["dataset.json"]


def test_junk_entries_are_left_out_and_wrapping_folders_found(tmp_path):
    members = {f"wrap/{name}": data for name, data in CONTENT.items()}
    members["__MACOSX/wrap/._dataset.json"] = b"junk"
    members["wrap/.DS_Store"] = b"junk"
    path = write_zip(tmp_path / "w.zip", members)
    with ZipArchive(path) as archive:
        assert archive.top_folders() == ["wrap"]
        assert all("MACOSX" not in m.name and "DS_Store" not in m.name for m in archive.members())
        layout = find_layout(archive, ["keywords_dev/00000001.json", "dataset.json"])
        assert layout.name("dataset.json") == "wrap/dataset.json"
    unwrapped = write_zip(tmp_path / "u.zip", CONTENT)
    with ZipArchive(unwrapped) as archive:
        layout = find_layout(archive, ["keywords_dev/00000001.json"])
        assert layout.name("keywords_dev/x.json") == "keywords_dev/x.json"
    flat = write_zip(tmp_path / "flat.zip", {"00000001.json": b"{}", "00000002.json": b"{}"})
    with ZipArchive(flat) as archive:
        layout = find_layout(archive, ["keywords_dev/00000001.json", "keywords_dev/00000002.json"])
        assert layout.name("keywords_dev/00000009.json") == "00000009.json"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/cron.d/evil", "absolute path"),
        ("keywords_dev/../../evil.json", "'..'"),
        ("C:/Windows/evil.json", "absolute path"),
    ],
)
def test_unsafe_member_names_refuse_the_whole_archive(tmp_path, name, reason):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("keywords_dev/00000001.json", b"{}")
        archive.writestr(zipfile.ZipInfo(name), b"owned")
    with pytest.raises(ArchiveError) as caught, ZipArchive(path) as archive:
        archive.member("keywords_dev/00000001.json")
    message = str(caught.value)
    assert str(path) in message
    assert name in message
    assert reason in message
    assert not (tmp_path / "evil.json").exists()


def test_duplicate_member_names_are_refused(tmp_path):
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning):
        archive.writestr("dataset.json", b"one")
        archive.writestr("dataset.json", b"two")
    with pytest.raises(ArchiveError, match="two members of the same name"):
        ZipArchive(path).member("dataset.json")


def test_lookups_stay_exact_when_every_name_hash_collides(tmp_path, monkeypatch):
    """Names are found through 64-bit hash keys; a collision must never give a wrong answer."""
    import amc_data.archive.members

    def collide(names):
        return np.zeros(names.size, dtype=np.uint64)

    monkeypatch.setattr(amc_data.archive.members, "name_keys", collide)
    path = write_zip(tmp_path / "a.zip", CONTENT, compression=zipfile.ZIP_DEFLATED)
    with ZipArchive(path) as archive:
        for name, data in CONTENT.items():
            assert archive.read(name) == data
        assert "keywords_dev/00000003.json" not in archive
        locations = archive.locations(["dataset.json", "nope", "keywords_dev/00000002.json"])
        assert (locations[:, 2] >= 0).tolist() == [True, False, True]
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as out, pytest.warns(UserWarning):
        out.writestr("a.json", b"1")
        out.writestr("b.json", b"2")
        out.writestr("a.json", b"3")
    with pytest.raises(ArchiveError, match="two members of the same name") as caught:
        ZipArchive(dup).member("b.json")
    assert "a.json" in str(caught.value)
    lines = np.array([b"0001", b"0002", b"0001", b"0003", b"0002"])
    assert repeated_rows(lines).tolist() == [2, 4]


def test_zip_bomb_ratio_and_size_caps(tmp_path):
    path = write_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(8 << 20)}, compression=8)
    with pytest.raises(ArchiveError, match=r"compression ratio .* zip bomb") as caught:
        ZipArchive(path).member("zeros.bin")
    assert "zeros.bin" in str(caught.value)
    limits = ArchiveLimits(max_total_size=1000)
    path = write_zip(tmp_path / "big.zip", {"a": b"x" * 600, "b": b"y" * 600})
    with pytest.raises(ArchiveError, match="over the cap of 1,000"):
        ZipArchive(path, limits).member("a")
    with pytest.raises(ArchiveError, match="for one member"):
        ZipArchive(path, ArchiveLimits(max_member_size=500)).member("a")


def _central_entry_offset(data: bytes, name: bytes) -> int:
    """Where the central-directory header of member `name` starts (its name follows 46 bytes)."""
    return data.rindex(name) - 46


def test_member_inflating_past_its_declared_size_is_refused(tmp_path):
    """A directory that under-declares a member's size cannot make us inflate more."""
    path = write_zip(tmp_path / "lying.zip", {"dataset.json": b"A" * 5000}, compression=8)
    data = bytearray(path.read_bytes())
    entry = _central_entry_offset(bytes(data), b"dataset.json")
    assert data[entry : entry + 4] == b"PK\x01\x02"
    struct.pack_into("<L", data, entry + 24, 100)  # uncompressed size field
    path.write_bytes(bytes(data))
    expected = r"inflates to [\d,]+ bytes or more where its directory says 100"
    with pytest.raises(ArchiveError, match=expected):
        ZipArchive(path).read("dataset.json")


def test_damaged_member_names_archive_and_member(tmp_path):
    path = write_zip(tmp_path / "crc.zip", CONTENT, compression=zipfile.ZIP_DEFLATED)
    with ZipArchive(path) as archive:
        member = archive.member("dataset.json")
        assert member is not None
        data_start = member.offset + 30 + len(b"dataset.json")
    data = bytearray(path.read_bytes())
    data[data_start + member.compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError) as caught, ZipArchive(path) as archive:
        archive.read("dataset.json")
    assert "dataset.json" in str(caught.value) and str(path) in str(caught.value)
    assert "CRC" in str(caught.value) or "damaged compressed data" in str(caught.value)
    with ZipArchive(path) as archive:  # the other members stay readable
        assert archive.read("keywords_dev/00000001.json") == CONTENT["keywords_dev/00000001.json"]


@pytest.mark.parametrize(
    "payload", [b"", b"<!DOCTYPE html><html>quota exceeded</html>", b"PK\x03\x04truncated"]
)
def test_not_a_zip_is_a_clear_error(tmp_path, payload):
    path = tmp_path / "keywords_dev.zip"
    path.write_bytes(payload)
    with pytest.raises(ArchiveError, match=r"keywords_dev\.zip") as caught:
        ZipArchive(path).member("x")
    assert "fetch it again" in str(caught.value)


def test_truncated_archive_is_refused(tmp_path):
    path = write_zip(tmp_path / "cut.zip", CONTENT, compression=zipfile.ZIP_DEFLATED)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ArchiveError, match=r"cut\.zip"):
        ZipArchive(path).member("dataset.json")


def test_encrypted_members_are_refused(tmp_path):
    path = write_zip(tmp_path / "enc.zip", {"secret.json": b"{}"})
    data = bytearray(path.read_bytes())
    entry = _central_entry_offset(bytes(data), b"secret.json")
    struct.pack_into("<H", data, entry + 8, 1)  # general-purpose flag: encrypted
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="encrypted"):
        ZipArchive(path).read("secret.json")


def test_archive_pickles_without_its_directory_and_reads_in_the_copy(tmp_path):
    path = write_zip(tmp_path / "p.zip", CONTENT, compression=zipfile.ZIP_DEFLATED)
    archive = ZipArchive(path)
    member = archive.member("dataset.json")
    copy = pickle.loads(pickle.dumps(archive))
    assert len(pickle.dumps(archive)) < 500
    assert copy.read_member(member) == CONTENT["dataset.json"]


def test_a_folder_stands_in_for_its_archive(tmp_path):
    for name, data in CONTENT.items():
        (tmp_path / "unzipped" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "unzipped" / name).write_bytes(data)
    archive = open_archive(tmp_path / "unzipped")
    assert isinstance(archive, DirectoryArchive)
    assert archive.read("keywords_dev/00000001.json") == CONTENT["keywords_dev/00000001.json"]
    assert "keywords_dev/missing.json" not in archive
    assert archive.top_folders() == ["keywords_dev"]
    with pytest.raises(ArchiveError, match=r"\.\."):
        archive.read("../outside.json")
    with pytest.raises(ArchiveError, match="Run `amc-data fetch` first"):
        open_archive(tmp_path / "absent.zip")


# -- pickles -----------------------------------------------------------------------------------
def test_real_id_map_loads_with_no_globals_allowed(shared_data):
    path = shared_data / "img_id_map_dev.pkl"
    id_map = load_id_map(path)
    assert len(id_map) == 79_665
    assert id_map["img57159"] == 57159
    with open(path, "rb") as file:
        assert id_map == pickle.load(file)


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_a_command_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "img_id_map_dev.pkl"
    path.write_bytes(pickle.dumps({"img1": _RunsACommand(marker)}, protocol=2))
    # Sanity: the crafted pickle really does run a command when loaded normally.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_RunsACommand(probe), protocol=2))
    assert probe.exists()

    with pytest.raises(UnsafePickleError) as caught:
        load_id_map(path)
    assert str(path) in str(caught.value)
    assert "system" in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (pickle.dumps(["img1", 1], protocol=2), "not a dict"),
        (pickle.dumps({"img1": "1"}, protocol=2), "not a dict"),
        (pickle.dumps({"img1": 1}, protocol=2)[:-3], "not a readable pickle"),
    ],
)
def test_id_maps_of_the_wrong_shape_are_refused(tmp_path, payload, expected):
    path = tmp_path / "img_id_map.pkl"
    path.write_bytes(payload)
    with pytest.raises(InputError, match=expected) as caught:
        load_id_map(path)
    assert str(path) in str(caught.value)


def test_reading_never_extracts_to_disk(tmp_path):
    path = write_zip(tmp_path / "only.zip", CONTENT, compression=zipfile.ZIP_DEFLATED)
    with ZipArchive(path) as archive:
        assert len(list(archive.iter_members())) == len(CONTENT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only.zip"]


def _zip64_archive(path: Path, members: int) -> Path:
    """Over 65,535 members: zipfile writes zip64 end records, as for the real Lite archive."""
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(members):
            archive.writestr(f"keywords_lite/{i:08d}.json", b"{}")
    return path


def test_zip64_end_records_with_and_without_prepended_bytes(tmp_path):
    plain = _zip64_archive(tmp_path / "z64.zip", 65_600)
    shifted = tmp_path / "shifted.zip"
    shifted.write_bytes(b"#!/bin/sh\n" * 70 + plain.read_bytes())
    for path in (plain, shifted):
        with ZipArchive(path) as archive, zipfile.ZipFile(path) as reference:
            assert len(list(archive.members())) == 65_600
            name = "keywords_lite/00065599.json"
            assert archive.read(name) == reference.read(name) == b"{}"


def test_legacy_cp437_names_decode_as_zipfile_does(tmp_path):
    path = write_zip(tmp_path / "cp.zip", {"caf\u00e9.json": b"{}", "plain.json": b"[]"})
    data = bytearray(path.read_bytes())
    entry = _central_entry_offset(bytes(data), "caf\u00e9.json".encode())
    flags = struct.unpack_from("<H", data, entry + 8)[0]
    struct.pack_into("<H", data, entry + 8, flags & ~0x800)  # clear the UTF-8 flag
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as reference:
        expected = sorted(reference.namelist())
    with ZipArchive(path) as archive:
        assert sorted(m.name for m in archive.members()) == expected
        assert archive.read(expected[0]) == b"{}"


@pytest.mark.parametrize("damage", ["huge compressed size", "bad utf-8 name", "short zip64 extra"])
def test_damaged_directories_are_archive_errors(tmp_path, damage):
    path = write_zip(tmp_path / "d.zip", {"\u00e9t\u00e9.json": b"{}", "b.json": b"[]"})
    data = bytearray(path.read_bytes())
    entry = _central_entry_offset(bytes(data), "\u00e9t\u00e9.json".encode())
    if damage == "huge compressed size":
        struct.pack_into("<L", data, entry + 20, 0xFFFFFFF0)
    elif damage == "bad utf-8 name":
        data[entry + 46] = 0xFF  # the name's first byte, with the UTF-8 flag set
    else:  # sizes say "see the zip64 extra field", which is missing
        struct.pack_into("<L", data, entry + 24, 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"d\.zip"):
        ZipArchive(path).read("b.json")


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_members_read_as_zipfile_reads_them(tmp_path, compression):
    path = write_zip(tmp_path / "m.zip", {**CONTENT, "empty.json": b""}, compression=compression)
    with ZipArchive(path) as archive, zipfile.ZipFile(path) as reference:
        for name in [*CONTENT, "empty.json"]:
            assert archive.read(name) == reference.read(name)


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_inflation_stops_past_the_declared_size(tmp_path, compression):
    path = write_zip(tmp_path / "m.zip", {"zeros.bin": bytes(4 << 20)}, compression=compression)
    data = bytearray(path.read_bytes())
    struct.pack_into("<L", data, _central_entry_offset(bytes(data), b"zeros.bin") + 24, 1000)
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="inflates to 1,001 bytes or more where its directory"):
        ZipArchive(path).read("zeros.bin")


def test_other_compression_methods_are_refused_with_advice(tmp_path):
    path = write_zip(tmp_path / "d64.zip", {"a.json": b"{}"})
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, _central_entry_offset(bytes(data), b"a.json") + 10, 9)
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"compression method 9.*re-zip it with `zip -r`"):
        ZipArchive(path).read("a.json")


def test_member_layouts_map_expected_names_one_way(tmp_path):
    """`MemberLayout.name` (one name) and `.names` (a column of file names) are one rule."""
    files = np.array([b"00000001.json", b"caf\xc3\xa9.json"])
    for prefix in ("", "wrap/"):
        for strip in (False, True):
            layout = MemberLayout(prefix, strip)
            column = layout.names("keywords_dev", files).tolist()
            one_by_one = [
                layout.name(f"keywords_dev/{name.decode()}").encode() for name in files.tolist()
            ]
            assert column == one_by_one
            assert layout.name("dataset.json") == prefix + "dataset.json"
    assert MemberLayout("wrap/", True).name("keywords_dev/a.json") == "wrap/a.json"

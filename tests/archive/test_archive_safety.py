"""Hostile inputs to the archive readers: zip bombs built by hand, and unzipped folders holding
things that are not regular files."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from support.encode_helpers import small_coco

from amc_data.archive import DirectoryArchive, ZipArchive, open_archive
from amc_data.encoding.core import EncodeConfig, encode
from amc_data.errors import ArchiveError, InputError

# -- zips built byte by byte -------------------------------------------------------------------
_LOCAL = struct.Struct(
    "<4s5H3L2H"
)  # signature, version, flags, method, time, date, crc, sizes, lengths
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # ... crc, sizes, lengths, disk, attributes, offset
_END = struct.Struct("<4s4H2LH")


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def crafted_zip(
    path: Path,
    stored: list[tuple[str, bytes, int, int]],
    entries: list[tuple[str, int, int, int, int]],
) -> Path:
    """`stored`: local members written one after another, (name, deflated bytes, crc, size).
    `entries`: the central directory, (name, index into `stored`, compressed size, declared
    size, crc) each: entries may point at the same member or declare what they like."""
    body = bytearray()
    offsets = []
    for name, data, crc, size in stored:
        offsets.append(len(body))
        raw = name.encode()
        body += _LOCAL.pack(b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), size, len(raw), 0)
        body += raw + data
    directory = bytearray()
    for name, index, compressed_size, size, crc in entries:
        raw = name.encode()
        directory += _CENTRAL.pack(
            b"PK\x01\x02",
            20,
            20,
            0,
            8,
            0,
            0,
            crc,
            compressed_size,
            size,
            len(raw),
            0,
            0,
            0,
            0,
            0,
            offsets[index],
        )
        directory += raw
    end = _END.pack(b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), len(body), 0)
    path.write_bytes(bytes(body + directory + end))
    return path


def test_a_crafted_zip_reads_back_when_honest(tmp_path):
    """The builder itself: honest entries read back, as zipfile reads them."""
    data = b"keyword " * 1000
    packed = deflated(data)
    path = crafted_zip(
        tmp_path / "honest.zip",
        [("a.bin", packed, zlib.crc32(data), len(data))],
        [("a.bin", 0, len(packed), len(data), zlib.crc32(data))],
    )
    with ZipArchive(path) as archive, zipfile.ZipFile(path) as reference:
        assert archive.read("a.bin") == reference.read("a.bin") == data


def test_directory_entries_sharing_one_deflate_stream_are_refused(tmp_path):
    """The multiplying zip bomb: a few KB of zeros that inflate to 1 MiB, and 500 directory
    entries all pointing at it (500 MiB of inflation from a 40 KB file)."""
    zeros = bytes(1 << 20)
    packed = deflated(zeros)
    crc = zlib.crc32(zeros)
    entries = [(f"m{i:04d}.bin", 0, len(packed), len(zeros), crc) for i in range(500)]
    path = crafted_zip(tmp_path / "shared.zip", [("m0000.bin", packed, crc, len(zeros))], entries)
    assert path.stat().st_size < 50_000
    with pytest.raises(ArchiveError, match="share bytes") as caught:
        ZipArchive(path).member("m0001.bin")
    message = str(caught.value)
    assert "shared.zip" in message and "m0000.bin" in message and "zip bomb" in message


def test_a_member_whose_data_covers_the_next_one_is_refused(tmp_path):
    """The overlapping kind: each entry's data runs over the next member's header and data."""
    one, two = b"first " * 100, b"second " * 100
    stored = [
        ("one.txt", deflated(one), zlib.crc32(one), len(one)),
        ("two.txt", deflated(two), zlib.crc32(two), len(two)),
    ]
    covering = 30 + len("one.txt") + len(stored[0][1]) + 30 + len("two.txt") + len(stored[1][1])
    entries = [
        ("one.txt", 0, covering - 30 - len("one.txt"), len(one), zlib.crc32(one)),
        ("two.txt", 1, len(stored[1][1]), len(two), zlib.crc32(two)),
    ]
    path = crafted_zip(tmp_path / "overlap.zip", stored, entries)
    with pytest.raises(ArchiveError, match="share bytes"):
        ZipArchive(path).member("two.txt")


def test_data_running_into_the_central_directory_is_refused(tmp_path):
    data = b"x" * 100
    packed = deflated(data)
    entries = [("a.bin", 0, len(packed) + 40, len(data), zlib.crc32(data))]
    path = crafted_zip(tmp_path / "long.zip", [("a.bin", packed, zlib.crc32(data), 100)], entries)
    assert path.stat().st_size > 30 + 5 + len(packed) + 40  # inside the file, past the data
    with pytest.raises(ArchiveError, match="central directory"):
        ZipArchive(path).member("a.bin")


@pytest.mark.parametrize("how", ["read", "read_at"])
def test_inflation_stops_one_byte_past_the_declared_size(tmp_path, how):
    """32 MiB of zeros (32 KB deflated) declared as 1,000 bytes: inflation stops at 1,001 bytes
    and the member is refused, instead of inflating all 32 MiB first."""
    zeros = bytes(32 << 20)
    packed = deflated(zeros)
    assert len(packed) < 64 << 10
    entries = [("bomb.bin", 0, len(packed), 1000, zlib.crc32(zeros))]
    path = crafted_zip(tmp_path / "lying.zip", [("bomb.bin", packed, 0, 1000)], entries)
    with ZipArchive(path) as archive, pytest.raises(ArchiveError) as caught:
        if how == "read":
            archive.read("bomb.bin")
        else:
            archive.read_at("bomb.bin", archive.locations(["bomb.bin"])[0].tolist())
    assert "inflates to 1,001 bytes or more where its directory says 1,000" in str(caught.value)
    assert "bomb.bin" in str(caught.value)


class _Unseekable(io.RawIOBase):
    """A write-only stream without seek, so zipfile writes data descriptors after members."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return self.buffer.write(data)


def test_data_descriptors_and_folder_entries_are_not_overlaps(tmp_path):
    stream = _Unseekable()
    content = {"k/": b"", "k/a.json": b'{"a": 1}' * 50, "k/b.json": b'{"b": 2}' * 50}
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in content.items():
            out.writestr(name, data)
    path = tmp_path / "streamed.zip"
    path.write_bytes(stream.buffer.getvalue())
    with ZipArchive(path) as archive:
        assert archive.member("k/a.json").flags & 0x8  # written with a data descriptor
        assert {m.name: data for m, data in archive.iter_members()} == {
            name: data for name, data in content.items() if not name.endswith("/")
        }


# -- unzipped folders --------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "keywords_dev"
    (root / "keywords_dev").mkdir(parents=True)
    (root / "keywords_dev" / "00000001.json").write_bytes(b'{"tagging": {"keywords": []}}')
    return root


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


@needs_fifo
@pytest.mark.timeout(60)  # before the fix, this read blocked forever
def test_a_fifo_is_refused_by_name_and_never_opened_for_reading(folder):
    fifo = folder / "keywords_dev" / "00000002.json"
    os.mkfifo(fifo)
    archive = DirectoryArchive(folder)
    assert "keywords_dev/00000002.json" in archive  # present, so it is not "missing"
    with pytest.raises(ArchiveError) as caught:
        archive.read("keywords_dev/00000002.json")
    message = str(caught.value)
    assert str(fifo) in message and "FIFO" in message and "\n" not in message


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_a_link_to_a_device_is_refused(folder):
    link = folder / "keywords_dev" / "00000003.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(ArchiveError) as caught:
        DirectoryArchive(folder).read("keywords_dev/00000003.json")
    message = str(caught.value)
    assert str(link) in message and "/dev/zero" in message and "character device" in message


def test_a_dangling_link_is_a_one_line_error_naming_it(folder, tmp_path):
    link = folder / "keywords_dev" / "00000004.json"
    link.symlink_to(tmp_path / "gone.json")
    archive = DirectoryArchive(folder)
    assert (archive.locations(["keywords_dev/00000004.json"])[:, 2] >= 0).all()
    with pytest.raises(ArchiveError) as caught:
        archive.read("keywords_dev/00000004.json")
    message = str(caught.value)
    assert str(link) in message and "gone.json" in message and "does not exist" in message
    assert "\n" not in message


def test_a_link_to_a_regular_file_is_followed_and_a_folder_is_no_member(folder, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_bytes(b'{"tagging": {"keywords": ["red"]}}')
    (folder / "keywords_dev" / "00000005.json").symlink_to(target)
    (folder / "keywords_dev" / "00000006.json").mkdir()
    archive = open_archive(folder)
    assert archive.read_at("keywords_dev/00000005.json", [-1] * 6) == target.read_bytes()
    assert "keywords_dev/00000006.json" not in archive
    assert archive.member("keywords_dev/00000006.json") is None


def _unzipped_coco(tmp_path: Path):
    made = small_coco(tmp_path, per_split=10, seed=3)
    unzipped = made.folder / "keywords_coco"
    with zipfile.ZipFile(made.zip_path) as archive:
        archive.extractall(unzipped)
    made.zip_path.unlink()
    victim = next(image for image in made.images if image.split == "train")
    return made, unzipped / made.member(victim), victim


@pytest.mark.timeout(120)  # before the fix, the FIFO case blocked forever
@pytest.mark.parametrize("kind", ["dangling link", "fifo"])
def test_encode_names_a_member_that_is_no_regular_file(tmp_path, kind):
    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    _made, member, victim = _unzipped_coco(tmp_path)
    member.unlink()
    if kind == "fifo":
        os.mkfifo(member)
    else:
        member.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(InputError) as caught:
        encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1))
    message = str(caught.value)
    assert str(member) in message
    assert ("does not exist" if kind == "dangling link" else "FIFO") in message
    result = encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1, on_error="skip"))
    assert [item.item for item in result.skipped] == [victim.filename]

"""The id-map loader against pickles written by hand, opcode by opcode: plain dicts in every
protocol load; instructions that reach code, malformed plain data and lengths the file cannot
hold are `InputError`s that name the file, never raw exceptions or huge allocations."""

from __future__ import annotations

import os
import pickle
import tracemalloc

import pytest

from amc_data.archive import load_id_map
from amc_data.errors import InputError, UnsafePickleError

# The protocol-2 header and the instructions used below, spelled out.
PROTO2, PROTO4 = b"\x80\x02", b"\x80\x04"
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, MARK = b"}", b"]", b")", b"("
SETITEM, SETITEMS, REDUCE, BUILD, STOP = b"s", b"u", b"R", b"b", b"."


def binint1(value: int) -> bytes:
    return b"K" + bytes([value])


def short_binstring(text: str) -> bytes:  # how Python 2 pickles a str
    raw = text.encode()
    return b"U" + bytes([len(raw)]) + raw


def binunicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def write(tmp_path, payload: bytes):
    path = tmp_path / "img_id_map.pkl"
    path.write_bytes(payload)
    return path


PYTHON2_MAP = (
    PROTO2
    + EMPTY_DICT
    + b"q\x01"
    + MARK
    + short_binstring("img57159")
    + b"M"
    + (57159).to_bytes(2, "little")
    + short_binstring("img7")
    + binint1(7)
    + short_binstring("img123456")
    + b"J"
    + (123456).to_bytes(4, "little")
    + SETITEMS
    + STOP
)


def test_a_python2_style_map_written_by_hand_loads(tmp_path):
    expected = {"img57159": 57159, "img7": 7, "img123456": 123456}
    assert pickle.loads(PYTHON2_MAP, encoding="utf-8") == expected
    assert load_id_map(write(tmp_path, PYTHON2_MAP)) == expected


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_maps_load_in_every_protocol(tmp_path, protocol):
    expected = {f"img{i}": i * 7919 for i in range(300)} | {"caf\u00e9": 2**40}
    assert load_id_map(write(tmp_path, pickle.dumps(expected, protocol=protocol))) == expected


# Each hand-made pickle, what the message must say, and whether it is refused as unsafe.
MALFORMED = {
    "unhashable key": (
        PROTO2 + EMPTY_DICT + EMPTY_LIST + binint1(1) + SETITEM + STOP,
        "unhashable type: 'list'",
        False,
    ),
    "SETITEM on an int": (
        PROTO2 + binint1(1) + binint1(2) + binint1(3) + SETITEM + STOP,
        "'int' object does not support item assignment",
        False,
    ),
    "REDUCE": (PROTO2 + EMPTY_DICT + EMPTY_TUPLE + REDUCE + STOP, "REDUCE", True),
    "BUILD": (
        PROTO2 + EMPTY_DICT + EMPTY_DICT + binunicode("a") + binint1(1) + SETITEM + BUILD + STOP,
        "BUILD",
        True,
    ),
    "huge BINBYTES8": (
        PROTO4 + b"\x8e" + (1 << 60).to_bytes(8, "little") + b"abc" + STOP,
        "declares 1,152,921,504,606,846,976 bytes where 4 are left",
        False,
    ),
    "huge LONG_BINPUT": (
        PROTO2 + EMPTY_DICT + b"r" + (0x7FFFFFFF).to_bytes(4, "little") + STOP,
        "memo index 2,147,483,647",
        False,
    ),
    "STACK_GLOBAL": (
        PROTO4 + binunicode("os") + binunicode("system") + b"\x93" + STOP,
        "STACK_GLOBAL",
        True,
    ),
    "no STOP": (PROTO2 + EMPTY_DICT, "without a STOP", False),
    "not an opcode": (PROTO2 + EMPTY_DICT + b"\xff" + STOP, "0xff", False),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_pickles_are_input_errors_naming_the_file(tmp_path, case):
    payload, expected, unsafe = MALFORMED[case]
    path = write(tmp_path, payload)
    with pytest.raises(InputError) as caught:
        load_id_map(path)
    message = str(caught.value)
    assert str(path) in message and expected in message
    assert "fetch it again" in message and "\n" not in message
    assert isinstance(caught.value, UnsafePickleError) == unsafe


@pytest.mark.parametrize(
    "payload",
    [
        PROTO4 + b"\x8e" + (1 << 31).to_bytes(8, "little") + b"abc" + STOP,  # BINBYTES8
        PROTO4 + b"\x96" + (1 << 31).to_bytes(8, "little") + b"abc" + STOP,  # BYTEARRAY8
        PROTO2 + EMPTY_DICT + b"r" + (1 << 24).to_bytes(4, "little") + STOP,  # LONG_BINPUT
    ],
    ids=["BINBYTES8", "BYTEARRAY8", "LONG_BINPUT"],
)
def test_declared_sizes_never_allocate(tmp_path, payload):
    """The stock unpickler allocates what these declare (2 GiB, or a memo of 16M slots) before
    finding that the file does not hold it; the loader refuses them with a few KB."""
    path = write(tmp_path, payload)
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            load_id_map(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_pickle_that_imports_a_function_names_it_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = PROTO2 + b"cposix\nsystem\n" + binunicode(f"touch {marker}") + b"\x85" + REDUCE + STOP
    with pytest.raises(UnsafePickleError) as caught:
        load_id_map(write(tmp_path, payload))
    assert "posix.system" in str(caught.value) and "Nothing was run" in str(caught.value)
    assert not marker.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.timeout(60)  # a FIFO opened for reading would wait for a writer
def test_a_pickle_path_that_is_no_regular_file_is_refused(tmp_path):
    path = tmp_path / "img_id_map.pkl"
    os.mkfifo(path)
    with pytest.raises(InputError, match="not a regular file"):
        load_id_map(path)


def test_the_instruction_table_agrees_with_pickletools():
    """The walk's hand-written table: every instruction the standard library documents is
    either refused (it reaches code or outside buffers) or allowed with the argument size
    `pickletools` gives it; nothing is left out."""
    import pickletools

    from amc_data.archive import pickles

    widths = {
        pickletools.TAKEN_FROM_ARGUMENT1: -1,
        pickletools.TAKEN_FROM_ARGUMENT4: -4,
        pickletools.TAKEN_FROM_ARGUMENT4U: -4,
        pickletools.TAKEN_FROM_ARGUMENT8U: -8,
        pickletools.UP_TO_NEWLINE: pickles._TEXT_LINE,
    }
    reaching_code = {
        "GLOBAL",
        "STACK_GLOBAL",
        "REDUCE",
        "BUILD",
        "INST",
        "OBJ",
        "NEWOBJ",
        "NEWOBJ_EX",
        "EXT1",
        "EXT2",
        "EXT4",
        "PERSID",
        "BINPERSID",
        "NEXT_BUFFER",
        "READONLY_BUFFER",
    }
    for op in pickletools.opcodes:
        kind = pickles._KINDS[op.code.encode("latin-1")[0]]
        if op.name in reaching_code:
            assert kind == pickles._CODE, op.name
        elif op.arg is None:
            assert kind == pickles._NONE, op.name
        else:
            assert kind == (op.arg.n if op.arg.n >= 0 else widths[op.arg.n]), op.name
    assert sum(kind != pickles._UNKNOWN for kind in pickles._KINDS) == len(pickletools.opcodes)

"""Loading the authors' id-map pickles (`img_id_map*.pkl`) as plain data, safely.

A pickle is a program for a small stack machine; some of its instructions import and call
objects (that is how a pickle runs code) and some allocate what their argument declares before
checking that the file holds it. So the file is walked first, instruction by instruction,
without building anything: only instructions that build plain data (strings, numbers, lists,
tuples, dicts, sets) are allowed, every declared length must fit in what is left of the file,
and memo indexes must stay small. Only then does the stock unpickler (fast, in C) load it,
with globals refused once more; anything it still finds wrong is an `InputError`.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from ..errors import InputError, UnsafePickleError
from .folder import read_regular_file

__all__ = ["load_id_map"]

# Instructions that build plain data, by the size of their argument: a fixed number of bytes,
# a little-endian length of that many bytes followed by that many bytes, or a text line.
_NO_ARGUMENT = frozenset(b"(.012N}d]laets)u\x85\x86\x87\x88\x89\x8f\x90\x91\x94")
_FIXED = {
    ord("K"): 1,
    ord("M"): 2,
    ord("J"): 4,
    ord("G"): 8,  # BININT1, BININT2, BININT, BINFLOAT
    ord("h"): 1,
    ord("j"): 4,  # BINGET, LONG_BINGET
    ord("q"): 1,
    ord("r"): 4,  # BINPUT, LONG_BINPUT
    0x80: 1,
    0x95: 8,  # PROTO, FRAME
}
_COUNTED = {
    ord("U"): 1,
    ord("T"): 4,
    0x8C: 1,
    ord("X"): 4,
    0x8D: 8,  # str (Python 2 and 3)
    ord("C"): 1,
    ord("B"): 4,
    0x8E: 8,
    0x96: 8,  # bytes, bytearray
    0x8A: 1,
    0x8B: 4,  # LONG1, LONG4
}
_LINE = frozenset(b"ILFSVpg")  # protocol 0: INT, LONG, FLOAT, STRING, UNICODE, PUT, GET
_SIGNED_LENGTH = frozenset({ord("T"), 0x8B})
# Instructions that reach code: refused by name, before anything is loaded.
_REFUSED = {
    ord("c"): "GLOBAL (imports an object)",
    0x93: "STACK_GLOBAL (imports an object)",
    ord("R"): "REDUCE (calls an object)",
    ord("b"): "BUILD (sets an object's state)",
    ord("i"): "INST (builds a class instance)",
    ord("o"): "OBJ (builds a class instance)",
    0x81: "NEWOBJ (builds a class instance)",
    0x92: "NEWOBJ_EX (builds a class instance)",
    0x82: "EXT1 (imports a registered object)",
    0x83: "EXT2 (imports a registered object)",
    0x84: "EXT4 (imports a registered object)",
    ord("P"): "PERSID (asks the loader for an outside object)",
    ord("Q"): "BINPERSID (asks the loader for an outside object)",
    0x97: "NEXT_BUFFER (reads an out-of-band buffer)",
    0x98: "READONLY_BUFFER (reads an out-of-band buffer)",
}
_STOP, _FRAME, _LONG_BINPUT = ord("."), 0x95, ord("r")  # 1-byte BINPUT indexes are small
_BOUNDED = frozenset({_FRAME, _LONG_BINPUT})
# Each byte's kind, looked up once per instruction: -w for a w-byte length and that many bytes,
# w in 1..8 for a fixed w-byte argument, then no argument, a text line, code, not an opcode.
_NONE, _TEXT_LINE, _CODE, _UNKNOWN = 9, 10, 11, 12
_KINDS = [_UNKNOWN] * 256
for _opcode in _NO_ARGUMENT:
    _KINDS[_opcode] = _NONE
for _opcode, _width in _FIXED.items():
    _KINDS[_opcode] = _width
for _opcode, _width in _COUNTED.items():
    _KINDS[_opcode] = -_width
for _opcode in _LINE:
    _KINDS[_opcode] = _TEXT_LINE
for _opcode in _REFUSED:
    _KINDS[_opcode] = _CODE
_MAX_SIZE = 1 << 30  # read whole into memory; a million entries take about 13 MB


class _Refused(Exception):
    """An instruction that reaches code."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    """A second guard behind the walk: a class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"refused to load global {module}.{name}: the authors' id maps hold plain data only"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id: the authors' id maps hold plain data")


def _walk(data: bytes) -> None:
    """Check every instruction up to STOP; raise `_Refused` (code) or `ValueError` (damage).

    A million-entry map is some 3 million instructions, so the common ones (strings, small
    integers) take the fewest steps.
    """
    size = len(data)
    position = 0
    kinds = _KINDS
    while position < size:
        at = position
        kind = kinds[data[position]]
        position += 1
        if kind < 0:  # a length of -kind bytes, then that many bytes
            width = -kind
            if width == 1 and position < size:
                length = data[position]
            else:
                signed = data[at] in _SIGNED_LENGTH
                length = int.from_bytes(data[position : position + width], "little", signed=signed)
            position += width
            if length < 0 or position + length > size:
                raise ValueError(
                    f"the value at byte {at} declares {length:,} bytes where "
                    f"{max(size - position, 0):,} are left (truncated or crafted)"
                )
            position += length
        elif kind == _NONE:
            if data[at] == _STOP:
                return
        elif kind < _NONE:  # a fixed argument of `kind` bytes
            position += kind
            if data[at] in _BOUNDED:
                _check_bound(data, at, position, size)
        elif kind == _TEXT_LINE:
            end = data.find(b"\n", position)
            if end < 0:
                break
            if data[at] == ord("p") and not (data[position:end].isdigit() and end - position < 10):
                raise ValueError(f"the memo index at byte {at} is not a small number")
            if data[at] == ord("p") and int(data[position:end]) > size:
                raise ValueError(f"the memo index at byte {at} is beyond any real one")
            position = end + 1
        elif kind == _CODE:
            named = _named(data, position, data[at])
            raise _Refused(f"refused the instruction {_REFUSED[data[at]]} at byte {at}{named}")
        else:
            raise ValueError(f"byte {at} holds {data[at]:#04x}, which is no pickle instruction")
    raise ValueError("it ends without a STOP instruction (truncated?)")


def _check_bound(data: bytes, at: int, end: int, size: int) -> None:
    """FRAME's length must fit in the file; LONG_BINPUT's memo index must be no bigger than it
    (the unpickler sizes its memo table by the largest index)."""
    if end > size:
        raise ValueError("it ends without a STOP instruction (truncated?)")
    value = int.from_bytes(data[at + 1 : end], "little")
    if data[at] == _FRAME and value > size - end:
        raise ValueError(f"a frame at byte {at} declares {value:,} bytes")
    if data[at] == _LONG_BINPUT and value > size:
        raise ValueError(f"the memo index {value:,} at byte {at} is beyond any real one")


def _named(data: bytes, position: int, opcode: int) -> str:
    """`: module.name` for the instructions that carry the name of what they import."""
    if opcode not in (ord("c"), ord("i")):
        return ""
    module, _, rest = data[position : position + 400].partition(b"\n")
    name = rest.partition(b"\n")[0]
    return f": {module.decode('latin-1')}.{name.decode('latin-1')}"


def load_id_map(path: str | os.PathLike[str]) -> dict[str, int]:
    """Load an `img_id_map*.pkl` (a Python 2 pickle of `{"img57159": 57159, ...}`) as plain
    data: no instruction that could run code is allowed, so a tampered file runs nothing, and a
    damaged or crafted one is an `InputError` that names it, never a crash or a huge allocation.
    """
    path = Path(path)
    again = "This file is not the authors' pickle: delete it and fetch it again."
    data = read_regular_file(path, _MAX_SIZE, InputError, "id-map pickle")
    try:
        _walk(data)
    except _Refused as exc:
        raise UnsafePickleError(f"{path}: {exc}. Nothing was run. {again}") from None
    except ValueError as exc:
        raise InputError(f"{path} is not a readable pickle: {exc}. {again}") from None
    try:
        loaded = _NoGlobalsUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}. Nothing was run. {again}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        RecursionError,
    ) as exc:
        # Plain data put together wrongly: an unhashable key, an item set on a number, ...
        raise InputError(
            f"{path} is not a readable pickle ({type(exc).__name__}: {exc}). {again}"
        ) from None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and type(v) is int for k, v in loaded.items()
    ):
        raise InputError(
            f"{path} holds a {type(loaded).__name__}, not a dict of image names to integer ids."
        )
    return loaded

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
import stat
from pathlib import Path
from typing import Any

from ..errors import InputError, UnsafePickleError

__all__ = ["load_id_map"]

# Instructions that build plain data, by the size of their argument: a fixed number of bytes,
# a little-endian length of that many bytes followed by that many bytes, or a text line.
_NO_ARGUMENT = frozenset(b"(.012N}d]laets)u\x85\x86\x87\x88\x89\x8f\x90\x91\x94")
_FIXED = {
    ord("K"): 1, ord("M"): 2, ord("J"): 4, ord("G"): 8,  # BININT1, BININT2, BININT, BINFLOAT
    ord("h"): 1, ord("j"): 4,  # BINGET, LONG_BINGET
    ord("q"): 1, ord("r"): 4,  # BINPUT, LONG_BINPUT
    0x80: 1, 0x95: 8,  # PROTO, FRAME
}  # fmt: skip
_COUNTED = {
    ord("U"): 1, ord("T"): 4, 0x8C: 1, ord("X"): 4, 0x8D: 8,  # str (Python 2 and 3)
    ord("C"): 1, ord("B"): 4, 0x8E: 8, 0x96: 8,  # bytes, bytearray
    0x8A: 1, 0x8B: 4,  # LONG1, LONG4
}  # fmt: skip
_LINE = frozenset(b"ILFSVpg")  # protocol 0: INT, LONG, FLOAT, STRING, UNICODE, PUT, GET
_SIGNED_LENGTH = frozenset({ord("T"), 0x8B})
_LONG_BINPUT = ord("r")  # 1-byte BINPUT indexes are small by construction
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
_STOP = ord(".")


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
    """Check every instruction up to STOP; raise `_Refused` (code) or `ValueError` (damage)."""
    size = len(data)
    position = 0
    while position < size:
        opcode = data[position]
        at = position
        position += 1
        if opcode in _NO_ARGUMENT:
            if opcode == _STOP:
                return
            continue
        width = _FIXED.get(opcode)
        if width is not None:
            if position + width > size:
                raise ValueError(f"it ends inside the instruction at byte {at}")
            value = int.from_bytes(data[position : position + width], "little")
            position += width
            if opcode == 0x95 and value > size - position:  # FRAME
                raise ValueError(f"a frame at byte {at} declares {value:,} bytes")
            if opcode == _LONG_BINPUT and value > size:
                raise ValueError(f"the memo index {value:,} at byte {at} is beyond any real one")
            continue
        width = _COUNTED.get(opcode)
        if width is not None:
            if position + width > size:
                raise ValueError(f"it ends inside the instruction at byte {at}")
            signed = opcode in _SIGNED_LENGTH
            length = int.from_bytes(data[position : position + width], "little", signed=signed)
            position += width
            if length < 0 or length > size - position:
                raise ValueError(
                    f"the value at byte {at} declares {length:,} bytes where "
                    f"{size - position:,} are left (truncated or crafted)"
                )
            position += length
            continue
        if opcode in _LINE:
            end = data.find(b"\n", position)
            if end < 0:
                raise ValueError(f"it ends inside the instruction at byte {at}")
            if opcode == ord("p") and not (data[position:end].isdigit() and end - position < 12):
                raise ValueError(f"the memo index at byte {at} is not a small number")
            if opcode == ord("p") and int(data[position:end]) > size:
                raise ValueError(f"the memo index at byte {at} is beyond any real one")
            position = end + 1
            continue
        if opcode in _REFUSED:
            named = _named(data, position, opcode)
            raise _Refused(f"refused the instruction {_REFUSED[opcode]} at byte {at}{named}")
        raise ValueError(f"byte {at} holds {opcode:#04x}, which is no pickle instruction")
    raise ValueError("it ends without a STOP instruction (truncated?)")


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
    try:
        with open(path, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise InputError(f"{path} is not a regular file; expected the id-map pickle.")
            data = file.read()
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc}.") from exc
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
        pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
        KeyError, OverflowError, RecursionError,
    ) as exc:  # fmt: skip
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

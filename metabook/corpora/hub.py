"""Any Hugging Face dataset as a corpus: a hub name when you are online, a local copy when not.

``path`` is what :func:`datasets.load_dataset` takes (a hub name such as
``"banking77"``, a builder such as ``"parquet"`` with ``data_files``, or a
folder of data files), or a folder written by ``save_to_disk``, or one data
file (.parquet, .arrow, .csv, .tsv, .json, .jsonl, .txt). The result has a
``text`` column (from ``text_column``; a list of tokens is joined with spaces)
and every other column, with class ids turned into their names, so that a run
config's ``label_column`` can name any of them::

    >>> import pathlib, tempfile
    >>> import datasets
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "intents"
    >>> labels = datasets.ClassLabel(names=["alarm", "weather"])
    >>> datasets.Dataset.from_dict(
    ...     {"sentence": ["wake me at six", "will it rain"], "intent": [0, 1]},
    ...     features=datasets.Features({"sentence": datasets.Value("string"), "intent": labels}),
    ... ).save_to_disk(str(folder))
    >>> ds = load_hf_dataset(folder, text_column="sentence")
    >>> ds[1]
    {'text': 'will it rain', 'intent': 'weather'}

A run config names it as ``corpus: huggingface`` with
``corpus_options: {path: ..., split: train, text_column: ...}``; the held-out
classes can come from another split through ``test_corpus: huggingface`` and
``test_corpus_options: {..., split: test}``. Offline, a hub name fails with one
:class:`~metabook.errors.CorpusError` line that says how to make a local copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import datasets

from metabook.corpora.benchmarks import _is_unreachable, _offline, _offline_note
from metabook.corpora.files import PathLike
from metabook.errors import CorpusError

__all__ = ["load_hf_dataset"]

#: The ``datasets`` builder that reads a data file, by its suffix.
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "csv",
            ".json": "json", ".jsonl": "json", ".txt": "text"}


def load_hf_dataset(path: PathLike, name: str | None = None, split: str = "train",
                    text_column: str = "text",
                    data_files: PathLike | Sequence[PathLike] | Mapping[str, Any] | None = None,
                    revision: str | None = None) -> datasets.Dataset:
    """Split ``split`` of the dataset at ``path`` (configuration ``name``), with a ``text`` column.

    ``split`` is any split expression :func:`datasets.load_dataset` accepts
    (``"train"``, ``"train+validation"``, ``"test[:50%]"``); for a folder from
    ``save_to_disk`` it is one split or several joined with ``+``. Class ids
    (``ClassLabel`` columns) become their names. Errors name what was wrong
    and what to pass instead.
    """
    where = str(path)
    local = Path(path).expanduser()
    if local.is_dir() and ((local / "dataset_dict.json").is_file()
                           or (local / "state.json").is_file()):
        ds = _from_disk(local, split)
    else:
        if local.is_file():
            builder = BUILDERS.get("".join(local.suffixes[-1:]).lower())
            if builder is None:
                raise CorpusError(f"huggingface: cannot tell how to read {local.name}; name it "
                                  f"{', '.join(BUILDERS)}, or pass path= the datasets builder "
                                  f"(e.g. 'csv') and data_files= the file")
            if data_files is not None:
                raise CorpusError("huggingface: path= is already a data file; pass data_files= "
                                  "only with a builder name or a folder as path=")
            if not split.startswith("train"):
                raise CorpusError(
                    f"huggingface: {local} is one file, which datasets reads as the split "
                    f"'train', not {split!r}; pass split='train' (or a slice such as "
                    f"'train[:80%]'), or path= the builder ({builder!r}) and "
                    f"data_files={{'{split}': ...}}")
            path, data_files = builder, str(local)
        ds = _load(path, name, split, data_files, revision, where)
    return _with_text(ds, text_column, where)


def _from_disk(folder: Path, split: str) -> datasets.Dataset:
    """A split (or ``+``-joined splits) of a folder written by ``save_to_disk``."""
    try:
        saved = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise CorpusError(f"huggingface: {folder} looks like a save_to_disk folder but cannot be "
                          f"read ({str(err).splitlines()[0]}); save it again") from None
    if isinstance(saved, datasets.Dataset):
        return saved
    names = [s.strip() for s in split.split("+")]
    missing = [s for s in names if s not in saved]
    if missing:
        raise CorpusError(f"huggingface: {folder} has no split {missing[0]!r}; its splits are "
                          f"{list(saved)}: pass split= one of them (or several joined with +)")
    parts = [saved[s] for s in names]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _load(path: PathLike, name: str | None, split: str, data_files: Any, revision: str | None,
          where: str) -> datasets.Dataset:
    """:func:`datasets.load_dataset`, with its failures said in one line."""
    if isinstance(data_files, (str, Path)):
        data_files = str(data_files)
    elif isinstance(data_files, Mapping):
        data_files = {k: [str(f) for f in v] if isinstance(v, (list, tuple)) else str(v)
                      for k, v in data_files.items()}
    elif data_files is not None:
        data_files = [str(f) for f in data_files]
    try:
        return datasets.load_dataset(str(path), name, split=split, data_files=data_files,
                                     revision=revision)
    except (ValueError, KeyError) as err:  # an unknown split or configuration
        raise CorpusError(f"huggingface: {where}: {str(err).splitlines()[0]}") from None
    except FileNotFoundError as err:
        if Path(str(path)).expanduser().exists() or data_files is not None:
            raise CorpusError(f"huggingface: {where}: {str(err).splitlines()[0]}") from None
        raise _no_copy(where, "the Hugging Face Hub could not be reached" + _offline_note()
                       if _offline() else "it is neither a local file or folder nor a dataset "
                       "on the hub") from None
    except Exception as err:  # noqa: BLE001 - the hub's errors have no common base class
        if _offline() or _is_unreachable(err) or "offline" in str(err).lower():
            raise _no_copy(where, "the Hugging Face Hub could not be reached"
                           + _offline_note()) from None
        raise


def _no_copy(where: str, reason: str) -> CorpusError:
    return CorpusError(
        f"huggingface: cannot load {where!r}: {reason}. Where you are online, save a copy with "
        f"datasets.load_dataset({where!r}).save_to_disk('FOLDER') and pass path='FOLDER', or "
        f"pass path= a local .parquet, .csv or .jsonl file")


def _with_text(ds: datasets.Dataset, text_column: str, where: str) -> datasets.Dataset:
    """``ds`` with ``text`` from ``text_column`` and class ids as names."""
    if text_column not in ds.column_names:
        raise CorpusError(f"huggingface: {where} has no column {text_column!r}; its columns are "
                          f"{ds.column_names}: pass text_column= the one that holds the text")
    texts = ds[text_column]
    bad = next((t for t in texts if not (t is None or isinstance(t, str) or _words(t))), "")
    if bad != "":
        raise CorpusError(f"huggingface: column {text_column!r} of {where} holds "
                          f"{type(bad).__name__} values, not text; pass text_column= the column "
                          f"that holds the text")
    columns = {"text": ["" if t is None else t if isinstance(t, str) else " ".join(t)
                        for t in texts]}
    for column, feature in ds.features.items():
        if column in (text_column, "text"):  # the text is the column asked for, not "text"
            continue
        if isinstance(feature, datasets.ClassLabel):  # ids -> names; -1 (no label) -> ""
            columns[column] = [feature.int2str(i) if i is not None and i >= 0 else ""
                               for i in ds[column]]
        else:
            columns[column] = ds[column]
    return datasets.Dataset.from_dict(columns)


def _words(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(w, str) for w in value)

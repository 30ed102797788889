"""Loaders of public few-shot benchmarks: online when you are, local copies when not.

Each loader reads the benchmark's public file format and returns a
``datasets.DatasetDict`` with a ``text`` and a ``label`` column. Without
``data_files`` it downloads the public files; with ``data_files`` it reads
local copies in exactly that format, which is how the book's tests run it::

    >>> import json, pathlib, tempfile
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (tmp / "data_full.json").write_text(json.dumps(
    ...     {"train": [["wake me at six", "alarm"]], "val": [], "test": [["what time is it", "time"]]}))
    >>> dd = load_clinc150(data_files=tmp / "data_full.json")
    >>> dd["train"][0]
    {'text': 'wake me at six', 'label': 'alarm'}

When the machine is offline (the book's default: ``HF_DATASETS_OFFLINE=1``) a
download fails with one :class:`~metabook.errors.CorpusError` line that says to
pass ``data_files``.

=========  ===========================================  ============
benchmark  source                                       license
=========  ===========================================  ============
SIB-200    huggingface.co/datasets/Davlan/sib200        CC-BY-SA-4.0
CLINC150   github.com/clinc/oos-eval (data_full.json)   CC-BY-3.0
FewRel     github.com/thunlp/FewRel (``*_wiki.json``)   MIT
=========  ===========================================  ============
"""
from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping

import datasets

from metabook.corpora.files import PathLike, read_json
from metabook.errors import CorpusError

__all__ = ["load_sib200", "load_clinc150", "load_fewrel", "ENTITY_MARKERS",
           "SIB200_URL", "CLINC150_URL", "FEWREL_URLS"]

DataFiles = PathLike | Mapping[str, PathLike]

SIB200_URL = "hf://datasets/Davlan/sib200/data/{language}/{file}.tsv"
_SIB200_FILES = {"train": "train", "validation": "dev", "test": "test"}
CLINC150_URL = "https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_full.json"
FEWREL_URLS = {
    "train": "https://raw.githubusercontent.com/thunlp/FewRel/master/data/train_wiki.json",
    "validation": "https://raw.githubusercontent.com/thunlp/FewRel/master/data/val_wiki.json",
}
#: Markers put around the head (E1) and tail (E2) entity of a FewRel instance.
ENTITY_MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")

_LANGUAGE_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
_NETWORK_MODULES = {"httpx", "httpx2", "httpcore", "requests", "urllib3", "aiohttp"}


def _offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
               for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _is_unreachable(err: BaseException | None) -> bool:
    """Whether ``err`` (or what caused it) means the network could not be used."""
    while err is not None:
        if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror, urllib.error.URLError)):
            return True
        if type(err).__module__.split(".")[0] in _NETWORK_MODULES:
            return True
        err = err.__cause__ or err.__context__
    return False


def _offline_note() -> str:
    """Why a download was not tried, when that is the reason; else nothing."""
    return " (offline mode: HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set)" if _offline() else ""


def _unreachable(where: str, what: str, hint: str) -> CorpusError:
    reason = _offline_note()
    return CorpusError(f"could not reach {where} to download {what}{reason}; "
                       f"pass data_files=... with local copies ({hint})")


def _local_files(data_files: DataFiles, what: str) -> dict[str, Path]:
    """``data_files`` as ``{split: path}``; a single path is the ``train`` split."""
    files = dict(data_files) if isinstance(data_files, Mapping) else {"train": data_files}
    if not files:
        raise CorpusError(f"{what}: data_files is empty; pass a path or {{split: path}}")
    paths = {split: Path(p) for split, p in files.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise CorpusError(f"{what}: no file at {', '.join(missing)}")
    return paths


def _download(url: str, what: str) -> Path:
    """A cached copy of ``url`` (downloaded once into the datasets cache)."""
    name = url.rsplit("/", 1)[-1]
    target = Path(datasets.config.HF_DATASETS_CACHE) / "metabook" / what.lower() / name
    if target.is_file():
        return target
    host = url.split("/")[2]
    if _offline():
        raise _unreachable(host, what, f"{name} from {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except urllib.error.HTTPError as err:
        raise CorpusError(f"{what}: {url} answered HTTP {err.code}; pass data_files=... with "
                          "local copies") from None
    except OSError:  # URLError, refused connections, timeouts, unknown host
        raise _unreachable(host, what, f"{name} from {url}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    partial.write_bytes(payload)
    partial.replace(target)  # a half-written download never looks complete
    return target


# --- SIB-200 ----------------------------------------------------------------------------

def load_sib200(language: str, data_files: DataFiles | None = None) -> datasets.DatasetDict:
    """SIB-200 topic classification in ``language`` (a FLORES-200 code such as ``"nya_Latn"``).

    Columns: ``text``, ``label`` (one of seven topics), ``language`` and
    ``index_id``. The same ``index_id`` is the same sentence in every
    language, so split meta-training and evaluation by ``index_id``, or a
    model will have seen an evaluated sentence's label in another language.

    Online it reads ``train``/``dev``/``test`` TSV files (``index_id``,
    ``category``, ``text``) from huggingface.co/datasets/Davlan/sib200 into the
    splits ``train``/``validation``/``test``; ``data_files`` (a path, or
    ``{split: path}``) reads local copies in the same format.
    """
    if not _LANGUAGE_CODE.match(language):
        raise CorpusError(f"SIB-200: {language!r} is not a FLORES-200 code; codes look like "
                          "'eng_Latn', 'nya_Latn', 'zho_Hans'")
    if data_files is None:
        files: dict[str, str] = {split: SIB200_URL.format(language=language, file=name)
                                 for split, name in _SIB200_FILES.items()}
    else:
        files = {split: str(p) for split, p in _local_files(data_files, "SIB-200").items()}
    # The "Generating split" bars of a few hundred rows would only clutter a chapter's page.
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        # keep_default_na=False: a sentence such as "None" or "NA" stays text. The public files
        # are quoted as pandas writes them (a quote in a sentence is doubled): no QUOTE_NONE.
        raw = datasets.load_dataset("csv", data_files=files, delimiter="\t", keep_default_na=False)
    except Exception as err:  # datasets wraps parser and network errors in many types
        if data_files is None and _is_unreachable(err):
            raise _unreachable("the Hugging Face hub", f"SIB-200 ({language})",
                               "TSV files from huggingface.co/datasets/Davlan/sib200") from None
        if data_files is None and isinstance(err, FileNotFoundError):
            raise CorpusError(f"SIB-200 has no files for language {language!r} on the hub") from None
        cause: BaseException = err
        while cause.__cause__ is not None:  # datasets' message hides pandas', which names the line
            cause = cause.__cause__
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise CorpusError(f"SIB-200: cannot read {list(files.values())} as tab-separated "
                          f"index_id/category/text ({first_line})") from None
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    out = {}
    for split, ds in raw.items():
        missing = {"index_id", "category", "text"} - set(ds.column_names)
        if missing:
            raise CorpusError(f"SIB-200: the {split} file {files[split]} lacks the columns "
                              f"{sorted(missing)} (it has {ds.column_names})")
        out[split] = datasets.Dataset.from_dict({
            "text": [str(t) for t in ds["text"]],
            "label": [str(c) for c in ds["category"]],
            "language": [language] * len(ds),
            "index_id": list(ds["index_id"]),
        })
    return datasets.DatasetDict(out)


# --- CLINC150 ---------------------------------------------------------------------------

def load_clinc150(data_files: PathLike | None = None, include_oos: bool = False) -> datasets.DatasetDict:
    """CLINC150 intent classification: splits ``train``/``validation``/``test``, columns ``text``, ``label``.

    Reads the public ``data_full.json`` (keys ``train``, ``val``, ``test``, each a
    list of ``[text, intent]``; ``oos_train``/``oos_val``/``oos_test`` hold the
    out-of-scope queries, added with intent ``"oos"`` when ``include_oos``).
    ``data_files`` is the path to a local copy.
    """
    if data_files is None:
        path = _download(CLINC150_URL, "CLINC150")
    elif isinstance(data_files, Mapping):
        raise CorpusError("CLINC150 keeps every split in one file: pass the path of data_full.json")
    else:
        path = _local_files(data_files, "CLINC150")["train"]
    doc = read_json(path, "CLINC150")
    if not isinstance(doc, dict) or not {"train", "val", "test"} <= set(doc):
        raise CorpusError(f"CLINC150: {path} must be a JSON object with the lists "
                          "'train', 'val' and 'test'")
    out = {}
    for split, key in (("train", "train"), ("validation", "val"), ("test", "test")):
        pairs = list(doc[key]) + (list(doc.get(f"oos_{key}", [])) if include_oos else [])
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p)
                   for p in pairs):
            raise CorpusError(f"CLINC150: {path}: every item of {key!r} must be [text, intent]")
        out[split] = datasets.Dataset.from_dict(
            {"text": [t for t, _ in pairs], "label": [i for _, i in pairs]},
            features=datasets.Features({"text": datasets.Value("string"),
                                        "label": datasets.Value("string")}))
    return datasets.DatasetDict(out)


# --- FewRel -----------------------------------------------------------------------------

def _mark_entities(tokens: list[str], head: list[int], tail: list[int]) -> str:
    """``tokens`` joined by spaces, with E1 around the ``head`` positions and E2 around ``tail``."""
    before: dict[int, list[str]] = {}
    after: dict[int, list[str]] = {}
    for (start, end), positions in zip((ENTITY_MARKERS[:2], ENTITY_MARKERS[2:]), (head, tail)):
        before.setdefault(min(positions), []).append(start)
        after.setdefault(max(positions), []).append(end)
    out = []
    for i, token in enumerate(tokens):
        out += before.get(i, []) + [token] + after.get(i, [])
    return " ".join(out)


def _fewrel_split(path: Path) -> datasets.Dataset:
    doc = read_json(path, "FewRel")
    if not isinstance(doc, dict):
        raise CorpusError(f"FewRel: {path} must be a JSON object mapping each relation to its instances")
    rows: dict[str, list[str]] = {"text": [], "label": [], "head": [], "tail": []}
    for relation, instances in doc.items():
        if not isinstance(instances, list):
            raise CorpusError(f"FewRel: {path}: {relation!r} must map to a list of instances")
        for n, inst in enumerate(instances):
            try:
                tokens = [str(t) for t in inst["tokens"]]
                # h and t are [name, wikidata id, [[positions of mention 1], ...]]; the
                # first mention is the one marked.
                head, tail = inst["h"][2][0], inst["t"][2][0]
                if not head or not tail or max(head + tail) >= len(tokens) or min(head + tail) < 0:
                    raise IndexError("entity positions outside the sentence")
                text = _mark_entities(tokens, head, tail)
                names = (str(inst["h"][0]), str(inst["t"][0]))
            except (TypeError, KeyError, IndexError, ValueError) as err:
                raise CorpusError(f"FewRel: {path}: instance {n} of {relation!r} is not "
                                  f"{{tokens, h: [name, id, [[positions]]], t: ...}} ({err})") from None
            rows["text"].append(text)
            rows["label"].append(relation)
            rows["head"].append(names[0])
            rows["tail"].append(names[1])
    return datasets.Dataset.from_dict(rows)


def load_fewrel(data_files: DataFiles | None = None) -> datasets.DatasetDict:
    """FewRel 1.0 relation classification, one row per instance with the entities marked.

    Columns: ``text`` (tokens joined by spaces, the first mention of the head
    entity between ``[E1] [/E1]`` and of the tail between ``[E2] [/E2]``),
    ``label`` (the Wikidata relation id, e.g. ``"P931"``), ``head``, ``tail``.
    Online it reads ``train_wiki.json`` (64 relations) as ``train`` and
    ``val_wiki.json`` (16 relations) as ``validation``; ``data_files`` (a path,
    or ``{split: path}``) reads local files of the same format: a JSON object
    mapping each relation to a list of ``{"tokens", "h", "t"}``.

    >>> _mark_entities(["Paris", "is", "in", "France"], [0], [3])
    '[E1] Paris [/E1] is in [E2] France [/E2]'
    """
    if data_files is None:
        files = {split: _download(url, "FewRel") for split, url in FEWREL_URLS.items()}
    else:
        files = _local_files(data_files, "FewRel")
    return datasets.DatasetDict({split: _fewrel_split(path) for split, path in files.items()})

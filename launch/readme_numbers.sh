#!/usr/bin/env bash
# Regenerates the README's mini-study numbers, sentences and figures from a fresh run of the
# final code: the mini study in a new workdir, its report, then the README block and
# docs/mini_study_*.png rewritten from the results (python -m big_transfer.report --readme).
#   bash launch/readme_numbers.sh [WORKDIR]      (default: runs/mini_study_readme; about 6 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
wd="${1:-runs/mini_study_readme}"
if [ -e "$wd" ]; then
  echo "error: $wd exists; the README's numbers come from a fresh run (remove it or name another)" >&2
  exit 2
fi
python -m big_transfer.study --config=configs/mini/study.py --workdir="$wd"
python -m big_transfer.report --workdir="$wd" --readme=README.md

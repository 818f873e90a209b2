#!/usr/bin/env bash
# The GPU check (docs/deploy.md, "The GPU check"): versions, model load, engine bench, step cost and serving
# under load on one machine, printed as one JSON object on stdout; progress and logs go to stderr. Exit status
# 0 when every check held, 1 when one did not, 2 for a usage error. Every argument goes to
# `gorgon bench gpu-check` (see its --help), e.g.
#
#   scripts/gpu-check.sh --model lmsys/vicuna-7b-v1.3 --heads FasterDecoding/medusa-vicuna-7b-v1.3 > gpu-check.json
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$repository/.venv/bin/gorgon" ]]; then
    gorgon="$repository/.venv/bin/gorgon"
elif command -v gorgon >/dev/null; then
    gorgon="$(command -v gorgon)"
else
    echo "gpu-check: no gorgon command: run 'make install' in $repository, or install gorgon" >&2
    exit 2
fi
exec "$gorgon" bench gpu-check "$@"

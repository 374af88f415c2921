#!/usr/bin/env bash
# Install bbt's core (no extras) into a fresh venv and run what a user of it runs first:
# `import bbt`, `bbt --help`, a short `bbt tune` on the in-process mock, then `bbt eval` and
# `bbt predict` on that run. The dev venv has every extra, and an extra can bring what the core
# forgot to declare (uvicorn brought click, which typer >= 0.2x no longer does), so only a
# fresh core-only install shows that `pip install bbt` works.
#
# Usage: scripts/check_core_install.sh [highest|lowest]
#   highest  pip's normal resolution: the newest releases pyproject.toml allows.
#   lowest   uv's --resolution lowest-direct: the lowest release each bound of pyproject.toml
#            allows (dependencies of those at their newest), so a lower bound that lies is
#            caught here before a user meets it. uv comes from PyPI into a tools venv.
# PYTHON picks the interpreter (default python3). Everything lives in a temp dir, removed at
# exit; nothing is written to the source tree or the home directory.
set -euo pipefail

RESOLUTION=${1:-highest}
case "$RESOLUTION" in
highest | lowest) ;;
*)
    echo "usage: $0 [highest|lowest]" >&2
    exit 2
    ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bbt-core-$RESOLUTION-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Only the installed copy may answer: not the source tree on PYTHONPATH, not the caller's
# service settings (BBT_BASE_URL, BBT_API_KEY, ...), not their per-user key directory.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
while read -r var; do unset "$var"; done < <(compgen -e | grep '^BBT_' || true)
export BBT_HOME="$WORK/home"
cd "$WORK"

step() { printf '== core install (%s): %s\n' "$RESOLUTION" "$*"; }

VENV="$WORK/venv"
step "fresh venv with $("$PYTHON" --version)"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
if [[ "$RESOLUTION" == highest ]]; then
    step "pip install $ROOT (no extras)"
    "$PY" -m pip install -q "$ROOT"
else
    step "uv pip install --resolution lowest-direct $ROOT (no extras)"
    "$PYTHON" -m venv "$WORK/tools"
    "$WORK/tools/bin/python" -m pip install -q uv
    "$WORK/tools/bin/uv" pip install -q --python "$PY" --resolution lowest-direct "$ROOT"
fi
"$PY" -m pip list --format=freeze 2>/dev/null | grep -v -E '^(pip|setuptools)==' | tr '\n' ' '
echo

step "no extra was installed"
# Had one come in through a core dependency, the checks below would prove nothing.
"$PY" - <<'EOF'
import importlib.util, sys
extras = ["fastapi", "starlette", "uvicorn", "torch", "transformers", "matplotlib", "pytest"]
found = [m for m in extras if importlib.util.find_spec(m) is not None]
if found:
    sys.exit(f"the core install brought extras' modules: {', '.join(found)}")
EOF

BBT="$VENV/bin/bbt"
step "import bbt"
"$PY" -c "import bbt, bbt.cli, bbt.client, bbt.tuner, bbt.testing; print('bbt', bbt.__version__)"
step "the HTTP client over httpx (an in-process transport: no server extra needed)"
"$PY" - <<'EOF'
from bbt.client import Client
from bbt.server.mock import MockBackend
from bbt.testing import MOCK_BASE_URL, CoreTransport

with Client(MOCK_BASE_URL, transport=CoreTransport(MockBackend()), env_file=None) as client:
    assert client.health().status == "ok"
    assert client.tokenize(["it was great"]).ids
EOF
step "bbt --help, and each command's --help"
"$BBT" --help >/dev/null
for command in tune eval predict serve mock-server; do
    "$BBT" "$command" --help >/dev/null
done

step "bbt tune on the in-process mock (32 calls, n=5, d=20)"
RUN="$WORK/run"
"$BBT" tune --task mock --mock --mock-hidden-size 32 -n 5 -d 20 --popsize 8 --budget 32 \
    --eval-every 16 --seed 0 -q --out "$RUN"
test -f "$RUN/manifest.json"

step "bbt eval and bbt predict on that run"
printf 'text\tlabel\nit was great\t1\nit was terrible\t0\n' >"$WORK/dev.tsv"
"$BBT" eval "$RUN" --data "$WORK/dev.tsv" --mock | "$PY" -c \
    "import json, sys; m = json.load(sys.stdin); assert 'accuracy' in m, m; print(m)"
"$BBT" predict "$RUN" "it was great" "it was terrible" --mock | "$PY" -c \
    "import json, sys; rows = [json.loads(l) for l in sys.stdin]; assert len(rows) == 2, rows"

step "ok"

#!/usr/bin/env bash
# The newcomer test: README.md's commands, pasted in order on a fresh clone, must each exit 0.
#
#   scripts/newcomer.sh            # clones this checkout (REPO=... clones another)
#
# Clones REPO (default: this checkout, its committed HEAD) into a temporary directory and
# runs there, in README order, every ```bash block (one bash process per block, so
# `source .venv/bin/activate`, `&` and `kill %1` work as they do pasted into a terminal) and
# every ```python block (with the clone's .venv/bin/python, which the demo has built by
# then). Each command is printed with its time; the first that fails stops the script with
# its exit status. `make test` is left out: CI runs it just before this, and from here it
# would recurse. Nothing else is changed or shortened: the demo runs as a user runs it.
# KEEP=1 keeps the temporary directory; DRY=1 prints the extracted blocks and runs nothing. ../shared is not needed (the demo's data is shipped).
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
REPO="${REPO:-$HERE}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/bbt-newcomer.XXXXXX")"
cleanup() {
    if [[ "${KEEP:-0}" == 1 ]]; then echo "newcomer: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

started=$(date +%s)
git clone --quiet "$REPO" "$TMP/bbt"
cd "$TMP/bbt"
echo "newcomer: cloned $REPO ($(git rev-parse --short HEAD)) into $TMP/bbt"

# README.md -> one script per block: blocks/NNN.bash or blocks/NNN.py. In a bash block a
# command is a line plus its backslash continuations; each is echoed and timed.
mkdir -p "$TMP/blocks"
awk -v dir="$TMP/blocks" '
    function flush_cmd() {
        if (cmd == "") return
        if (cmd ~ /^make test([ \t]|$)/) {
            printf "echo %c--- skipped (CI runs it before this): %s%c\n", 39, cmd, 39 > out
        } else {
            gsub(/\047/, "\047\\\047\047", cmd)  # quote for echo
            printf "echo %c+ %s%c; t0=$(date +%%s)\n", 39, cmd, 39 > out
            gsub(/\047\\\047\047/, "\047", cmd)
            printf "%s\n", cmd > out
            printf "echo \"  ($(( $(date +%%s) - t0 )) s)\"\n" > out
        }
        cmd = ""
    }
    /^```bash[ \t]*$/ { n++; out = sprintf("%s/%03d.bash", dir, n); kind = "bash"
                        print "set -euo pipefail" > out
                        # a failed block leaves no server of its own behind (`bbt mock-server &`)
                        print "trap \"kill \\$(jobs -p) 2>/dev/null || true\" EXIT" > out; next }
    /^```python[ \t]*$/ { n++; out = sprintf("%s/%03d.py", dir, n); kind = "py"; next }
    /^```/ && kind != "" { if (kind == "bash") flush_cmd(); close(out); kind = ""; next }
    kind == "py" { print > out; next }
    kind == "bash" {
        line = $0
        if (cmd == "" && (line ~ /^[ \t]*#/ || line ~ /^[ \t]*$/)) next
        cmd = (cmd == "") ? line : cmd "\n" line
        if (line !~ /\\$/) flush_cmd()
    }
' README.md

blocks=("$TMP"/blocks/*)
if [[ "${DRY:-0}" == 1 ]]; then  # DRY=1: print what would run, run nothing
    for block in "${blocks[@]}"; do echo "=== $(basename "$block")"; cat "$block"; done
    exit 0
fi
if [[ ! -e "${blocks[0]}" ]]; then
    echo "newcomer: README.md has no bash or python block" >&2
    exit 1
fi
for block in "${blocks[@]}"; do
    echo "=== README block $(basename "$block")"
    t0=$(date +%s)
    status=0
    case "$block" in
        *.bash) bash "$block" || status=$? ;;
        *.py)
            echo "+ .venv/bin/python (the README's python block)"
            .venv/bin/python "$block" || status=$?
            echo "  ($(($(date +%s) - t0)) s)"
            ;;
    esac
    if [[ $status -ne 0 ]]; then
        echo "newcomer: FAILED in README block $(basename "$block") (exit $status)" >&2
        exit "$status"
    fi
done
echo "newcomer: every README command exited 0 in $(($(date +%s) - started)) s"

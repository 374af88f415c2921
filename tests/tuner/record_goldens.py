"""Record the bitwise goldens of this CPU's kernel set (see kernels.py), for a set that
has none yet or after a change meant to move the bits:

    .venv/bin/python tests/tuner/record_goldens.py

It reruns itself pinned to the set's kernels, writes ``data/golden_runs.<set>.json`` (the
cases of ``data/golden_runs.json``) and prints the BBTv2 pair for ``GOLDEN_BBTV2`` in
test_bbtv2.py. The skylakex set is never rewritten: its goldens are the pre-redesign record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    sys.path.insert(0, str(HERE.parent))
    from tuner.kernels import KERNELS, PINNED, SKYLAKEX, native_kernels

    kernels = native_kernels()
    if kernels is None or kernels == SKYLAKEX:
        print(f"nothing to record for this CPU's kernels ({kernels})", file=sys.stderr)
        return 2
    if os.environ.get(KERNELS) != kernels.name:
        env = {**os.environ, **kernels.env, PINNED: "1", KERNELS: kernels.name}
        env["BBT_HOME"] = tempfile.mkdtemp(prefix="bbt-home-")
        return subprocess.call([sys.executable, __file__], env=env)

    from bbt.tuner import get_preset
    from tuner.goldens import fixed_seed_bbtv2_run, golden_path, mock_split, run_case

    task = get_preset("mock")
    split = mock_split()
    cases = json.loads(golden_path(SKYLAKEX).read_text())
    out = {name: run_case(case["config"], task, split) for name, case in sorted(cases.items())}
    path = golden_path(kernels)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    print(f'GOLDEN_BBTV2["{kernels.name}"] = {fixed_seed_bbtv2_run()!r}')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

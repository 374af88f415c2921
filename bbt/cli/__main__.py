"""``python -m bbt.cli``: the same command line as the ``bbt`` script."""

from __future__ import annotations

from bbt.cli import main

if __name__ == "__main__":
    main()

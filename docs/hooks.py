"""mkdocs hooks: publish the benchmark plots that docs/benchmarks.md shows.

The plots live next to the JSON their script wrote (``benchmarks/results/*.png``), outside
the docs directory, and docs/benchmarks.md links them as ``../benchmarks/results/NAME.png``
so the page also renders on a plain checkout or a code host. Copying them into docs/ would
leave a second copy to go stale when a benchmark is rerun, so the build adds the originals
to the site and points the page's links at them instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_RESULTS = "benchmarks/results"
_SITE_DIR = "assets/benchmark-results"
_LINK = re.compile(r"\]\(\.\./" + re.escape(_RESULTS) + r"/([A-Za-z0-9_.-]+\.png)\)")


def _root(config: Any) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def on_files(files: Files, config: Any) -> Files:
    """Add each plot under benchmarks/results/ to the site as assets/benchmark-results/NAME."""
    for png in sorted((_root(config) / _RESULTS).glob("*.png")):
        files.append(File.generated(config, f"{_SITE_DIR}/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Point ``../benchmarks/results/NAME.png`` at the file on_files added.

    Only pages at the top of docs/ are rewritten: from there ``..`` is the repository root.
    """
    if "/" in page.file.src_uri:
        return markdown
    return _LINK.sub(rf"]({_SITE_DIR}/\1)", markdown)

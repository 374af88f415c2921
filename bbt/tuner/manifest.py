"""A run directory's layout, manifest, lock and recorded result (see :mod:`bbt.tuner.run`
for the layout and for what drives a run).

What every use of a run directory shares, apart from the tuning loop: the file names, the
advisory lock that one process holds while it drives the run, reading the manifest (where a
crafted directory is refused), preparing a directory for a new run, and the result a
finished run recorded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from bbt._version import __version__
from bbt.client import Service, UsageStats
from bbt.client.redaction import redact_url
from bbt.errors import RunError
from bbt.protocol import ModelInfo
from bbt.tuner.optimizer import import_cma
from bbt.tuner.rundir import (
    atomic_write,
    check_run_dir,
    load_npy,
    open_fd,
    read_text,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: exclusive manifest creation still holds
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("bbt.tuner")

F32 = np.ndarray[Any, np.dtype[np.float32]]
F64 = np.ndarray[Any, np.dtype[np.float64]]

MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint.bin"
LEGACY_CHECKPOINT = "checkpoint.pkl"  # unauthenticated pickles of bbt before checkpoint.bin
LOCK = "run.lock"
ERROR_LOG = "error.log"
HISTORY = "history.jsonl"
PROMPT = "prompt.npy"
Z_FILE = "z.npy"
P0_FILE = "p0.npy"
TRAIN_FILE = "train.jsonl"
DEV_FILE = "dev.jsonl"
PLOT = "plot.png"
RUN_FORMAT = "bbt-run/1"
CHECKPOINT_FORMAT = 3  # the payload dict; the legacy reader converts 1 and 2 (pickles) to it


# --------------------------------------------------------------------------- files


class RunLock:
    """An advisory, exclusive ``flock`` on ``run.lock``, held while one process drives a run.

    ``flock`` locks belong to an open file description, so two threads of one process
    exclude each other too, and the kernel drops the lock when its process dies (a SIGKILLed
    run never leaves a stale lock). The file itself stays: deleting a lock file races with a
    process that has it open.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            # Never through a link: a run.lock planted as a link would be truncated.
            fd = open_fd(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise RunError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise RunError(
                    f"run directory {self.path.parent} is in use by another bbt process{who}; "
                    "wait for it to finish or stop it, or choose another directory"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor releases the flock


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(data, indent=2, allow_nan=True) + "\n").encode())


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a run directory; :class:`RunError` when there is none or it is damaged,
    :class:`~bbt.errors.UnsafeRunDirError` when the directory holds a link, a FIFO or a
    device (see :func:`bbt.tuner.rundir.check_run_dir`).

    Every use of an existing run directory (resume, results, eval, predict) starts here, so
    this is where a crafted directory is refused, before any of its files is written."""
    path = Path(run_dir) / MANIFEST
    try:
        data: dict[str, Any] = json.loads(read_text(path))
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a run directory (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from None
    if data.get("format") != RUN_FORMAT:
        raise RunError(f"{path} is not a bbt run manifest (format {data.get('format')!r})")
    check_run_dir(path.parent)
    return data


def safe_url(url: str | None) -> str | None:
    """The URL as a manifest records it: without credentials (:func:`redact_url`) and
    without a query string or fragment, which name options, not the service."""
    if not url:
        return None
    parts = urlsplit(redact_url(url))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def versions() -> dict[str, str]:
    cma = import_cma()

    return {
        "bbt": __version__,
        "numpy": np.__version__,
        "cma": str(cma.__version__),
        "python": platform.python_version(),
        "platform": sys.platform,
    }


def add_usage(base: dict[str, int], now: UsageStats, start: UsageStats) -> dict[str, int]:
    delta = (now - start).as_dict()
    return {k: int(base.get(k, 0)) + v for k, v in delta.items()}


@dataclass
class TuneResult:
    """What a run produced. ``prompt`` is the selected (best-on-dev) prompt [n, H]."""

    prompt: F32
    z: F64
    dev_metric: float | None
    metric: str
    initial_dev_metric: float | None
    train_loss: float | None
    selected_at_calls: int
    calls: int
    dev_calls: int
    generations: int
    stop_reason: str | None
    usage: dict[str, int]
    run_dir: Path | None
    manifest: dict[str, Any] = field(default_factory=dict)
    #: The budget an early stop left unspent (bbt.tuner.stopping.calls_saved).
    calls_saved: int = 0

    @property
    def metrics(self) -> dict[str, Any]:
        return {
            f"dev_{self.metric}": self.dev_metric,
            f"initial_dev_{self.metric}": self.initial_dev_metric,
            "train_loss": self.train_loss,
            "selected_at_calls": self.selected_at_calls,
            "calls": self.calls,
            "dev_calls": self.dev_calls,
            "generations": self.generations,
            "stop_reason": self.stop_reason,
            "calls_saved": self.calls_saved,
        }


def num(x: float | None) -> float | None:
    # NaN and +-inf -> None: JSON has neither, and a non-finite figure means "no figure".
    return None if x is None or not math.isfinite(x) else float(x)


def model_record(info: ModelInfo) -> dict[str, Any]:
    """What a run directory (or a pre-trained prompt) records of the model under ``"model"``:
    enough to check a later service serves the same one (:func:`check_model`)."""
    return {
        "id": info.id,
        "kind": info.kind,
        "hidden_size": info.hidden_size,
        "vocab_size": info.vocab_size,
        "mask_token": info.mask_token,
        "embedding_std": info.embedding_std,
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prepare_dir(run_dir: Path, overwrite: bool) -> RunLock:
    """Create (or claim) ``run_dir`` for a new run and return its lock, held."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)  # an empty existing directory is fine
    except OSError as exc:
        raise RunError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    check_run_dir(run_dir)  # an existing --out directory may hold links to write through
    lock = RunLock(run_dir).acquire()
    try:
        # Under the lock nobody else drives this directory, so the check below cannot race
        # with another tune() or resume(); the manifest's exclusive creation backs it up.
        if (run_dir / MANIFEST).exists() and not overwrite:
            raise RunError(
                f"{run_dir} already holds a run; resume it with `bbt tune --resume {run_dir}` "
                "or choose another output directory"
            )
        for name in (CHECKPOINT, LEGACY_CHECKPOINT, HISTORY, PROMPT, Z_FILE, PLOT, ERROR_LOG):
            (run_dir / name).unlink(missing_ok=True)
    except OSError as exc:
        lock.release()
        raise RunError(f"cannot prepare run directory {run_dir}: {exc.strerror or exc}") from None
    except BaseException:
        lock.release()
        raise
    return lock


def remove_stale_temps(path: Path) -> None:
    """Delete the temp files of atomic writes that a killed process left half-written (a
    checkpoint's can be megabytes). Called under the run lock: no other writer is alive."""
    for tmp in path.glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def check_fingerprints(path: Path, manifest: dict[str, Any], current: dict[str, str]) -> None:
    """Refuse to resume when ``current`` (the fingerprints of the regenerated projection and
    p0) differs from what the run recorded; warn when it recorded none."""
    recorded = manifest.get("fingerprints")
    if not isinstance(recorded, dict):
        log.warning(
            "run %s records no fingerprint of its projection and p0 (made by an older bbt): "
            "resuming without checking that they regenerate identically",
            path,
        )
        return
    was, cur = manifest.get("versions", {}), versions()
    env = ", ".join(
        f"{name} {was.get(name, '?')} recorded, {cur[name]} now" for name in ("numpy", "cma")
    )
    if recorded.get("projection") != current["projection"]:
        raise RunError(
            f"cannot resume {path}: the projection A regenerated from its recipe differs from "
            f"the one the run used (fingerprint {str(recorded.get('projection'))[:12]} recorded, "
            f"{current['projection'][:12]} now; {env}); resume it with the versions it was made "
            "with, or start a new run"
        )
    if recorded.get("p0") != current["p0"]:
        raise RunError(
            f"cannot resume {path}: {P0_FILE} differs from the p0 the run started from "
            f"(fingerprint {str(recorded.get('p0'))[:12]} recorded, {current['p0'][:12]} now): the "
            "file was changed or damaged"
        )


def check_model(path: Path, manifest: dict[str, Any], service: Service) -> None:
    info = service.model_info()
    want = manifest["model"]
    if info.id != want["id"] or info.hidden_size != want["hidden_size"]:
        raise RunError(
            f"run {path} was made with model {want['id']!r} (H={want['hidden_size']}); this "
            f"service serves {info.id!r} (H={info.hidden_size})"
        )
    # Runs from before causal LMs record no kind: they were all masked.
    if want.get("kind", "masked_lm") != info.kind:
        raise RunError(
            f"run {path} was made against a {want.get('kind', 'masked_lm')} model; this service "
            f"serves {info.id!r} as a {info.kind}"
        )


def recorded_result(path: Path, manifest: dict[str, Any]) -> TuneResult:
    r = manifest["result"]
    metric = manifest["task"]["metric"]
    return TuneResult(
        prompt=load_npy(path / PROMPT),
        z=load_npy(path / Z_FILE),
        dev_metric=r.get(f"dev_{metric}"),
        metric=metric,
        initial_dev_metric=r.get(f"initial_dev_{metric}"),
        train_loss=r.get("train_loss"),
        selected_at_calls=r["selected_at_calls"],
        calls=r["calls"],
        dev_calls=r["dev_calls"],
        generations=r["generations"],
        stop_reason=r.get("stop_reason"),
        usage=manifest.get("usage", {}),
        run_dir=path,
        manifest=manifest,
    )


def load_result(run_dir: str | Path) -> TuneResult:
    """The recorded result of a completed run."""
    path = Path(run_dir)
    manifest = read_manifest(path)
    if manifest.get("status") != "completed" or "result" not in manifest:
        raise RunError(
            f"run {path} has not finished (status {manifest.get('status')!r}); "
            f"resume it with `bbt tune --resume {path}`"
        )
    return recorded_result(path, manifest)

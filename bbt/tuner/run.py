"""Runs on disk: artifacts, atomic checkpoints after every generation, and exact resume.

Layout of a run directory::

    manifest.json     what was run and what came out (model, task, recipes, config, result,
                      usage, versions, fingerprints of A and p0, a random run id); the base
                      URL only, never a credential. Created exclusively: never over a run.
    run.lock          advisory lock (flock) held by the one process driving the run, for the
                      whole of tune() or resume(); it holds that process's pid
    train.jsonl       the sampled k-shot training set   (resume needs no original files)
    dev.jsonl         the sampled dev set
    p0.npy            the initial prompt [n, H]
    checkpoint.bin    the state after the last finished generation (atomic: temp + fsync +
                      os.replace), authenticated: HMAC-SHA256 under a per-user key kept
                      outside the run directory (see :mod:`bbt.tuner.checkpoint`)
    history.jsonl     one line per generation (calls, loss stats, non-finite count, dev
                      metric when scored)
    prompt.npy        the selected (best-on-dev) prompt [n, H], float32   (at the end)
                      (BBTv2: the deep prompt [L, n, H]; p0.npy is [L, n, H] too)
    z.npy             its z [d], float64 (BBTv2: [L * d], layer-major)     (at the end)
    plot.png          loss and dev metric against API calls (needs ``bbt[plot]``)
    error.log         the traceback of an internal error, when ``bbt tune`` met one

Every file in a run directory is opened through :mod:`bbt.tuner._rundir`: a directory
holding a link, a FIFO or a device is refused (it may come from anyone), no open follows a
link, and every file that is rewritten is replaced atomically. The directory itself may be a
link.

A killed run loses at most the generation in flight: ``resume(run_dir, service)`` checks
that the regenerated projection and p0 match the run's fingerprints, reloads the checkpoint
(CMA-ES, RNG stream, counters, best-on-dev) once its tag checks out, cuts ``history.jsonl``
back to the checkpoint's offset, and carries on; with the same deterministic service it ends
with the same z, bit for bit, as a run that was never interrupted. A completed run is never
unpickled: its recorded result is returned.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import platform
import secrets
import sys
from collections.abc import Sequence
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
from bbt.tuner import checkpoint as _ckpt
from bbt.tuner._rundir import (
    atomic_write,
    check_run_dir,
    exclusive_create,
    load_npy,
    open_fd,
    open_file,
    read_bytes,
    read_text,
    save_npy,
)
from bbt.tuner.bbtv2 import BBTv2Tuner, make_tuner
from bbt.tuner.data import Example, dump_jsonl, parse_jsonl
from bbt.tuner.optimizer import import_cma
from bbt.tuner.plot import plot_history
from bbt.tuner.projection import fingerprint_array
from bbt.tuner.prompts import InitialPrompt
from bbt.tuner.tasks import Task, get_preset
from bbt.tuner.tuner import Callback, GenerationRecord, TuneConfig, Tuner

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: exclusive manifest creation still holds
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("bbt.tuner")

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
CHECKPOINT_FORMAT = 2  # the payload dict; 1 is the same dict in a legacy checkpoint.pkl

F32 = np.ndarray[Any, np.dtype[np.float32]]
F64 = np.ndarray[Any, np.dtype[np.float64]]


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(data, indent=2, allow_nan=True) + "\n").encode())


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a run directory; :class:`RunError` when there is none or it is damaged,
    :class:`~bbt.errors.UnsafeRunDirError` when the directory holds a link, a FIFO or a
    device (see :func:`bbt.tuner._rundir.check_run_dir`).

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


def _add_usage(base: dict[str, int], now: UsageStats, start: UsageStats) -> dict[str, int]:
    delta = (now - start).as_dict()
    return {k: int(base.get(k, 0)) + v for k, v in delta.items()}


# --------------------------------------------------------------------------- result


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
        }


def _num(x: float | None) -> float | None:
    # NaN and +-inf -> None: JSON has neither, and a non-finite figure means "no figure".
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- the run


class _Run:
    """Drives a :class:`Tuner` and keeps its run directory in step with it."""

    def __init__(
        self,
        tuner: Tuner,
        run_dir: Path | None,
        manifest: dict[str, Any],
        usage_base: dict[str, int],
        history_offset: int,
        key: bytes | None = None,
    ) -> None:
        self.tuner = tuner
        self.dir = run_dir
        self.manifest = manifest
        self.key = key
        self.usage_base = usage_base
        self.usage_start = tuner.service.usage.copy()
        self.history_offset = history_offset

    def usage(self) -> dict[str, int]:
        return _add_usage(self.usage_base, self.tuner.service.usage, self.usage_start)

    def on_generation(self, rec: GenerationRecord) -> None:
        if self.dir is None:
            return
        line = json.dumps(
            {k: _num(v) if isinstance(v, float) else v for k, v in rec.as_dict().items()}
        )
        with open_file(self.dir / HISTORY, "ab") as fh:
            fh.write((line + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
            self.history_offset = fh.tell()
        self.checkpoint()

    def checkpoint(self) -> None:
        if self.dir is None:
            return
        data = {
            "format": CHECKPOINT_FORMAT,
            "tuner": self.tuner.state_dict(),
            "history_offset": self.history_offset,
            "usage": self.usage(),
            "generation": self.tuner.generation,
        }
        payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        key = self.key if self.key is not None else _ckpt.load_key()
        atomic_write(self.dir / CHECKPOINT, _ckpt.seal(payload, self.manifest["run_id"], key))

    def set_status(self, status: str) -> None:
        self.manifest["status"] = status
        self.manifest["usage"] = self.usage()
        if self.dir is not None:
            _write_json(self.dir / MANIFEST, self.manifest)

    def execute(self, plot: bool) -> TuneResult:
        t = self.tuner
        t.callbacks.append(self.on_generation)
        try:
            if t.generation == 0 and t.selected is None:
                t.start()
                self.checkpoint()
            while not t.done():
                t.step()
            sel = t.finish()
        except KeyboardInterrupt:
            self.set_status("interrupted")
            raise
        except BaseException:
            self.set_status("failed")
            raise
        finally:
            t.callbacks.remove(self.on_generation)
            t.close()  # a session is freed on the server; a resume opens a new one
        prompt = t.prompts(sel.z)[0]
        metric = t.task.metric
        result = TuneResult(
            prompt=prompt,
            z=np.asarray(sel.z, dtype=np.float64),
            dev_metric=sel.dev_metric,
            metric=metric,
            initial_dev_metric=t.initial_dev_metric,
            train_loss=_num(sel.train_loss),
            selected_at_calls=sel.calls,
            calls=t.calls,
            dev_calls=t.dev_calls,
            generations=t.generation,
            stop_reason=t.stop_reason,
            usage=self.usage(),
            run_dir=self.dir,
        )
        self.manifest["result"] = {
            "z": [float(v) for v in result.z],
            **{k: (_num(v) if isinstance(v, float) else v) for k, v in result.metrics.items()},
            "elapsed_s": round(t.elapsed, 3),
        }
        self.manifest["finished"] = _now()
        if self.dir is not None:
            save_npy(self.dir / PROMPT, prompt)
            save_npy(self.dir / Z_FILE, result.z)
            self.checkpoint()
            if plot and (self.dir / HISTORY).is_file():
                note = plot_history(
                    self.dir / HISTORY, self.dir / PLOT, metric, t.initial_dev_metric
                )
                self.manifest["plot"] = PLOT if note is None else None
                if note:
                    log.warning(note)
        self.set_status("completed")
        result.usage = self.manifest["usage"]
        result.manifest = self.manifest
        return result


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _prepare_dir(run_dir: Path, overwrite: bool) -> RunLock:
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


def fingerprints(tuner: Tuner) -> dict[str, str]:
    """What resume checks it regenerated identically: A (a few of its rows) and p0 (BBTv2:
    every layer's A_l, and the deep p0)."""
    proj = tuner.deep_projection if isinstance(tuner, BBTv2Tuner) else tuner.projection
    return {"projection": proj.fingerprint(), "p0": fingerprint_array(tuner.p0)}


def tune(
    service: Service,
    task: Task | str,
    train: Sequence[Example],
    dev: Sequence[Example],
    config: TuneConfig | None = None,
    *,
    initial_prompt: InitialPrompt | None = None,
    run_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    base_url: str | None = None,
    data_info: dict[str, Any] | None = None,
    service_info: dict[str, Any] | None = None,
    plot: bool = True,
    overwrite: bool = False,
) -> TuneResult:
    """Tune a soft prompt for ``task`` on ``train``, selecting on ``dev``; see :class:`Tuner`.

    With ``run_dir`` every generation is checkpointed there and the artifacts are written
    at the end (see this module's docstring); without it the run stays in memory. The
    manifest records ``base_url`` (or the service's own, if it has one) without credentials,
    and ``service_info`` (e.g. how to rebuild an in-process service) next to it.

    The run directory is claimed exclusively: while this call runs, another :func:`tune` or
    :func:`resume` on it raises :class:`RunError`, and so does a new run over a finished one
    (unless ``overwrite``).
    """
    task_obj = get_preset(task) if isinstance(task, str) else task
    cfg = config or TuneConfig()
    path = Path(run_dir) if run_dir is not None else None
    usage_start = service.usage.copy()
    # The tuner reaches the service (discovery, verbalizer, p0) before the run directory
    # exists, so a wrong URL or key leaves no empty run behind.
    tuner = make_tuner(
        service, task_obj, train, dev, cfg, initial_prompt=initial_prompt, callbacks=callbacks
    )
    # The key first: a user whose key cannot be made learns it before anything is written.
    key = _ckpt.load_key() if path is not None else None
    lock = _prepare_dir(path, overwrite) if path is not None else None
    try:
        info = tuner.model_info
        manifest: dict[str, Any] = {
            "format": RUN_FORMAT,
            "run_id": secrets.token_hex(16),
            "status": "running",
            "created": _now(),
            "model": {
                "id": info.id,
                "kind": info.kind,
                "hidden_size": info.hidden_size,
                "vocab_size": info.vocab_size,
                "mask_token": info.mask_token,
                "embedding_std": info.embedding_std,
            },
            "service": {
                **{k: v for k, v in (service_info or {}).items() if k != "base_url"},
                "base_url": safe_url(base_url or getattr(service, "base_url", None)),
            },
            "task": task_obj.as_dict(),
            "candidate_ids": tuner.candidate_ids,
            "config": cfg.as_dict(),
            "method": cfg.method,
            "projection": tuner.recipe.as_dict(),
            "initial_prompt": tuner.initial_prompt.as_dict(),
            "fingerprints": fingerprints(tuner),
            "data": {
                "train": TRAIN_FILE,
                "dev": DEV_FILE,
                "n_train": len(train),
                "n_dev": len(dev),
                **(data_info or {}),
            },
            "versions": versions(),
        }
        if isinstance(tuner, BBTv2Tuner):
            # Layer 0's recipe is "projection" (BBT's); these regenerate every layer's A_l.
            manifest["layer_projections"] = [r.as_dict() for r in tuner.layer_recipes]
        if path is not None:
            atomic_write(path / TRAIN_FILE, dump_jsonl(train).encode())
            atomic_write(path / DEV_FILE, dump_jsonl(dev).encode())
            save_npy(path / P0_FILE, tuner.p0)
            body = (json.dumps(manifest, indent=2, allow_nan=True) + "\n").encode()
            if overwrite:
                atomic_write(path / MANIFEST, body)
            else:
                try:
                    exclusive_create(path / MANIFEST, body)
                except FileExistsError:
                    raise RunError(f"{path} already holds a run (created meanwhile)") from None
        run = _Run(tuner, path, manifest, {}, 0, key)
        run.usage_start = usage_start
        return run.execute(plot)
    finally:
        if lock is not None:
            lock.release()


def _check_fingerprints(path: Path, manifest: dict[str, Any], tuner: Tuner) -> None:
    recorded = manifest.get("fingerprints")
    if not isinstance(recorded, dict):
        log.warning(
            "run %s records no fingerprint of its projection and p0 (made by an older bbt): "
            "resuming without checking that they regenerate identically",
            path,
        )
        return
    now = fingerprints(tuner)
    was, cur = manifest.get("versions", {}), versions()
    env = ", ".join(
        f"{name} {was.get(name, '?')} recorded, {cur[name]} now" for name in ("numpy", "cma")
    )
    if recorded.get("projection") != now["projection"]:
        raise RunError(
            f"cannot resume {path}: the projection A regenerated from its recipe differs from "
            f"the one the run used (fingerprint {str(recorded.get('projection'))[:12]} recorded, "
            f"{now['projection'][:12]} now; {env}); resume it with the versions it was made "
            "with, or start a new run"
        )
    if recorded.get("p0") != now["p0"]:
        raise RunError(
            f"cannot resume {path}: {P0_FILE} differs from the p0 the run started from "
            f"(fingerprint {str(recorded.get('p0'))[:12]} recorded, {now['p0'][:12]} now): the "
            "file was changed or damaged"
        )


def load_checkpoint(
    run_dir: str | Path, run_id: str | None = None, *, trust: bool = False
) -> dict[str, Any] | None:
    """The verified contents of a run's checkpoint, or ``None`` when it has none.

    Nothing is unpickled unless the file's HMAC checks out under this user's key; a foreign,
    edited or legacy (``checkpoint.pkl``) checkpoint raises :class:`RunError` unless
    ``trust`` (see :mod:`bbt.tuner.checkpoint`).
    """
    path = Path(run_dir)
    if run_id is None:
        run_id = str(read_manifest(path).get("run_id", ""))
    ckpt, legacy = path / CHECKPOINT, path / LEGACY_CHECKPOINT
    try:
        if ckpt.exists():
            data = _ckpt.open_checkpoint(read_bytes(ckpt), run_id, where=ckpt, trust=trust)
            want: tuple[int, ...] = (CHECKPOINT_FORMAT,)
        elif legacy.exists():
            data = _ckpt.open_legacy(read_bytes(legacy), where=legacy, trust=trust)
            want = (1,)
        else:
            return None
        if not isinstance(data, dict) or data.get("format") not in want:
            fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"checkpoint format {fmt!r}")
    except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as exc:
        raise RunError(f"cannot load the checkpoint of {path}: {exc}") from None
    return data


def resume(
    run_dir: str | Path,
    service: Service,
    *,
    callbacks: Sequence[Callback] = (),
    plot: bool = True,
    trust_checkpoint: bool = False,
) -> TuneResult:
    """Continue the run in ``run_dir`` from its last checkpoint (see the module docstring).

    A completed run is not run again (nor is its checkpoint read): its recorded result is
    returned. The checkpoint is loaded only if it is authenticated under this user's key;
    ``trust_checkpoint=True`` loads a foreign or legacy one anyway (it is a pickle: only for
    a run directory you trust). While this call runs, the directory is locked.
    """
    path = Path(run_dir)
    manifest = read_manifest(path)
    if manifest.get("status") == "completed" and "result" in manifest:
        _check_model(path, manifest, service)
        return _recorded_result(path, manifest)
    lock = RunLock(path).acquire()
    try:
        manifest = read_manifest(path)  # as it is now that nobody else drives the run
        if manifest.get("status") == "completed" and "result" in manifest:
            _check_model(path, manifest, service)
            return _recorded_result(path, manifest)
        return _resume_locked(path, manifest, service, callbacks, plot, trust_checkpoint)
    finally:
        lock.release()


def _remove_stale_temps(path: Path) -> None:
    """Delete the temp files of atomic writes that a killed process left half-written (a
    checkpoint's can be megabytes). Called under the run lock: no other writer is alive."""
    for tmp in path.glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def _check_model(path: Path, manifest: dict[str, Any], service: Service) -> None:
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


def _resume_locked(
    path: Path,
    manifest: dict[str, Any],
    service: Service,
    callbacks: Sequence[Callback],
    plot: bool,
    trust_checkpoint: bool,
) -> TuneResult:
    _remove_stale_temps(path)
    usage_start = service.usage.copy()
    try:
        task = Task.from_dict(manifest["task"])
        cfg = TuneConfig.from_dict(manifest["config"])
        train = parse_jsonl(read_text(path / TRAIN_FILE))
        dev = parse_jsonl(read_text(path / DEV_FILE))
        p0 = load_npy(path / P0_FILE)
        initial = InitialPrompt.from_dict(manifest["initial_prompt"])
    except (KeyError, OSError, ValueError) as exc:
        raise RunError(f"run directory {path} is incomplete or damaged: {exc}") from None
    _check_model(path, manifest, service)
    tuner = make_tuner(
        service, task, train, dev, cfg, initial_prompt=initial, p0=p0, callbacks=callbacks
    )
    if tuner.candidate_ids != manifest["candidate_ids"]:
        raise RunError(f"the service's tokenizer maps the verbalizer of run {path} differently")
    _check_fingerprints(path, manifest, tuner)
    if "run_id" not in manifest:  # a run from before run ids: give it one from now on
        manifest["run_id"] = secrets.token_hex(16)
    key = _ckpt.load_key()
    usage_base: dict[str, int] = {}
    offset = 0
    data = load_checkpoint(path, str(manifest["run_id"]), trust=trust_checkpoint)
    if data is not None:
        try:
            tuner.load_state_dict(data["tuner"])
            usage_base = dict(data["usage"])
            offset = int(data["history_offset"])
        except (KeyError, TypeError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            raise RunError(f"cannot load the checkpoint of {path}: {exc}") from None
    try:
        with open_file(path / HISTORY, "r+b") as fh:
            fh.truncate(offset)  # drop lines of a generation that never checkpointed
    except FileNotFoundError:
        pass
    run = _Run(tuner, path, manifest, usage_base, offset, key)
    run.usage_start = usage_start
    run.manifest["resumed"] = [*run.manifest.get("resumed", []), _now()]
    run.set_status("running")
    result = run.execute(plot)
    # A legacy checkpoint was replaced by an authenticated one at the first generation.
    (path / LEGACY_CHECKPOINT).unlink(missing_ok=True)
    return result


def _recorded_result(path: Path, manifest: dict[str, Any]) -> TuneResult:
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
    return _recorded_result(path, manifest)

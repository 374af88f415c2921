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

Every file in a run directory is opened through :mod:`bbt.tuner.rundir`: a directory
holding a link, a FIFO or a device is refused (it may come from anyone), no open follows a
link, and every file that is rewritten is replaced atomically. The directory itself may be a
link.

A killed run loses at most the generation in flight: ``resume(run_dir, service)`` checks
that the regenerated projection and p0 match the run's fingerprints, reloads the checkpoint
(CMA-ES, RNG stream, counters, best-on-dev) once its tag checks out, cuts ``history.jsonl``
back to the checkpoint's offset, and carries on; with the same deterministic service it ends
with the same z, bit for bit, as a run that was never interrupted. A completed run never has
its checkpoint read: its recorded result is returned.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bbt.client import Service
from bbt.errors import RunError
from bbt.tuner import checkpoint as _ckpt
from bbt.tuner import stopping
from bbt.tuner.callbacks import notify_finish
from bbt.tuner.data import Example, dump_jsonl, parse_jsonl

# The layout and the manifest live in bbt.tuner.manifest; their names stay importable here.
from bbt.tuner.manifest import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    DEV_FILE,
    ERROR_LOG,
    HISTORY,
    LEGACY_CHECKPOINT,
    LOCK,
    MANIFEST,
    P0_FILE,
    PLOT,
    PROMPT,
    RUN_FORMAT,
    TRAIN_FILE,
    Z_FILE,
    RunLock,
    TuneResult,
    add_usage,
    check_fingerprints,
    check_model,
    load_result,
    model_record,
    now,
    num,
    prepare_dir,
    read_manifest,
    recorded_result,
    remove_stale_temps,
    safe_url,
    versions,
    write_json,
)
from bbt.tuner.methods import build_tuner, method_of
from bbt.tuner.options import TuneOptions
from bbt.tuner.plot import plot_history
from bbt.tuner.projection import fingerprint_array
from bbt.tuner.prompts import InitialPrompt
from bbt.tuner.rundir import (
    atomic_write,
    exclusive_create,
    load_npy,
    open_file,
    read_bytes,
    read_text,
    save_npy,
)
from bbt.tuner.tasks import Task, get_preset
from bbt.tuner.tuner import Callback, GenerationRecord, TuneConfig, Tuner

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "DEV_FILE",
    "ERROR_LOG",
    "HISTORY",
    "LEGACY_CHECKPOINT",
    "LOCK",
    "MANIFEST",
    "P0_FILE",
    "PLOT",
    "PROMPT",
    "RUN_FORMAT",
    "TRAIN_FILE",
    "Z_FILE",
    "RunLock",
    "TuneResult",
    "fingerprints",
    "load_checkpoint",
    "load_result",
    "read_manifest",
    "resume",
    "safe_url",
    "tune",
    "versions",
]

log = logging.getLogger("bbt.tuner")


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
        return add_usage(self.usage_base, self.tuner.service.usage, self.usage_start)

    def on_generation(self, rec: GenerationRecord) -> None:
        if self.dir is None:
            return
        line = json.dumps(
            {k: num(v) if isinstance(v, float) else v for k, v in rec.as_dict().items()}
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
        payload = _ckpt.encode_payload(data)
        key = self.key if self.key is not None else _ckpt.load_key()
        atomic_write(self.dir / CHECKPOINT, _ckpt.seal(payload, self.manifest["run_id"], key))

    def set_status(self, status: str) -> None:
        self.manifest["status"] = status
        self.manifest["usage"] = self.usage()
        if self.dir is not None:
            write_json(self.dir / MANIFEST, self.manifest)

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
            train_loss=num(sel.train_loss),
            selected_at_calls=sel.calls,
            calls=t.calls,
            dev_calls=t.dev_calls,
            generations=t.generation,
            stop_reason=t.stop_reason,
            usage=self.usage(),
            calls_saved=stopping.calls_saved(t.config.budget, t.calls, t.stop_reason),
            run_dir=self.dir,
        )
        self.manifest["result"] = {
            "z": [float(v) for v in result.z],
            **{k: (num(v) if isinstance(v, float) else v) for k, v in result.metrics.items()},
            "elapsed_s": round(t.elapsed, 3),
        }
        self.manifest["finished"] = now()
        if self.dir is not None:
            save_npy(self.dir / PROMPT, prompt)
            save_npy(self.dir / Z_FILE, result.z)
            method_of(t).save_artifacts(t, self.dir, result.z)
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
        notify_finish(t.callbacks, result)
        return result


def fingerprints(tuner: Tuner) -> dict[str, str]:
    """What resume checks it regenerated identically: A (a few of its rows) and p0 (BBTv2:
    every layer's A_l, and the deep p0)."""
    return {
        "projection": method_of(tuner).projection_fingerprint(tuner),
        "p0": fingerprint_array(tuner.p0),
    }


def tune(
    service: Service,
    task: Task | str,
    train: Sequence[Example],
    dev: Sequence[Example],
    config: TuneConfig | TuneOptions | None = None,
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

    ``config`` may be a :class:`~bbt.tuner.options.TuneOptions` (what ``bbt tune`` builds):
    its ``config`` drives the run, its ``init`` makes p0 unless ``initial_prompt`` is given,
    and the manifest records it under ``"options"``.
    """
    task_obj = get_preset(task) if isinstance(task, str) else task
    options = config if isinstance(config, TuneOptions) else None
    cfg = config.config if isinstance(config, TuneOptions) else config or TuneConfig()
    if options is not None and initial_prompt is None:
        initial_prompt = InitialPrompt.parse(options.init, seed=cfg.seed)
    path = Path(run_dir) if run_dir is not None else None
    usage_start = service.usage.copy()
    # The tuner reaches the service (discovery, verbalizer, p0) before the run directory
    # exists, so a wrong URL or key leaves no empty run behind.
    tuner = build_tuner(
        service, task_obj, train, dev, cfg, initial_prompt=initial_prompt, callbacks=callbacks
    )
    # The key first: a user whose key cannot be made learns it before anything is written.
    key = _ckpt.load_key() if path is not None else None
    lock = prepare_dir(path, overwrite) if path is not None else None
    try:
        info = tuner.model_info
        manifest: dict[str, Any] = {
            "format": RUN_FORMAT,
            "run_id": secrets.token_hex(16),
            "status": "running",
            "created": now(),
            "model": model_record(info),
            "service": {
                **{k: v for k, v in (service_info or {}).items() if k != "base_url"},
                "base_url": safe_url(base_url or getattr(service, "base_url", None)),
            },
            "task": task_obj.as_dict(),
            "candidate_ids": tuner.candidate_ids,
            "config": tuner.config.as_dict(),  # with searched label words
            **({"options": options.manifest_dict()} if options is not None else {}),
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
        manifest.update(method_of(tuner).manifest_extra(tuner))
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


def load_checkpoint(
    run_dir: str | Path, run_id: str | None = None, *, trust: bool = False
) -> dict[str, Any] | None:
    """The verified contents of a run's checkpoint, or ``None`` when it has none.

    Nothing is read unless the file's HMAC checks out under this user's key; a foreign,
    edited or legacy (``checkpoint.pkl``) checkpoint raises :class:`RunError` unless
    ``trust`` (see :mod:`bbt.tuner.checkpoint`; only its legacy reader unpickles).
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
            want = (CHECKPOINT_FORMAT,)  # converted by the legacy reader
        else:
            return None
        if not isinstance(data, dict) or data.get("format") not in want:
            fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"checkpoint format {fmt!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
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
    ``trust_checkpoint=True`` loads a foreign or legacy one anyway (a legacy one is a pickle:
    only for a run directory you trust). While this call runs, the directory is locked.
    """
    path = Path(run_dir)
    manifest = read_manifest(path)
    if manifest.get("status") == "completed" and "result" in manifest:
        check_model(path, manifest, service)
        return recorded_result(path, manifest)
    lock = RunLock(path).acquire()
    try:
        manifest = read_manifest(path)  # as it is now that nobody else drives the run
        if manifest.get("status") == "completed" and "result" in manifest:
            check_model(path, manifest, service)
            return recorded_result(path, manifest)
        return _resume_locked(path, manifest, service, callbacks, plot, trust_checkpoint)
    finally:
        lock.release()


def _resume_locked(
    path: Path,
    manifest: dict[str, Any],
    service: Service,
    callbacks: Sequence[Callback],
    plot: bool,
    trust_checkpoint: bool,
) -> TuneResult:
    remove_stale_temps(path)
    usage_start = service.usage.copy()
    try:
        task = Task.from_dict(manifest["task"])
        cfg = TuneOptions.from_manifest(manifest).config
        train = parse_jsonl(read_text(path / TRAIN_FILE))
        dev = parse_jsonl(read_text(path / DEV_FILE))
        p0 = load_npy(path / P0_FILE)
        initial = InitialPrompt.from_dict(manifest["initial_prompt"])
    except (KeyError, OSError, ValueError) as exc:
        raise RunError(f"run directory {path} is incomplete or damaged: {exc}") from None
    check_model(path, manifest, service)
    tuner = build_tuner(
        service, task, train, dev, cfg, initial_prompt=initial, p0=p0, callbacks=callbacks
    )
    if tuner.candidate_ids != manifest["candidate_ids"]:
        raise RunError(f"the service's tokenizer maps the verbalizer of run {path} differently")
    check_fingerprints(path, manifest, fingerprints(tuner))
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
        except (KeyError, TypeError, ValueError) as exc:
            raise RunError(f"cannot load the checkpoint of {path}: {exc}") from None
    try:
        with open_file(path / HISTORY, "r+b") as fh:
            fh.truncate(offset)  # drop lines of a generation that never checkpointed
    except FileNotFoundError:
        pass
    run = _Run(tuner, path, manifest, usage_base, offset, key)
    run.usage_start = usage_start
    run.manifest["resumed"] = [*run.manifest.get("resumed", []), now()]
    run.set_status("running")
    result = run.execute(plot)
    # A legacy checkpoint was replaced by an authenticated one at the first generation.
    (path / LEGACY_CHECKPOINT).unlink(missing_ok=True)
    return result

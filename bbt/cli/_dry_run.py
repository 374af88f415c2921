"""``bbt tune --dry-run``: what a run will cost, from its plan and one timed probe request.

Counts come from the same code that a real run goes through, not from a model of it: the
tuner is built exactly as :func:`bbt.tuner.tune` builds it (so discovery, verbalizer and
p0 requests are measured, not guessed), and each kind of ``logits`` call is split into
requests by :func:`bbt.client.request_plans.planned_requests` (the client's own
:func:`bbt.client.planning.plan_logits`, or an engine adapter's plan made by the code it sends
with, as vLLM's), whose request bodies are what the run sends byte for byte. Only two figures
are extrapolated and are labelled so: bytes down (the probe's response size, scaled to each
request's logits) and wall time (the probe's seconds per sequence, scaled to the run's
sequences).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from bbt.client import UsageStats
from bbt.client.planning import BODY_SLACK
from bbt.client.projection_sessions import ProjectionSession, SessionChunk, plan_session_logits
from bbt.client.request_plans import PlannedRequest, planned_requests
from bbt.protocol import DType, ModelInfo, encoded_size
from bbt.tuner.methods import dev_calls, generations, method_of

__all__ = ["CallPlan", "RunPlan", "describe", "dev_calls", "generations", "make_plan", "plan_call"]


@dataclass(frozen=True)
class CallPlan:
    """How one ``service.logits`` call of P prompts on B texts goes over the wire."""

    prompts: int
    texts: int
    requests: int
    bytes_up: int  # exact: the sum of the planned request bodies
    logits_per_request: tuple[int, ...]  # P x B x C of each request, for bytes down
    output_dtype: DType
    split: tuple[int, int]  # (prompt groups, text groups)
    reasons: tuple[str, ...]  # which limits force the split; empty when one request does

    @property
    def sequences(self) -> int:
        return self.prompts * self.texts


def planning_z(session: ProjectionSession, n_prompts: int) -> np.ndarray[Any, Any]:
    """z to plan a session call with: zeros, but for a deep session (BBTv2, protocol 1.5)
    with layer 0 differing between the candidates, as one layer does in each generation,
    so the plan sends what the run will (that layer's z per candidate, the rest once)."""
    z = np.zeros((n_prompts, session.dim), dtype=np.float32)
    if session.num_layers > 1:
        z[:, : session.projection.dim] = np.arange(n_prompts, dtype=np.float32)[:, None] * 1e-3
    return z


def plan_call(
    info: ModelInfo,
    n_prompts: int,
    n_tokens: int,
    texts: Sequence[str],
    candidate_ids: Sequence[int],
    dtype: DType,
    session: ProjectionSession | None = None,
    layers: int | None = None,
    service: object = None,
) -> CallPlan:
    """Split a call exactly as the client will, and say which limit made it split.

    With ``session`` the call goes through a projection session (z in binary frames).
    ``layers``: deep prompts [P, L, n, H] (BBTv2) of that many layers. ``service``: the
    one the run calls; an engine adapter that plans its own requests (vLLM) is asked."""
    n_cand = len(candidate_ids)
    deep = () if layers is None else (layers,)
    chunks: Sequence[PlannedRequest | SessionChunk]
    if session is not None:
        z = planning_z(session, n_prompts)
        chunks = plan_session_logits(info, session, z, texts, candidate_ids)
        sizes = [len(c.body.content) for c in chunks]
        out_dtype = chunks[0].request.output_dtype
    else:
        prompts = np.zeros((n_prompts, *deep, n_tokens, info.hidden_size), dtype=np.float32)
        chunks = planned_requests(service, info, prompts, texts, candidate_ids, dtype)
        sizes = [c.body_bytes for c in chunks]
        out_dtype = chunks[0].output_dtype
    rows = [c.rows_sent for c in chunks]
    groups = (len({(c.p0, c.p1) for c in chunks}), len({(c.b0, c.b1) for c in chunks}))
    text_bounds = [(c.b0, c.b1) for c in chunks]
    reasons: list[str] = []
    if len(chunks) > 1:
        lim = info.limits
        n_texts = len(texts)
        if n_prompts > lim.max_prompts_per_request:
            reasons.append(
                f"{n_prompts} prompts > max_prompts_per_request {lim.max_prompts_per_request}"
            )
        if n_texts > lim.max_texts_per_request:
            reasons.append(f"{n_texts} texts > max_texts_per_request {lim.max_texts_per_request}")
        if n_prompts * n_texts > lim.max_sequences_per_request:
            reasons.append(
                f"{n_prompts} x {n_texts} = {n_prompts * n_texts} sequences > "
                f"max_sequences_per_request {lim.max_sequences_per_request}"
            )
        # The client's own bound (plan_grid): prompts exactly, each text at its worst-case
        # JSON size (6 bytes a character, as if every one were a \uXXXX escape).
        if session is not None:
            prompt_bytes = 4 * n_prompts * session.dim
        else:
            prompt_bytes = encoded_size((n_prompts, *deep, n_tokens, info.hidden_size), dtype)
        text_bytes = n_texts * max(6 * len(t) + 3 for t in texts)
        bound = prompt_bytes + text_bytes + BODY_SLACK
        if bound > lim.max_body_bytes:
            reasons.append(
                f"one request could reach {bound:,} bytes ({prompt_bytes:,} of prompts, up to "
                f"{text_bytes:,} of texts) > max_body_bytes {lim.max_body_bytes:,}"
            )
    return CallPlan(
        prompts=n_prompts,
        texts=len(texts),
        requests=len(chunks),
        bytes_up=sum(sizes),
        logits_per_request=tuple(
            r * (b1 - b0) * n_cand for r, (b0, b1) in zip(rows, text_bounds, strict=True)
        ),
        output_dtype=out_dtype,
        split=groups,
        reasons=tuple(reasons),
    )


@dataclass
class RunPlan:
    """What ``bbt tune`` with these settings will spend, and how it was worked out."""

    service_kind: str  # mock | http | embedded
    model: str
    wire_dtype: DType
    popsize: int
    budget: int
    n_generations: int
    train_calls: int
    checks: int
    dev_calls_max: int
    eval_every: int
    initial_dev: bool  # p0 scored on dev before the first generation
    train: CallPlan
    dev: CallPlan | None
    setup: UsageStats
    setup_s: float
    probe_prompts: int
    probe_texts: int
    probe_s: float
    probe_bytes_down: int
    projection_s: float  # client-side: one population's prompts (p = A z + p0)
    notes: list[str] = field(default_factory=list)
    #: Through a projection session (z on the wire), which the run closes at its end.
    session: bool = False
    #: Input tokens the service counted for the probe (its usage ``tokens``).
    probe_tokens: int = 0

    @property
    def input_tokens(self) -> int:
        """The run's input tokens, at the probe's tokens per sequence."""
        per = self.probe_tokens / max(self.probe_prompts * self.probe_texts, 1)
        return round(per * self.sequences)

    @property
    def requests(self) -> int:
        dev = self.dev.requests * self.dev_calls_max if self.dev else 0
        close = 1 if self.session else 0
        return self.setup.requests + self.n_generations * self.train.requests + dev + close

    @property
    def bytes_up(self) -> int:
        dev = self.dev.bytes_up * self.dev_calls_max if self.dev else 0
        return self.setup.bytes_sent + self.n_generations * self.train.bytes_up + dev

    def _down(self, call: CallPlan) -> float:
        # The probe's response less its logits payload is the envelope (model id, usage,
        # JSON keys); each planned request gets that plus its own payload.
        probe_logits = self.train.logits_per_request[0]
        envelope = self.probe_bytes_down - encoded_size((probe_logits,), self.train.output_dtype)
        return sum(
            max(envelope, 0) + encoded_size((n,), call.output_dtype)
            for n in call.logits_per_request
        )

    @property
    def bytes_down(self) -> float:
        if self.probe_bytes_down == 0:  # in-process: nothing travels
            return float(self.setup.bytes_received)
        dev = self._down(self.dev) * self.dev_calls_max if self.dev else 0.0
        return self.setup.bytes_received + self.n_generations * self._down(self.train) + dev

    @property
    def sequences(self) -> int:
        dev = self.dev.sequences * self.dev_calls_max if self.dev else 0
        return self.n_generations * self.train.sequences + dev

    @property
    def wall_s(self) -> float:
        per_sequence = self.probe_s / (self.probe_prompts * self.probe_texts)
        return self.setup_s + self.sequences * per_sequence + self.n_generations * self.projection_s


def make_plan(
    tuner: Any, service: Any, service_kind: str, setup: UsageStats, setup_s: float
) -> RunPlan:
    """Plan the run of ``tuner`` (built, not started) and time one probe request."""
    cfg = tuner.config
    info: ModelInfo = tuner.model_info
    # What the client puts on the wire; an in-process service sends float32 (it sends nothing).
    settings = getattr(service, "settings", None)
    wire: DType = settings.dtype if settings is not None else "float32"
    method = method_of(tuner)
    pop = cfg.population
    counts = method.cost(cfg, has_dev=bool(tuner.dev_texts))
    ids = tuner.candidate_ids
    # The tuner opened a projection session when it will use one (sessions=auto/on).
    session: ProjectionSession | None = getattr(tuner.evaluator, "session", None)
    # The method's prompt layout: BBTv2 sends deep prompts [P, L, n, H] of z with L * d.
    layout = method.layout(tuner)
    layers, z_size = layout.layers, layout.z_size
    call = partial(plan_call, session=session, layers=layers, service=service)
    planning = service.usage.copy()
    train = call(info, pop, cfg.n_tokens, tuner.train_texts, ids, wire)
    dev = call(info, 1, cfg.n_tokens, tuner.dev_texts, ids, wire) if tuner.dev_texts else None

    # What planning asked once (an engine adapter tokenising the texts, as the run's first
    # call does) is set-up.
    setup = setup + (service.usage - planning)
    # The probe: the first request of a generation, as the run will send it.
    chunk: PlannedRequest | SessionChunk = planned_requests(
        service,
        info,
        np.zeros((pop, *layout.shape), dtype=np.float32),
        tuner.train_texts,
        ids,
        wire,
    )[0]
    if session is not None:
        chunk = plan_session_logits(
            info, session, planning_z(session, pop), tuner.train_texts, ids
        )[0]
    t0 = time.perf_counter()
    prompts = tuner.prompts(np.zeros((pop, z_size)))
    projection_s = 0.0 if session is not None else time.perf_counter() - t0
    before = service.usage.copy()
    t0 = time.perf_counter()
    texts = tuner.train_texts[chunk.b0 : chunk.b1]
    if session is not None:
        service.session_logits(session, planning_z(session, chunk.p1 - chunk.p0), texts, ids)
    else:
        service.logits(prompts[chunk.p0 : chunk.p1], texts, ids)
    probe_s = time.perf_counter() - t0
    spent = service.usage - before
    return RunPlan(
        service_kind=service_kind,
        model=info.id,
        wire_dtype=wire,
        popsize=pop,
        budget=cfg.budget,
        n_generations=counts.generations,
        train_calls=counts.train_calls,
        checks=counts.checks,
        dev_calls_max=counts.dev_calls_max,
        eval_every=cfg.eval_every,
        initial_dev=bool(cfg.eval_initial and tuner.dev_texts),
        train=train,
        dev=dev,
        setup=setup,
        setup_s=setup_s,
        probe_prompts=chunk.p1 - chunk.p0,
        probe_texts=chunk.b1 - chunk.b0,
        probe_s=probe_s,
        probe_bytes_down=spent.bytes_received,
        projection_s=projection_s,
        session=session is not None,
        probe_tokens=spent.tokens,
    )


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _chunking(call: CallPlan, what: str) -> str:
    if call.requests == 1:
        return f"{what}: {call.prompts} x {call.texts} sequences fit one request"
    p, b = call.split
    return (
        f"{what}: {call.requests} requests ({p} prompt group(s) x {b} text group(s)) because "
        + "; ".join(call.reasons)
    )


def describe(plan: RunPlan, summary: str) -> list[str]:
    """The lines ``bbt tune --dry-run`` prints."""
    in_process = plan.service_kind == "mock"
    lines = [f"dry run: {summary}", f"  model: {plan.model} ({plan.service_kind})"]
    pop, gens = plan.popsize, plan.n_generations
    rounded = "" if plan.train_calls == plan.budget else f"; budget {plan.budget} rounded down"
    final = plan.dev_calls_max - plan.checks - int(plan.initial_dev)
    lines.append(
        f"  API calls: at most {plan.train_calls + plan.dev_calls_max:,} = "
        f"{plan.train_calls:,} training ({gens} generations x {pop}{rounded}) + "
        f"{plan.dev_calls_max} dev ({int(plan.initial_dev)} p0 + {plan.checks} checks, one per "
        f"{plan.eval_every} calls, + {final} final)"
    )
    dev_req = plan.dev.requests if plan.dev else 0
    lines.append(
        f"  requests: at most {plan.requests:,} = {gens} x {plan.train.requests} per generation"
        f" + {plan.dev_calls_max} x {dev_req} per dev evaluation + {plan.setup.requests} set-up"
    )
    if in_process:
        lines.append(
            "  bytes up/down: none (the in-process mock; over HTTP these requests would send "
            f"{_bytes(plan.bytes_up)} as {plan.wire_dtype})"
        )
    else:
        what = (
            "z as float32 through a projection session"
            if plan.session
            else f"prompts as {plan.wire_dtype}"
        )
        lines.append(f"  bytes up: {plan.bytes_up:,} ({_bytes(plan.bytes_up)}, {what})")
        lines.append(
            f"  bytes down: about {_bytes(plan.bytes_down)} (the probe's "
            f"{plan.probe_bytes_down:,}-byte response, scaled to each request's logits)"
        )
    lines.append("  chunking: " + _chunking(plan.train, "a generation"))
    if plan.dev is not None:
        lines.append("            " + _chunking(plan.dev, "a dev evaluation"))
    probe_seq = plan.probe_prompts * plan.probe_texts
    lines.append(
        f"  wall time: about {_duration(plan.wall_s)} (estimate: set-up {_duration(plan.setup_s)} "
        f"+ {plan.sequences:,} sequences at the probe's rate; the probe, the first request of a "
        f"generation, {plan.probe_prompts} prompts x {plan.probe_texts} texts = {probe_seq:,} "
        f"sequences, took {_duration(plan.probe_s)})"
    )
    lines.append(
        f"  input tokens: about {plan.input_tokens:,} (the probe's tokens per sequence x "
        f"{plan.sequences:,} sequences); output tokens: 0 (the service returns logits)"
    )
    closing = " and closing its session" if plan.session else ""
    spent = plan.setup.requests + 1 + int(plan.session)
    lines.append(
        f"  the dry run spent: {spent} requests (set-up, the probe{closing}), "
        f"{plan.probe_prompts} API calls; no run directory was created"
    )
    return lines

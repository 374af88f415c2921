"""Merged forward passes of several logits calls on one :class:`HFBackend` (see batching).

Calls with the same prompt length and candidate ids put their (prompt, text) sequences in
the same forward chunks, laid out as :meth:`HFBackend._run` lays out one call's: text-major,
longest text first, each chunk holding ``token_budget // longest`` sequences. Calls that
differ in either run as separate groups. The encoder treats rows independently (attention
is masked to each row's own tokens), so a sequence's logits change only by the rounding of
a different padding length: within the compute dtype's tolerance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bbt.protocol import ProtocolViolation, Usage
from bbt.server._hf_common import ForwardChunk
from bbt.server.backend import FloatArray, IntArray

if TYPE_CHECKING:
    from bbt.server.hf import HFBackend

Call = tuple[FloatArray, list[str], IntArray]


def hf_merged(backend: HFBackend, calls: list[Call]) -> list[tuple[FloatArray, Usage]]:
    """Each call's (logits [P, B, C], usage), computed in shared forward chunks."""
    results: list[tuple[FloatArray, Usage] | None] = [None] * len(calls)
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for k, (prompts, _, cand) in enumerate(calls):
        arr = np.asarray(prompts)
        key = (int(arr.shape[1]) if arr.ndim == 3 else -1, tuple(int(c) for c in cand))
        groups.setdefault(key, []).append(k)
    for members in groups.values():
        if len(members) == 1:
            k = members[0]
            results[k] = backend.logits(*calls[k])
            continue
        for k, res in zip(members, _group(backend, [calls[k] for k in members]), strict=True):
            results[k] = res
    return [r for r in results if r is not None]


def _group(backend: Any, calls: list[Call]) -> list[tuple[FloatArray, Usage]]:
    torch = backend._torch
    cand = np.ascontiguousarray(calls[0][2], dtype=np.int64)
    if cand.ndim != 1 or cand.size == 0 or cand.min() < 0 or cand.max() >= backend._vocab:
        raise ProtocolViolation("candidate ids out of range", field="candidate_ids")
    prompts_all = [np.ascontiguousarray(p, dtype=np.float32) for p, _, _ in calls]
    for p in prompts_all:
        if p.ndim != 3 or p.shape[2] != backend._hidden:
            raise ProtocolViolation(
                f"prompts must have shape [P, n, {backend._hidden}]", field="prompts.shape"
            )
    n_tokens = int(prompts_all[0].shape[1])
    encoded: list[Any] = []
    pairs: list[tuple[int, int, int, int, int]] = []  # (global prompt, global text, call, i, j)
    outs: list[FloatArray] = []
    usages: list[Usage] = []
    p_off = 0
    for k, (prompts, (_, texts, _)) in enumerate(zip(prompts_all, calls, strict=True)):
        enc = [backend._encode(text, n_tokens, j) for j, text in enumerate(texts)]
        t_off = len(encoded)
        encoded.extend(enc)
        n_p = int(prompts.shape[0])
        pairs.extend((p_off + i, t_off + j, k, i, j) for j in range(len(texts)) for i in range(n_p))
        outs.append(np.empty((n_p, len(texts), int(cand.size)), dtype=np.float32))
        tokens = sum((len(e.ids) + n_tokens) * n_p for e in enc)
        usages.append(Usage(prompts=n_p, sequences=n_p * len(texts), tokens=tokens))
        p_off += n_p
    # Longest text first across every call; a stable sort keeps each call's own order.
    pairs.sort(key=lambda q: -len(encoded[q[1]].ids))
    dev = backend._word_emb.device
    with torch.inference_mode():
        prompts_t = torch.from_numpy(np.concatenate(prompts_all, axis=0)).to(
            device=dev, dtype=backend._dtype
        )
        cand_t = torch.from_numpy(cand).to(dev)
        text_embs = {
            t: backend._word_emb[torch.tensor(e.ids, device=dev)] for t, e in enumerate(encoded)
        }
        start = 0
        while start < len(pairs):
            longest = len(encoded[pairs[start][1]].ids) + n_tokens
            size = max(1, backend._token_budget // longest)
            chunk = pairs[start : start + size]
            start += len(chunk)
            with backend._lock.hold():
                job = ForwardChunk(
                    [(g, t) for g, t, _, _, _ in chunk],
                    encoded,
                    text_embs,
                    prompts_t,
                    n_tokens,
                    longest,
                    cand_t,
                )
                res = backend._forward_chunk(job)
            res_np = res.float().cpu().numpy()
            for row, (_, _, k, i, j) in enumerate(chunk):
                outs[k][i, j] = res_np[row]
    return list(zip(outs, usages, strict=True))

"""Prompt log-probabilities (protocol 1.6) for :class:`~bbt.server.hf_causal.HFCausalBackend`.

Each text is run as the model sees it in ``/v1/logits`` without a soft prompt (the
tokenizer's leading special tokens, then the text; a text longer than the window loses its
start). The log-softmax of the LM head's outputs at position t scores the token at t + 1;
every text token is scored except the first when nothing comes before it (no BOS). Texts
are sorted by length and run in right-padded chunks of at most :data:`SCORE_TOKEN_BUDGET`
tokens under the model's FIFO lock: with causal attention, padding after a sequence
changes nothing before it, so a text scores the same alone or in a batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bbt.protocol import Usage
from bbt.server._cancel import current_stop_check, raise_if_stopped

if TYPE_CHECKING:
    from bbt.server.hf_causal import HFCausalBackend

#: Padded tokens per forward pass: the full-vocabulary outputs are [S, T, V] floats.
SCORE_TOKEN_BUDGET = 512


def _sequences(backend: HFCausalBackend, texts: list[str]) -> list[list[int]]:
    prefix = list(backend.bos_ids)
    room = max(backend.info.max_sequence_length - len(prefix), 1)
    out = []
    for text in texts:
        body = list(backend._body_ids(text))
        out.append(prefix + body[max(len(body) - room, 0) :])
    return out


def causal_score(
    backend: HFCausalBackend, texts: list[str]
) -> tuple[list[float], list[int], Usage]:
    """Each text's summed token log-probability and the tokens it covers."""
    torch = backend._torch
    stop = current_stop_check()
    seqs = _sequences(backend, texts)
    first = max(len(backend.bos_ids), 1)  # the first position whose token is scored
    sums, counts = [0.0] * len(texts), [0] * len(texts)
    order = sorted(range(len(texts)), key=lambda j: -len(seqs[j]))
    dev = backend._word_emb.device
    start = 0
    with torch.inference_mode():
        while start < len(order):
            raise_if_stopped(stop, "score")
            longest = max(len(seqs[order[start]]), 1)
            chunk = order[start : start + max(1, SCORE_TOKEN_BUDGET // longest)]
            start += len(chunk)
            ids = torch.zeros((len(chunk), longest), dtype=torch.long, device=dev)
            attn = torch.zeros_like(ids)
            for row, j in enumerate(chunk):
                ids[row, : len(seqs[j])] = torch.tensor(seqs[j], device=dev)
                attn[row, : len(seqs[j])] = 1
            positions = torch.arange(longest, device=dev).expand(len(chunk), longest)
            with backend._lock.hold():
                out = backend._model(
                    input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False
                )
            logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
            picked = logp.gather(-1, ids[:, 1:, None])[..., 0]  # [S, T - 1]
            scored = attn[:, 1:].clone()
            scored[:, : first - 1] = 0
            total = (picked * scored).sum(dim=1).cpu().tolist()
            n = scored.sum(dim=1).cpu().tolist()
            for row, j in enumerate(chunk):
                sums[j], counts[j] = float(total[row]), int(n[row])
    usage = Usage(prompts=1, sequences=len(texts), tokens=sum(len(s) for s in seqs))
    return sums, counts, usage

"""A deterministic, numpy-only masked LM that behaves like a real one under BBT.

The mock has its own word vocabulary and a built-in binary sentiment task: every word has a
hidden polarity (-1, 0 or +1, fixed for all seeds) and a sentence is positive when its
polar words sum above zero. The model *knows* the polarity (it is a direction ``u`` in its
embedding table), but with no prompt that knowledge never reaches the verbalizer logits,
so the zero prompt is at chance. A soft prompt acts the way attention does in a real LM:

* the prompt's n vectors are summed and layer-normalised into a summary ``s`` (so its
  scale does not matter, only its direction, as after a transformer's LayerNorm);
* a query ``Q s`` is matched against keys ``K x`` of the text features ``x`` (the mean of
  the text's token embeddings); one key dimension is the model's sentiment detector;
* the match gates a value ``G s`` written into the mask-position state
  ``h = tanh(U x + (Q s . K x) G s + C s)``; ``U`` is blind to the polarity direction;
* the logits are ``h`` dotted with the candidates' output embeddings (tied to the input
  table through a fixed projection), as in an MLM head.

A good prompt therefore has to *select* the sentiment key and *write* along the difference
of the two verbalizer outputs at the same time: a non-trivial, non-convex function of the
prompt that CMA-ES in a random subspace solves within a few hundred candidates.

Everything per (prompt i, text j) is computed independently, so logits do not depend on
how a client splits its work (up to float rounding of batched products).

Causal mode (``MockBackend(causal=True)``, ``bbt mock-server --causal``) serves the same model
as a decoder: ``kind`` is ``causal_lm``, there is no mask token, sequences are
``prompt text`` (no special tokens, as GPT-2), and the logits are read at the text's last
token. That token attends to every earlier one, so its state is the mask-position state
above, computed over the text as rendered with :data:`MOCK_CAUSAL_TEMPLATE`.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from bbt.protocol import (
    DEEP_PROMPTS,
    FEATURES_CAPABILITY,
    SCORE_CAPABILITY,
    Limits,
    ModelInfo,
    ProtocolViolation,
    Usage,
)
from bbt.protocol.backend import Backend, FloatArray, IntArray
from bbt.protocol.features import Pooling
from bbt.protocol.score import no_score
from bbt.server._cancel import current_stop_check, raise_if_stopped
from bbt.server._toylm import ToyBigramLM

#: Literal mask token of the mock model.
MOCK_MASK_TOKEN = "[MASK]"
#: Template of the built-in task: ``MOCK_TEMPLATE.format(text=..., mask=MOCK_MASK_TOKEN)``.
MOCK_TEMPLATE = "{text} It was {mask} ."
#: Verbalizer of the built-in task: label 0 -> "bad", label 1 -> "great" (single tokens).
MOCK_VERBALIZER: tuple[str, str] = ("bad", "great")
#: Template and verbalizer of the built-in task in causal mode (``causal=True``): the text is
#: scored at the token after it; the words' leading space is what a real decoder's token holds
#: (the mock's word tokenizer ignores it).
MOCK_CAUSAL_TEMPLATE = "{text} It was"
MOCK_CAUSAL_VERBALIZER: tuple[str, str] = (" bad", " great")
#: Id the mock serves under unless told otherwise.
MOCK_MODEL_ID = "bbt-mock"
#: Id of the causal mode's model unless told otherwise.
MOCK_CAUSAL_MODEL_ID = "bbt-mock-causal"

_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", MOCK_MASK_TOKEN)
_FUNCTION_WORDS = ("it", "was", "the", "a", "and", "but", "not", "very", "so", ".", ",", "!")
_VERBALIZER_WORDS = ("bad", "great", "good", "terrible", "yes", "no")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_CONTENT_WORDS = 1000
# The vocabulary and the polarities are part of the task, not of a model seed: every mock
# (any seed, any width) must agree on which sentences are positive.
_TASK_SEED = 20220101
_KEY_DIM = 32  # d_k of the single attention-like read
_STATE_DIM = 64  # width of the mask-position state before the output head
_SENTIMENT_GAIN = 2.0  # polar words' offset along u, in units of the embedding std
_DETECTOR_GAIN = 2.0  # how strongly the sentiment key responds
_HEAD_GAIN = 0.2  # scale of the output head
#: Longest uninterrupted sleep of the mock's simulated compute (see ``compute_ms``).
COMPUTE_SLICE_S = 0.01
_TOKEN_RE = re.compile(re.escape(MOCK_MASK_TOKEN) + r"|\[[A-Z]+\]|\w+|[^\w\s]")


def _build_vocab() -> tuple[list[str], np.ndarray[Any, np.dtype[np.int8]]]:
    rng = np.random.default_rng(_TASK_SEED)
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    words = sorted({a + b for a in syllables for b in syllables} - set(_FUNCTION_WORDS))
    picked = sorted(rng.choice(len(words), size=_CONTENT_WORDS, replace=False).tolist())
    content = [words[i] for i in picked]
    vocab = [*_SPECIALS, *_FUNCTION_WORDS, *_VERBALIZER_WORDS, *content]
    polarity = np.zeros(len(vocab), dtype=np.int8)
    first = len(vocab) - _CONTENT_WORDS
    # A third positive, a third negative, a third neutral.
    polarity[first:] = rng.permutation(np.resize(np.array([1, -1, 0], dtype=np.int8), len(content)))
    return vocab, polarity


_VOCAB, _POLARITY = _build_vocab()
_INDEX = {w: i for i, w in enumerate(_VOCAB)}
_POLAR_WORDS = [w for w, p in zip(_VOCAB, _POLARITY, strict=True) if p != 0]
_NEUTRAL_WORDS = [
    w for i, (w, p) in enumerate(zip(_VOCAB, _POLARITY, strict=True)) if p == 0 and i >= 26
]


def _tokenize_one(text: str) -> list[str]:
    return [t if t == MOCK_MASK_TOKEN else t.lower() for t in _TOKEN_RE.findall(text)]


def sample_mock_dataset(n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` (text, label) pairs of the mock's sentiment task, balanced and deterministic.

    Texts are 6 to 12 made-up words; the label is 1 when the hidden polarities of the
    words sum above zero, else 0 (ties are never drawn). Classes alternate 0, 1, 0, ...
    so any prefix of even length is balanced. Wrap a text with :data:`MOCK_TEMPLATE`.
    """
    if n < 0:
        raise ValueError("n must be non-negative")
    rng = np.random.default_rng([_TASK_SEED, seed])
    out: list[tuple[str, int]] = []
    while len(out) < n:
        want = len(out) % 2
        length = int(rng.integers(6, 13))
        n_polar = int(rng.integers(1, max(2, length // 2 + 1)))
        polar = [_POLAR_WORDS[k] for k in rng.integers(0, len(_POLAR_WORDS), size=n_polar)]
        score = sum(int(_POLARITY[_INDEX[w]]) for w in polar)
        if score == 0 or (score > 0) != bool(want):
            continue
        neutral = [
            _NEUTRAL_WORDS[k] for k in rng.integers(0, len(_NEUTRAL_WORDS), size=length - n_polar)
        ]
        words = polar + neutral
        order = rng.permutation(len(words))
        out.append((" ".join(words[k] for k in order), want))
    return out


class MockBackend(Backend):
    """The mock masked LM. Cheap: a paper-scale request (H=1024, P=20, n=50, B=32) takes ms.

    Args:
        hidden_size: H, the width of the input embeddings.
        seed: draws the embedding table and the weights; the task itself is fixed.
        limits: request limits to advertise (and that the app enforces).
        max_sequence_length: tokens per sequence, [CLS] + prompt + text + [SEP].
        model_id: the id to serve under.
        embedding_std: target std of the embedding table's entries.
        num_layers: L, the layers a deep prompt [P, L, n, H] has slices for (BBTv2). Slice 0
            acts as a shallow prompt; slice l >= 1 adds its token sum, turned by a fixed
            per-layer matrix and rescaled from that layer's hidden-state std
            (:attr:`ModelInfo.layer_std`), to the summary before normalisation. Zero slices
            at l >= 1 therefore give exactly the shallow prompt's logits.
        deep_prompts: whether to advertise the ``deep_prompts`` capability (and
            ``layer_std``); default: when ``num_layers > 1``, so the default one-layer mock
            looks like a server from before BBTv2.
        compute_ms: simulated model time per ``logits`` call, spent in the worker thread
            (so it holds the backend slot, serialised like a real model's forward passes, and
            unlike the fault injector's ``latency_ms``, which delays requests concurrently).
            Spent in slices of at most :data:`COMPUTE_SLICE_S`, polling the app's stop check
            between slices as the Hugging Face backend does between forward chunks.
        causal: serve the model as a causal LM (see the module docstring); ``model_id``
            then defaults to :data:`MOCK_CAUSAL_MODEL_ID`.
        features: whether to serve features (protocol 1.3, ``"features"`` capability);
            False looks like a server from before 1.3.
        score: whether to answer prompt log-probabilities (protocol 1.6, ``"score"``
            capability) from a toy bigram LM (:mod:`bbt.server._toylm`); default: in
            causal mode only, as a masked LM has none.
    """

    def __init__(
        self,
        hidden_size: int = 64,
        seed: int = 0,
        *,
        limits: Limits | None = None,
        max_sequence_length: int = 512,
        model_id: str | None = None,
        embedding_std: float = 0.05,
        compute_ms: float = 0.0,
        num_layers: int = 1,
        deep_prompts: bool | None = None,
        causal: bool = False,
        features: bool = True,
        score: bool | None = None,
    ) -> None:
        if hidden_size < 8:
            raise ValueError("hidden_size must be at least 8")
        if num_layers < 1:
            raise ValueError("num_layers must be at least 1")
        if not compute_ms >= 0:
            raise ValueError("compute_ms must be non-negative")
        self.compute_ms = float(compute_ms)
        self.causal = causal
        # Tokens a sequence carries besides prompt and text: [CLS] and [SEP]; none for causal.
        self._special_tokens = 0 if causal else 2
        if model_id is None:
            model_id = MOCK_CAUSAL_MODEL_ID if causal else MOCK_MODEL_ID
        self.hidden_size = hidden_size
        self.seed = seed
        rng = np.random.default_rng([seed, hidden_size])
        h, sd = hidden_size, embedding_std

        u = rng.standard_normal(h)
        u /= np.linalg.norm(u)
        table = rng.standard_normal((len(_VOCAB), h)) * sd
        table -= np.outer(table @ u, u)  # the polarity lives only along u...
        table += np.outer(_POLARITY.astype(np.float64) * _SENTIMENT_GAIN * sd, u)  # ...here
        self._table = table.astype(np.float32)
        self._std = float(self._table.std())

        def proj(rows: int, cols: int) -> np.ndarray[Any, np.dtype[np.float64]]:
            out: np.ndarray[Any, np.dtype[np.float64]] = rng.standard_normal((rows, cols))
            out /= np.sqrt(cols)
            return out

        keys = proj(_KEY_DIM, h)
        keys[0] = u * _DETECTOR_GAIN  # key 0 is the model's sentiment detector
        blind = proj(_STATE_DIM, h)
        blind -= np.outer(blind @ u, u)  # without a prompt the state cannot see polarity
        # Inputs are pre-scaled by 1/std (text features) or layer-normalised (prompt
        # summary), so these weights see unit-scale vectors whatever embedding_std is.
        self._keys = keys.astype(np.float32)
        self._blind = blind.astype(np.float32)
        self._query = proj(_KEY_DIM, h).astype(np.float32)
        self._value = proj(_STATE_DIM, h).astype(np.float32)
        self._shift = (proj(_STATE_DIM, h) * 0.3).astype(np.float32)
        # Output embeddings are tied to the input table: out_c = head @ E[c].
        self._head = (proj(_STATE_DIM, h) * (_HEAD_GAIN / sd)).astype(np.float32)
        self._bias = (rng.standard_normal(len(_VOCAB)) * 0.1).astype(np.float32)
        self._init_deep(num_layers)

        lim = limits or Limits(
            max_prompts_per_request=64,
            max_texts_per_request=128,
            max_sequences_per_request=4096,
            max_prompt_tokens=128,
            max_candidates=len(_VOCAB),
            max_text_chars=4096,
            max_embedding_ids=len(_VOCAB),
            max_body_bytes=32 * 1024 * 1024,
        )
        self._info = ModelInfo(
            id=model_id,
            kind="causal_lm" if causal else "masked_lm",
            hidden_size=h,
            vocab_size=len(_VOCAB),
            num_layers=num_layers,
            max_sequence_length=max_sequence_length,
            mask_token=None if causal else MOCK_MASK_TOKEN,
            mask_token_id=None if causal else _INDEX[MOCK_MASK_TOKEN],
            embedding_mean=float(self._table.mean()),
            embedding_std=self._std,
            dtypes=["float32", "float16"],
            limits=lim,
            capabilities=[FEATURES_CAPABILITY] if features else [],
        )
        if causal if score is None else score:
            caps = [*self._info.capabilities, SCORE_CAPABILITY]
            self._info = self._info.model_copy(update={"capabilities": caps})
        self._toy_lm: ToyBigramLM | None = None
        if num_layers > 1 if deep_prompts is None else deep_prompts:
            layer_std = [self._std, *(float(v) for v in self._layer_std[1:])]
            self._info = self._info.model_copy(
                update={
                    "capabilities": [*self._info.capabilities, DEEP_PROMPTS],
                    "layer_std": layer_std,
                }
            )

    def _init_deep(self, num_layers: int) -> None:
        """Per-layer parts of deep prompts, drawn from their own stream so that the shallow
        model (every weight above) is the same whatever ``num_layers`` is."""
        h = self.hidden_size
        rng = np.random.default_rng([self.seed, h, 0xDEE9])
        # Hidden states of a real encoder grow in scale with depth; the mock says so in
        # layer_std and divides a slice by its std, so a slice drawn at that scale acts
        # like an input-embedding-scale prompt.
        self._layer_std = np.asarray(
            [self._std * (1.0 + 0.5 * layer) for layer in range(num_layers)], dtype=np.float64
        )
        turns = rng.standard_normal((max(num_layers - 1, 0), h, h)) / np.sqrt(h)
        self._layer_turn = turns.astype(np.float32)  # [L - 1, H, H]
        # The features' readout (protocol 1.3) from a stream of its own, for the same reason.
        readout = np.random.default_rng([self.seed, h, 0xFEA7]).standard_normal((h, _STATE_DIM))
        self._readout = (readout / np.sqrt(_STATE_DIM)).astype(np.float32)  # [H, R]

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def vocab(self) -> list[str]:
        """Every token of the mock's vocabulary, by id."""
        return list(_VOCAB)

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        ids: list[list[int]] = []
        toks: list[list[str]] = []
        unk = _INDEX["[UNK]"]
        for text in texts:
            words = _tokenize_one(text)
            tids = [_INDEX.get(w, unk) for w in words]
            if add_special_tokens:
                tids = [_INDEX["[CLS]"], *tids, _INDEX["[SEP]"]]
            ids.append(tids)
            toks.append([_VOCAB[t] for t in tids])
        return ids, toks

    def embed(self, token_ids: IntArray) -> FloatArray:
        return self._table[np.asarray(token_ids, dtype=np.int64)].copy()

    def _text_features(self, texts: list[str], n: int) -> tuple[FloatArray, int]:
        """Mean token embedding per text (scaled to unit std) and the tokens they cost."""
        feats = np.empty((len(texts), self.hidden_size), dtype=np.float32)
        tokens = 0
        limit = self._info.max_sequence_length
        ids_all, _ = self.tokenize(texts)
        for j, ids in enumerate(ids_all):
            if self.causal and not ids:
                # Read at the text's last token: a text of no tokens has none (the protocol
                # refuses "" already; whitespace alone gets here).
                raise ProtocolViolation(f"text {j} has no tokens", field=f"texts.{j}")
            length = len(ids) + self._special_tokens + n  # [CLS] prompt text [SEP] / prompt text
            if length > limit:
                raise ProtocolViolation(
                    f"text {j} needs {length} tokens with the prompt; the model takes {limit}",
                    field=f"texts.{j}",
                )
            tokens += length
            feats[j] = self._table[np.asarray(ids, dtype=np.int64)].mean(axis=0)
        return feats / np.float32(self._std), tokens

    def _prompt_summary(self, prompts: FloatArray) -> FloatArray:
        """Sum of each prompt's vectors, layer-normalised; exactly zero for the zero prompt.

        A deep prompt [P, L, n, H] adds each deeper slice's sum, turned by its layer's fixed
        matrix and scaled by ``std_0 / std_l`` (zero slices add exact zeros).
        """
        if prompts.ndim == 4:
            deep = prompts.astype(np.float32, copy=False)
            total = deep[:, 0].sum(axis=1)  # [P, H]
            for layer in range(1, deep.shape[1]):
                scale = np.float32(self._layer_std[0] / self._layer_std[layer])
                part = deep[:, layer].sum(axis=1) * scale
                total = total + np.einsum("ph,hk->pk", part, self._layer_turn[layer - 1])
        else:
            total = prompts.astype(np.float32, copy=False).sum(axis=1)  # [P, H]
        total = total - total.mean(axis=1, keepdims=True)
        # eps in embedding units: a prompt far smaller than one token fades out smoothly.
        eps = np.float32((0.1 * self._std) ** 2)
        rms = np.sqrt((total * total).mean(axis=1, keepdims=True) + eps)
        summary: FloatArray = (total / rms).astype(np.float32)
        return summary

    def _simulate_compute(self) -> None:
        """Sleep ``compute_ms`` in slices, stopping early when the app says the client left."""
        check = current_stop_check()
        deadline = time.perf_counter() + self.compute_ms / 1000.0
        while True:
            raise_if_stopped(check, "mock logits")
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            time.sleep(min(COMPUTE_SLICE_S, left))

    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        if self.compute_ms > 0:
            self._simulate_compute()
        p, n = int(prompts.shape[0]), int(prompts.shape[-2])
        x, tokens_per_prompt = self._text_features(texts, n)  # [B, H]
        s = self._prompt_summary(prompts)  # [P, H]
        state = self._state(s, x)  # [P, B, R]
        out = np.einsum("rh,ch->rc", self._head, self._table[candidate_ids])  # [R, C]
        logits = np.einsum("pbr,rc->pbc", np.tanh(state), out) + self._bias[candidate_ids]
        usage = Usage(prompts=p, sequences=p * len(texts), tokens=p * tokens_per_prompt)
        return logits.astype(np.float32, copy=False), usage

    def _state(self, s: FloatArray, x: FloatArray) -> FloatArray:
        """The pre-activation state [P, X, R] of prompt summaries ``s`` [P, H] reading text
        features ``x`` [X, H] (a text's mean embedding, or one token's embedding)."""
        # einsum, not matmul: these products are tiny, and a multi-threaded BLAS on a
        # busy machine turns them from microseconds into tens of milliseconds. einsum's
        # fixed per-element summation order also makes each (i, j) result bitwise
        # independent of how many prompts and texts share the request.
        query = np.einsum("ph,kh->pk", s, self._query)  # [P, K]
        keys = np.einsum("bh,kh->bk", x, self._keys)  # [B, K]
        match = np.einsum("pk,bk->pb", query, keys) / np.float32(np.sqrt(_KEY_DIM))
        state: FloatArray = (
            np.einsum("bh,rh->br", x, self._blind)[None, :, :]  # [1, B, R]
            + match[:, :, None] * np.einsum("ph,rh->pr", s, self._value)[:, None, :]
            + np.einsum("ph,rh->pr", s, self._shift)[:, None, :]
        )  # [P, B, R]
        return state

    def features(
        self, prompts: FloatArray, texts: list[str], pooling: Pooling
    ) -> tuple[FloatArray, Usage]:
        """The mock's "last hidden state", read out to width H (protocol 1.3).

        ``"mask"``: the activated mask-position state the logits are read from (causal: the
        text's last token, the same state). ``"mean"``: each text token's own state (the
        token's embedding in place of the text's mean, the prompt gating it as above),
        activated and averaged over the text's tokens. Both go through one fixed readout
        [H, R], so F = H as for a real model. The prompt's own positions are never pooled.
        """
        if self.compute_ms > 0:
            self._simulate_compute()
        p, n = int(prompts.shape[0]), int(prompts.shape[-2])
        x, tokens_per_prompt = self._text_features(texts, n)  # [B, H]
        s = self._prompt_summary(prompts)  # [P, H]
        if pooling == "mask":
            pooled = np.tanh(self._state(s, x))  # [P, B, R]
        else:
            ids_all, _ = self.tokenize(texts)
            pooled = np.stack(
                [
                    np.tanh(
                        self._state(s, self._table[np.asarray(ids)] / np.float32(self._std))
                    ).mean(axis=1)
                    for ids in ids_all
                ],
                axis=1,
            )  # [P, B, R]
        feats = np.einsum("pbr,hr->pbh", pooled, self._readout)
        usage = Usage(prompts=p, sequences=p * len(texts), tokens=p * tokens_per_prompt)
        return feats.astype(np.float32, copy=False), usage

    def score(self, texts: list[str]) -> tuple[list[float], list[int], Usage]:
        """Each text's log-probability under the toy bigram LM (protocol 1.6)."""
        if SCORE_CAPABILITY not in self._info.capabilities:
            raise no_score(self._info.id)
        if self._toy_lm is None:
            self._toy_lm = ToyBigramLM(self._table, self.seed)
        ids_all, _ = self.tokenize(texts)
        pairs = [self._toy_lm.score(ids) for ids in ids_all]
        usage = Usage(prompts=1, sequences=len(texts), tokens=sum(len(i) for i in ids_all))
        return [s for s, _ in pairs], [c for _, c in pairs], usage


__all__ = [
    "MOCK_CAUSAL_MODEL_ID",
    "MOCK_CAUSAL_TEMPLATE",
    "MOCK_CAUSAL_VERBALIZER",
    "MOCK_MASK_TOKEN",
    "MOCK_MODEL_ID",
    "MOCK_TEMPLATE",
    "MOCK_VERBALIZER",
    "MockBackend",
    "sample_mock_dataset",
]

"""MockBackend: its task, its vocabulary, and that it learns like a real masked LM under BBT."""

from __future__ import annotations

from typing import Any

import cma
import numpy as np
import pytest

from bbt.server import (
    MOCK_MASK_TOKEN,
    MOCK_TEMPLATE,
    MOCK_VERBALIZER,
    MockBackend,
    sample_mock_dataset,
)

Array = np.ndarray[Any, Any]


def _wrap(data: list[tuple[str, int]]) -> tuple[list[str], Array]:
    texts = [MOCK_TEMPLATE.format(text=t, mask=MOCK_MASK_TOKEN) for t, _ in data]
    return texts, np.array([y for _, y in data])


def _candidates(backend: MockBackend) -> Array:
    ids, _ = backend.tokenize(list(MOCK_VERBALIZER))
    return np.array([i[0] for i in ids])


def _accuracy(backend: MockBackend, prompt: Array, texts: list[str], labels: Array) -> float:
    logits, _ = backend.logits(prompt[None].astype(np.float32), texts, _candidates(backend))
    return float((logits[0].argmax(-1) == labels).mean())


def test_dataset_is_balanced_and_deterministic() -> None:
    data = sample_mock_dataset(64, seed=1)
    assert data == sample_mock_dataset(64, seed=1)
    assert data != sample_mock_dataset(64, seed=2)
    assert sum(y for _, y in data) == 32
    assert [y for _, y in data[:4]] == [0, 1, 0, 1]
    assert sample_mock_dataset(0, seed=0) == []
    with pytest.raises(ValueError, match="non-negative"):
        sample_mock_dataset(-1, seed=0)


def test_task_words_are_single_known_tokens() -> None:
    backend = MockBackend()
    ids, toks = backend.tokenize(list(MOCK_VERBALIZER))
    assert toks == [[w] for w in MOCK_VERBALIZER]
    text, _ = sample_mock_dataset(1, seed=0)[0]
    ids, toks = backend.tokenize([MOCK_TEMPLATE.format(text=text, mask=MOCK_MASK_TOKEN)])
    assert "[UNK]" not in toks[0]
    assert toks[0].count(MOCK_MASK_TOKEN) == 1
    assert backend.info.mask_token_id in ids[0]
    assert toks[0][-4:] == ["it", "was", MOCK_MASK_TOKEN, "."]


def test_unknown_words_map_to_unk() -> None:
    _, toks = MockBackend().tokenize(["Zyxxy!"])
    assert toks == [["[UNK]", "!"]]


def test_info_reports_the_table_statistics() -> None:
    backend = MockBackend(hidden_size=128, seed=3)
    table = backend.embed(np.arange(backend.info.vocab_size))
    assert backend.info.embedding_std == pytest.approx(float(table.std()))
    assert backend.info.embedding_mean == pytest.approx(float(table.mean()))
    assert backend.info.hidden_size == 128


def test_seed_changes_the_model_not_the_task() -> None:
    a, b = MockBackend(seed=0), MockBackend(seed=1)
    assert a.vocab == b.vocab
    assert not np.allclose(a.embed(np.arange(10)), b.embed(np.arange(10)))
    assert np.array_equal(MockBackend(seed=0).embed(np.arange(10)), a.embed(np.arange(10)))


def test_empty_prompt_equals_zero_prompt() -> None:
    backend = MockBackend()
    texts, _ = _wrap(sample_mock_dataset(8, seed=0))
    cands = _candidates(backend)
    empty, usage_empty = backend.logits(np.zeros((1, 0, 64), np.float32), texts, cands)
    zeros, usage_zero = backend.logits(np.zeros((1, 5, 64), np.float32), texts, cands)
    np.testing.assert_allclose(empty, zeros, atol=1e-6)
    assert usage_zero.tokens == usage_empty.tokens + 5 * len(texts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_and_random_prompts_are_near_chance(seed: int) -> None:
    backend = MockBackend(seed=seed)
    texts, labels = _wrap(sample_mock_dataset(400, seed=100))
    assert 0.4 <= _accuracy(backend, np.zeros((0, 64)), texts, labels) <= 0.6
    # p0 drawn from vocabulary embeddings, as the paper initialises prompts.
    rng = np.random.default_rng(seed)
    table = backend.embed(rng.choice(backend.info.vocab_size, size=50))
    assert 0.35 <= _accuracy(backend, table, texts, labels) <= 0.65


def _bbt(backend: MockBackend, seed: int, budget: int = 1000) -> tuple[int | None, float]:
    """The paper's setup: z in R^500, p = A z, A ~ N(0, std_E / (sqrt(d) sigma)), n = 50,
    CMA-ES popsize 20 and sigma 1, cross-entropy over the verbalizer logits on 16 examples
    per class. Returns (candidates evaluated when dev accuracy first reached 90%, or None;
    held-out test accuracy of the last generation's best candidate)."""
    d, n, h, pop, sigma = 500, 50, backend.info.hidden_size, 20, 1.0
    rng = np.random.default_rng(seed)
    std = backend.info.embedding_std / (np.sqrt(d) * sigma)
    proj = rng.normal(0.0, std, size=(n * h, d)).astype(np.float32)
    train_x, train_y = _wrap(sample_mock_dataset(32, seed=1000 + seed))
    dev_x, dev_y = _wrap(sample_mock_dataset(32, seed=2000 + seed))
    cands = _candidates(backend)
    es = cma.CMAEvolutionStrategy(
        np.zeros(d), sigma, {"popsize": pop, "seed": seed + 1, "verbose": -9}
    )
    evaluated, reached = 0, None
    best: Array = np.zeros((n, h), np.float32)
    while evaluated < budget:
        zs = np.asarray(es.ask())
        ps = (zs @ proj.T).reshape(pop, n, h).astype(np.float32)
        logits, _ = backend.logits(ps, train_x, cands)
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        loss = -logp[:, np.arange(len(train_y)), train_y].mean(axis=1)
        es.tell(list(zs), loss.tolist())
        evaluated += pop
        best = ps[int(loss.argmin())]
        if reached is None and _accuracy(backend, best, dev_x, dev_y) >= 0.9:
            reached = evaluated
    test_x, test_y = _wrap(sample_mock_dataset(200, seed=3000 + seed))
    return reached, _accuracy(backend, best, test_x, test_y)


@pytest.mark.slow  # about a second per seed on an idle core: CMA-ES in 500 dimensions
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bbt_reaches_90_percent_within_1000_calls(seed: int) -> None:
    backend = MockBackend(seed=seed)
    reached, test_acc = _bbt(backend, seed)
    test_x, test_y = _wrap(sample_mock_dataset(200, seed=3000 + seed))
    zero = _accuracy(backend, np.zeros((0, 64)), test_x, test_y)
    # Shown with `pytest -s`: the figures the closing note quotes.
    print(
        f"\nseed {seed}: dev >= 90% after {reached} candidates; held-out accuracy "
        f"{test_acc:.1%} after 1000 (zero prompt {zero:.1%})"
    )
    assert reached is not None
    assert reached <= 1000
    assert test_acc >= 0.85


def test_logits_are_bitwise_independent_of_the_split() -> None:
    backend = MockBackend(hidden_size=128)
    texts, _ = _wrap(sample_mock_dataset(6, seed=4))
    prompts = (np.random.default_rng(0).standard_normal((5, 7, 128)) * 0.05).astype(np.float32)
    cands = np.array([17, 18, 20])
    whole, _ = backend.logits(prompts, texts, cands)
    for i in range(5):
        for j in range(6):
            one, _ = backend.logits(prompts[i : i + 1], texts[j : j + 1], cands)
            assert one[0, 0].tobytes() == whole[i, j].tobytes()
    halves = np.concatenate(
        [backend.logits(prompts[:2], texts, cands)[0], backend.logits(prompts[2:], texts, cands)[0]]
    )
    assert halves.tobytes() == whole.tobytes()

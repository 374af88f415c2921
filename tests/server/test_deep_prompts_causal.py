"""Deep prompts (BBTv2) in the causal-LM backend, on tiny random GPT-2 and Llama models built
in the test (:func:`bbt.testing.tiny_models.build_tiny_causal_lm`, nothing downloaded).

The causal backend pads on the LEFT, so each sequence's prompt sits at its own positions; the
layer hooks must add every sequence's deep prompt at those. Shown here: the capability and
per-layer scales are advertised as the masked backend does; an all-zero deep part gives the
shallow logits bit for bit; every layer's slice reaches the model, for its own prompt only;
a sequence scores the same alone as among differently long (differently padded) ones, and as
a manual forward pass with the test's own hook; and BBTv2 tunes end to end over the backend,
with and without a deep session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import torch

from bbt.client import Client
from bbt.protocol import DEEP_PROMPTS, DEEP_SESSIONS_CAPABILITY
from bbt.server import ServerSettings
from bbt.server._core import ServiceCore
from bbt.server.hf_causal import HFCausalBackend
from bbt.testing import CoreTransport
from bbt.tuner import GenerationRecord, TuneConfig, get_preset, load_examples, tune

ROOT = Path(__file__).resolve().parents[2]
#: Differently long texts: in one chunk each is padded on the left by a different amount.
TEXTS = [
    "Review: the movie was great\nSentiment:",
    "bad",
    "Review: it was a boring plot and the acting was the worst of the year\nSentiment:",
    "Review: fun\nSentiment:",
]
CAND = np.array([5, 17, 42, 60])
#: Batched and single passes differ in shapes only, hence float32 rounding (as in
#: test_hf_causal.py).
TOL = 1e-5


@pytest.fixture(scope="module")
def backends(tiny_causal_dirs: dict[str, Path]) -> Iterator[dict[str, HFCausalBackend]]:
    made = {arch: HFCausalBackend(path, num_threads=1) for arch, path in tiny_causal_dirs.items()}
    yield made
    for b in made.values():
        b.close()


@pytest.fixture(params=["gpt2", "llama"])
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _deep(b: HFCausalBackend, p: int, n: int, seed: int) -> np.ndarray[Any, Any]:
    """A random deep prompt [p, L, n, H] at each layer's advertised scale."""
    info = b.info
    assert info.layer_std is not None
    rng = np.random.default_rng(seed)
    scale = np.asarray(info.layer_std, dtype=np.float32)[None, :, None, None] * 2.0
    shape = (p, info.num_layers, n, info.hidden_size)
    return (rng.standard_normal(shape).astype(np.float32) * scale).astype(np.float32)


def _layers(b: HFCausalBackend, arch: str) -> Any:
    model = b._model
    return model.transformer.h if arch == "gpt2" else model.model.layers


def _manual(b: HFCausalBackend, arch: str, deep: np.ndarray[Any, Any], text: str) -> Any:
    """Logits at the last position of ``[BOS] prompt text`` run alone (no padding), slice l
    of ``deep`` [L, n, H] added to the states entering layer l by a hook written here."""
    ids = list(b.encode(text).ids)
    at, n = len(b.bos_ids), deep.shape[1]
    emb = b._model.get_input_embeddings()
    ids_t = torch.tensor(ids)
    x = torch.cat([emb(ids_t[:at]), torch.from_numpy(deep[0]), emb(ids_t[at:])])[None]

    def adder(layer: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            h = (args[0] if args else kwargs["hidden_states"]).clone()
            h[0, at : at + n] += torch.from_numpy(deep[layer])
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}

        return hook

    handles = [
        layer.register_forward_pre_hook(adder(k), with_kwargs=True)
        for k, layer in enumerate(_layers(b, arch))
        if k > 0
    ]
    try:
        with torch.no_grad():
            return b._model(inputs_embeds=x).logits[0, -1, CAND].numpy()
    finally:
        for handle in handles:
            handle.remove()


def test_discovery_is_the_masked_backends(arch: str, backends: dict[str, HFCausalBackend]) -> None:
    info = backends[arch].info
    assert DEEP_PROMPTS in info.capabilities
    assert info.num_layers == 2
    assert info.layer_std is not None
    assert len(info.layer_std) == info.num_layers
    assert info.layer_std[0] == pytest.approx(info.embedding_std)
    assert all(np.isfinite(s) and s > 0 for s in info.layer_std)
    # A session host adds deep sessions for it, as for the masked backend.
    core = ServiceCore(backends[arch], ServerSettings(api_keys=[]))
    assert DEEP_SESSIONS_CAPABILITY in core.info.capabilities


def test_layer_zero_alone_gives_the_shallow_logits_bitwise(
    arch: str, backends: dict[str, HFCausalBackend]
) -> None:
    b = backends[arch]
    deep = _deep(b, 3, 4, seed=0)
    deep[:, 1:] = 0.0
    shallow, _ = b.logits(deep[:, 0].copy(), TEXTS, CAND)
    layered, _ = b.logits(deep, TEXTS, CAND)
    # Adding exact zeros at the prompt positions changes no bit.
    assert np.array_equal(shallow, layered)


def test_each_layer_slice_reaches_the_model_for_its_own_prompt(
    arch: str, backends: dict[str, HFCausalBackend]
) -> None:
    b = backends[arch]
    base = _deep(b, 2, 4, seed=1)
    ref, _ = b.logits(base, TEXTS, CAND)
    for layer in range(b.info.num_layers):
        moved = base.copy()
        moved[1, layer] += _deep(b, 1, 4, seed=2 + layer)[0, layer]
        out, _ = b.logits(moved, TEXTS, CAND)
        # Prompt 1 moved on every text; prompt 0 did not.
        changed = np.abs(out[1] - ref[1]).max(axis=-1)
        assert (changed > 1e-4).all(), f"layer {layer}'s slice changed nothing: {changed}"
        np.testing.assert_allclose(out[0], ref[0], rtol=0, atol=TOL)


def test_a_sequence_scores_the_same_alone_as_among_differently_padded_ones(
    arch: str, backends: dict[str, HFCausalBackend]
) -> None:
    b = backends[arch]
    deep = _deep(b, 2, 3, seed=3)
    batched, _ = b.logits(deep, TEXTS, CAND)
    for j, text in enumerate(TEXTS):
        for i in range(2):
            alone, _ = b.logits(deep[i : i + 1], [text], CAND)  # no padding at all
            np.testing.assert_allclose(batched[i, j], alone[0, 0], rtol=0, atol=TOL)


def test_deep_logits_match_a_manual_forward_with_the_tests_own_hook(
    arch: str, backends: dict[str, HFCausalBackend]
) -> None:
    b = backends[arch]
    deep = _deep(b, 2, 3, seed=4)
    batched, _ = b.logits(deep, TEXTS, CAND)
    for i in range(2):
        for j, text in enumerate(TEXTS):
            want = _manual(b, arch, deep[i], text)
            np.testing.assert_allclose(batched[i, j], want, rtol=0, atol=TOL)


def test_deep_logits_do_not_depend_on_chunking(
    arch: str, backends: dict[str, HFCausalBackend]
) -> None:
    b = backends[arch]
    deep = _deep(b, 3, 5, seed=5)
    budget = b.token_budget
    try:
        b.token_budget = 1  # one sequence per forward pass
        small, _ = b.logits(deep, TEXTS, CAND)
    finally:
        b.token_budget = budget
    big, _ = b.logits(deep, TEXTS, CAND)
    np.testing.assert_allclose(small, big, rtol=0, atol=TOL)


def test_a_shallow_call_after_a_deep_one_is_unaffected(
    arch: str, backends: dict[str, HFCausalBackend]
) -> None:
    b = backends[arch]
    shallow = _deep(b, 2, 4, seed=6)[:, 0].copy()
    before, _ = b.logits(shallow, TEXTS, CAND)
    b.logits(_deep(b, 2, 4, seed=7), TEXTS, CAND)
    after, _ = b.logits(shallow, TEXTS, CAND)
    assert np.array_equal(before, after)


def test_features_take_deep_prompts_too(arch: str, backends: dict[str, HFCausalBackend]) -> None:
    b = backends[arch]
    deep = _deep(b, 2, 4, seed=8)
    for pooling in ("mean", "mask"):
        moved, _ = b.features(deep, TEXTS, pooling)
        zeroed = deep.copy()
        zeroed[:, 1:] = 0.0
        layered, _ = b.features(zeroed, TEXTS, pooling)
        shallow, _ = b.features(deep[:, 0].copy(), TEXTS, pooling)
        assert np.array_equal(layered, shallow)
        assert np.abs(moved - shallow).max() > 1e-4


def test_bbtv2_tunes_over_the_causal_backend_with_and_without_a_deep_session(
    backends: dict[str, HFCausalBackend],
) -> None:
    core = ServiceCore(backends["llama"], ServerSettings(api_keys=[]))
    task = get_preset("sst2")
    rows = load_examples(ROOT / "examples" / "data" / "sst2.tsv", task)
    train, dev = rows[:8], rows[8:16]
    results = {}
    records: dict[str, list[GenerationRecord]] = {"off": [], "on": []}
    for mode in ("off", "on"):
        cfg = TuneConfig(
            method="bbtv2",
            n_tokens=4,
            dim=8,
            popsize=4,
            budget=16,  # four generations: one pass over both layers, twice
            eval_every=8,
            seed=5,
            sessions=mode,
        )
        with Client("http://causal.test", transport=CoreTransport(core), env_file=None) as c:
            results[mode] = tune(
                c, task, train, dev, cfg, plot=False, callbacks=[records[mode].append]
            )
    off, on = results["off"], results["on"]
    assert off.calls == 16
    assert off.z.shape == (2 * 8,)  # one z per layer
    assert off.dev_metric is not None
    # Generations 1 and 3 tuned layer 1, whose prompt only the decoder-layer hook adds: its
    # candidates scored differently, so that prompt reached the model.
    assert [r.layer for r in records["off"]] == [0, 1, 0, 1]
    assert all(r.loss_std > 0 for r in records["off"])
    assert [r.loss_mean for r in records["on"]] == [r.loss_mean for r in records["off"]]
    assert on.selected_at_calls == off.selected_at_calls
    np.testing.assert_allclose(on.z, off.z, rtol=0, atol=0)  # float32 on the CPU: bitwise
    assert on.usage["bytes_sent"] < off.usage["bytes_sent"]

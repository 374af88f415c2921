"""BBTv2 in the tuner: the layer schedule, held layers, per-layer projections, budget, dev
selection, resume (bitwise, with a simulated crash), the run directory and deep-prompt use,
and refusal by a service without deep prompts. All against the in-process mock (4 layers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError, RunError
from bbt.protocol import ModelInfo
from bbt.server import MockBackend
from bbt.server.backend import Backend, FloatArray, IntArray
from bbt.tuner import Example, Task, TunedPrompt, load_result, read_manifest, resume, tune
from bbt.tuner.bbtv2 import (
    BBTv2Tuner,
    DeepProjection,
    layer_recipes,
    make_tuner,
)
from bbt.tuner.run import HISTORY, P0_FILE, PROMPT, Z_FILE, load_checkpoint
from bbt.tuner.tuner import GenerationRecord, TuneConfig, Tuner

from .conftest import H, small_config
from .goldens import fixed_seed_bbtv2_run
from .kernels import active_kernels, outside_pinned, pinned_only, run_pinned

Split = tuple[list[Example], list[Example]]
LAYERS = 4


def deep_service() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=H, num_layers=LAYERS))


def v2_config(**kw: Any) -> TuneConfig:
    return small_config(method="bbtv2", **kw)


class NoDeep(Backend):
    """The mock without the 'deep_prompts' capability (a server from before BBTv2)."""

    def __init__(self) -> None:
        self.inner = MockBackend(hidden_size=H, num_layers=LAYERS)
        self._info = self.inner.info.model_copy(update={"capabilities": [], "layer_std": None})

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        return self.inner.tokenize(texts, add_special_tokens)

    def embed(self, token_ids: IntArray) -> FloatArray:
        return self.inner.embed(token_ids)

    def logits(self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray) -> Any:
        return self.inner.logits(prompts, texts, candidate_ids)


def _interrupt_after(n: int) -> Any:
    def cb(rec: GenerationRecord) -> None:
        if rec.generation == n:
            raise KeyboardInterrupt

    return cb


def test_config_validates_the_method() -> None:
    with pytest.raises(ConfigurationError, match="method must be one of"):
        TuneConfig(method="bbt3")
    with pytest.raises(ConfigurationError, match="layer_generations"):
        TuneConfig(method="bbtv2", layer_generations=0)
    # Manifests from before BBTv2 have no method: they are BBT runs.
    assert TuneConfig.from_dict({"dim": 10}).method == "bbt"


def test_make_tuner_picks_the_method(mock_task: Task, split: Split) -> None:
    train, dev = split
    svc = deep_service()
    assert type(make_tuner(svc, mock_task, train, dev, small_config())) is Tuner
    assert isinstance(make_tuner(svc, mock_task, train, dev, v2_config()), BBTv2Tuner)


def test_a_service_without_deep_prompts_is_refused(mock_task: Task, split: Split) -> None:
    train, dev = split
    svc = LocalClient(NoDeep())
    with pytest.raises(ConfigurationError, match="deep_prompts"):
        BBTv2Tuner(svc, mock_task, train, dev, v2_config())
    assert svc.usage.calls == 0


def test_sessions_on_opens_a_deep_session_and_auto_in_process_sends_whole_deep_prompts(
    mock_task: Task, split: Split
) -> None:
    # Protocol 1.5: deep sessions (tests/tuner/test_deep_sessions.py checks the results).
    train, dev = split
    on = BBTv2Tuner(deep_service(), mock_task, train, dev, v2_config(sessions="on"))
    assert getattr(on.evaluator, "session", None) is not None
    tuner = BBTv2Tuner(deep_service(), mock_task, train, dev, v2_config(sessions="auto"))
    assert getattr(tuner.evaluator, "session", None) is None


def test_each_layer_has_its_own_projection_scaled_from_its_std(
    mock_task: Task, split: Split
) -> None:
    train, dev = split
    svc = deep_service()
    info = svc.model_info()
    assert info.layer_std is not None
    cfg = v2_config(dim=50)
    recipes = layer_recipes(cfg, info)
    assert [r.embedding_std for r in recipes] == info.layer_std
    assert len({r.seed for r in recipes}) == LAYERS
    proj = DeepProjection(recipes)
    # std_l = alpha * std_layer / (sqrt(d) * sigma), each layer at its own scale
    for layer, p in enumerate(proj.layers):
        want = info.layer_std[layer] / math.sqrt(50)
        assert float(p.matrix.std()) == pytest.approx(want, rel=0.05)
    # Layer 0 is BBT's own projection: same recipe as a BBT run with that seed.
    tuner = BBTv2Tuner(svc, mock_task, train, dev, cfg)
    bbt = Tuner(svc, mock_task, train, dev, small_config(dim=50))
    assert tuner.layer_recipes[0] == bbt.recipe
    z = np.random.default_rng(0).standard_normal((3, LAYERS * 50))
    deep = tuner.prompts(z)
    assert deep.shape == (3, LAYERS, cfg.n_tokens, H)
    np.testing.assert_array_equal(deep[:, 0], bbt.prompts(z[:, :50]))


def test_schedule_round_robin_holding_the_other_layers_at_their_best(
    mock_task: Task, split: Split
) -> None:
    train, dev = split
    tuner = BBTv2Tuner(deep_service(), mock_task, train, dev, v2_config(budget=8 * 12))
    d = tuner.config.dim
    layers_seen = []
    for _ in range(2 * LAYERS):
        sched = tuner.schedule
        active = sched.active
        held_before = sched.held.copy()
        pop = tuner.ask()
        # Only the active layer varies; every other layer sits at its held z.
        for layer in range(LAYERS):
            part = pop[:, layer * d : (layer + 1) * d]
            if layer == active:
                assert np.unique(part, axis=0).shape[0] == pop.shape[0]
            else:
                assert (part == held_before[layer]).all()
        losses, metrics = tuner.evaluate(pop)
        rec = tuner.tell(losses, metrics)
        assert rec.layer == active
        layers_seen.append(active)
        # The layer just optimised is now held at its CMA-ES's best z so far.
        best = int(np.argmin(losses))
        if losses[best] <= tuner.schedule.held_loss[active]:
            np.testing.assert_array_equal(
                tuner.schedule.held[active], pop[best, active * d : (active + 1) * d]
            )
    assert layers_seen == [0, 1, 2, 3, 0, 1, 2, 3]


def test_layer_generations_runs_a_layer_several_generations_per_turn(
    mock_task: Task, split: Split
) -> None:
    train, dev = split
    seen: list[int | None] = []
    tuner = BBTv2Tuner(
        deep_service(),
        mock_task,
        train,
        dev,
        v2_config(budget=8 * 6, layer_generations=2),
        callbacks=[lambda rec: seen.append(rec.layer)],  # type: ignore[func-returns-value]
    )
    tuner.run()
    assert seen == [0, 0, 1, 1, 2, 2]


def test_budget_is_counted_in_api_calls_and_dev_selection_works(
    mock_task: Task, split: Split
) -> None:
    train, dev = split
    svc = deep_service()
    cfg = v2_config(budget=100, popsize=8, eval_every=24)
    tuner = BBTv2Tuner(svc, mock_task, train, dev, cfg)
    sel = tuner.run()
    assert tuner.calls == 96  # 12 generations of 8: a 13th would pass the budget
    assert tuner.generation == 12
    assert svc.usage.calls == tuner.calls + tuner.dev_calls
    assert sel.z.shape == (LAYERS * cfg.dim,)
    assert sel.dev_metric is not None
    assert tuner.initial_dev_metric is not None
    assert sel.dev_metric >= tuner.initial_dev_metric


def test_bbtv2_learns_the_mock_task(mock_task: Task, split: Split) -> None:
    train, dev = split
    cfg = v2_config(n_tokens=5, dim=30, popsize=10, budget=600, eval_every=100)
    res = tune(deep_service(), mock_task, train, dev, cfg)
    assert res.initial_dev_metric is not None
    assert res.dev_metric is not None
    assert res.dev_metric >= res.initial_dev_metric + 0.2, (res.initial_dev_metric, res.dev_metric)


def test_checkpoint_holds_the_schedule(tmp_path: Path, mock_task: Task, split: Split) -> None:
    train, dev = split
    run = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        tune(
            deep_service(),
            mock_task,
            train,
            dev,
            v2_config(budget=120),
            run_dir=run,
            callbacks=[_interrupt_after(7)],
        )
    ckpt = load_checkpoint(run)
    assert ckpt is not None
    sched = ckpt["tuner"]["optimizer_state"]  # LayerwiseOptimizer.state_dict(): no pickle
    assert sched["generation"] == 6
    assert sched["active"] == 6 % LAYERS
    assert (sched["held"][: LAYERS - 1] != 0).any()


def test_resume_after_a_crash_is_bitwise_identical(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    train, dev = split
    cfg = v2_config(budget=120, eval_every=16)
    full = tune(deep_service(), mock_task, train, dev, cfg, run_dir=tmp_path / "a")

    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        tune(
            deep_service(),
            mock_task,
            train,
            dev,
            cfg,
            run_dir=run,
            callbacks=[_interrupt_after(6)],  # mid-round: layer 1 of the second round is next
        )
    assert read_manifest(run)["status"] == "interrupted"
    # A history line past the checkpoint (as a kill between the two writes leaves) is dropped.
    with (run / HISTORY).open("a") as fh:
        fh.write('{"generation": 6, "half-written')
    res = resume(run, deep_service())
    assert res.z.tobytes() == full.z.tobytes()
    assert res.prompt.tobytes() == full.prompt.tobytes()
    assert res.metrics == full.metrics
    a = [json.loads(x) for x in (tmp_path / "a" / HISTORY).read_text().splitlines()]
    b = [json.loads(x) for x in (run / HISTORY).read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    assert [r["layer"] for r in b] == [g % LAYERS for g in range(len(b))]


def test_run_directory_manifest_and_deep_prompt_use(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    train, dev = split
    run = tmp_path / "r"
    svc = deep_service()
    cfg = v2_config(budget=80, eval_every=40)
    res = tune(svc, mock_task, train, dev, cfg, run_dir=run)
    man = read_manifest(run)
    assert man["method"] == "bbtv2"
    assert man["config"]["method"] == "bbtv2"
    assert len(man["layer_projections"]) == LAYERS
    assert np.load(run / PROMPT).shape == (LAYERS, cfg.n_tokens, H)
    assert np.load(run / Z_FILE).shape == (LAYERS * cfg.dim,)
    p0 = np.load(run / P0_FILE)
    assert p0.shape == (LAYERS, cfg.n_tokens, H)
    assert not p0[1:].any()  # deeper layers start from 0
    assert load_result(run).prompt.shape == (LAYERS, cfg.n_tokens, H)

    tp = TunedPrompt.load(run, svc)
    assert tp.deep
    ev = tp.evaluate(dev)
    assert ev["accuracy"] == pytest.approx(res.dev_metric)
    preds = tp.predict([e.fields["text"] for e in dev[:3]])
    assert len(preds) == 3
    # A service without deep prompts cannot use it: a clear error, not a 4xx later.
    with pytest.raises(RunError, match="deep prompt"):
        TunedPrompt.load(run, LocalClient(NoDeep()))
    # Nor can a model with another number of layers.
    with pytest.raises(RunError, match="layers"):
        TunedPrompt.load(run, LocalClient(MockBackend(hidden_size=H, num_layers=2)))


def test_a_bbt_run_still_resumes_as_bbt(tmp_path: Path, mock_task: Task, split: Split) -> None:
    train, dev = split
    run = tmp_path / "v1"
    tune(deep_service(), mock_task, train, dev, small_config(budget=32), run_dir=run)
    man = read_manifest(run)
    assert man["method"] == "bbt"
    assert "layer_projections" not in man
    assert np.load(run / PROMPT).shape == (5, H)
    # Its history has no BBTv2 field.
    rows = [json.loads(x) for x in (run / HISTORY).read_text().splitlines()]
    assert rows
    assert all("layer" not in r for r in rows)


#: (sha256 of z, dev metric) of the run below, per kernel set (tests/tuner/kernels.py). The
#: skylakex pair is what the first BBTv2 tuner (before the optimiser/evaluator seams) made,
#: the code that measured docs/benchmarks.md's figures; the haswell pair was recorded later
#: by record_goldens.py.
GOLDEN_BBTV2 = {
    "skylakex": ("649507135d8a9209f9645c4c418470fe8e1def0da819c4049517af9d9924e026", 0.78125),
    "haswell": ("fb4f74ac03b1c820042bfa74085f9eb55e2f887a145c660d335fbadf78c4ee67", 0.78125),
}


@outside_pinned
def test_the_recorded_result_under_the_recording_kernels() -> None:
    run_pinned([f"{__file__}::test_a_fixed_seed_run_reproduces_the_recorded_result"])


@pinned_only
def test_a_fixed_seed_run_reproduces_the_recorded_result() -> None:
    assert fixed_seed_bbtv2_run(LAYERS) == GOLDEN_BBTV2[active_kernels().name]

"""The callback protocol: each hook fires when it should, a plain function still works, and
``True`` from on_generation stops the run."""

from __future__ import annotations

from typing import Any

from bbt.client import LocalClient
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.tuner import Example, GenerationRecord, TuneConfig, get_preset, sample_k_shot, tune
from bbt.tuner.callbacks import TuneCallback

CONFIG = TuneConfig(n_tokens=5, dim=20, popsize=8, budget=80, eval_every=16, seed=0)


def data() -> tuple[list[Example], list[Example]]:
    pool = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    return sample_k_shot(pool, k=8, seed=0, num_classes=2)


class Recorder(TuneCallback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.generations: list[int] = []
        self.evaluations: list[int] = []
        self.finished: list[Any] = []
        self.stop_at = stop_at

    def on_generation(self, record: GenerationRecord) -> bool | None:
        self.generations.append(record.calls)
        return self.stop_at is not None and record.calls >= self.stop_at

    def on_evaluation(self, record: GenerationRecord) -> None:
        assert record.dev_metric is not None
        self.evaluations.append(record.calls)

    def on_finish(self, result: Any) -> None:
        self.finished.append(result)


def test_hooks_fire_on_each_generation_each_evaluation_and_at_the_end() -> None:
    train, dev = data()
    rec = Recorder()
    plain: list[int] = []
    svc = LocalClient(MockBackend(hidden_size=32))
    result = tune(
        svc, get_preset("mock"), train, dev, CONFIG, callbacks=[rec, lambda r: plain.append(1)]
    )
    assert rec.generations == list(range(8, 81, 8))
    assert rec.evaluations == [16, 32, 48, 64, 80]
    assert rec.finished == [result]
    assert len(plain) == 10


def test_on_generation_true_stops_the_run() -> None:
    train, dev = data()
    rec = Recorder(stop_at=24)
    svc = LocalClient(MockBackend(hidden_size=32))
    result = tune(svc, get_preset("mock"), train, dev, CONFIG, callbacks=[rec])
    assert result.stop_reason == "callback"
    assert result.calls == 24
    assert rec.finished == [result]


def test_the_cli_progress_bar_is_a_tune_callback() -> None:
    from bbt.cli._progress import Progress

    bar = Progress(80, "accuracy", quiet=True)
    assert isinstance(bar, TuneCallback)
    train, dev = data()
    svc = LocalClient(MockBackend(hidden_size=32))
    with bar:
        tune(svc, get_preset("mock"), train, dev, CONFIG, callbacks=[bar])

"""A small pipeline around the library API: data -> tune -> reload -> classify -> report.

Runs offline in a few seconds: the model is the mock masked LM in this process
(``LocalClient(MockBackend())``). Point ``make_service`` at ``bbt.Client(base_url=...)`` to
run the same pipeline against a real service.

    .venv/bin/python examples/pipeline.py [RUN_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bbt.client import LocalClient, Service
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.tuner import (
    Example,
    GenerationRecord,
    TuneConfig,
    TunedPrompt,
    get_preset,
    sample_k_shot,
    tune,
)


def make_service() -> Service:
    return LocalClient(MockBackend(hidden_size=64))


def report(rec: GenerationRecord) -> None:
    """A callback: print each dev evaluation as it happens."""
    if rec.dev_metric is not None:
        print(
            f"  {rec.calls:5d} calls  train loss {rec.best_loss:.3f}  "
            f"dev acc {rec.dev_metric:.3f}  (best {rec.best_dev_metric:.3f})"
        )


def main(run_dir: Path) -> None:
    service = make_service()
    task = get_preset("mock")

    # 1. Data: the mock task's sentences; 16 per class to train, 16 per class to select on,
    #    the rest held out (the paper's few-shot protocol).
    pool = [Example({"text": text}, label) for text, label in sample_mock_dataset(600, 0)]
    train, dev = sample_k_shot(pool, k=16, seed=1, num_classes=task.num_classes)
    used = {e.fields["text"] for e in train + dev}
    held_out = [e for e in pool if e.fields["text"] not in used]

    # 2. Tune: 600 API calls (30 generations of 20), dev check every 100 calls.
    config = TuneConfig(n_tokens=50, dim=500, popsize=20, budget=600, eval_every=100, seed=1)
    print(f"tuning on {len(train)} examples, selecting on {len(dev)}:")
    result = tune(service, task, train, dev, config, run_dir=run_dir, callbacks=[report])
    print(
        f"dev accuracy {result.initial_dev_metric:.3f} (p0) -> {result.dev_metric:.3f}; "
        f"{result.calls} calls; run saved in {result.run_dir}"
    )

    # 3. Reuse: reload the tuned prompt from disk, classify new inputs, score the held-out set.
    prompt = TunedPrompt.load(run_dir, service)
    for text, pred in zip(
        [e.fields["text"] for e in held_out[:3]],
        prompt.predict([e.fields["text"] for e in held_out[:3]]),
        strict=True,
    ):
        print(f"  {pred.label:<8} p={pred.probs[pred.label]:.2f}  {text}")
    metrics = prompt.evaluate(held_out)
    print(f"held-out accuracy on {metrics['n']} examples: {metrics['accuracy']:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "run")

"""Black-Box Tuning (Sun et al., ICML 2022): derivative-free prompt tuning through an API.

The pieces, in the order data flows through them::

    Task + data  ->  Tuner: CMAOptimizer asks z  ->  Evaluator (by default p = A z + p0,
                 then Service.logits)  ->  losses over the verbalizer logits  ->  Tuner.tell
                 ->  dev selection
                 ->  run directory (checkpoints, manifest, history, plot)  ->  TunedPrompt

Quick start::

    from bbt.tuner import get_preset, load_examples, sample_k_shot, tune, TuneConfig
    task = get_preset("sst2")
    train, dev = sample_k_shot(load_examples("train.tsv", task), k=16, seed=42,
                               num_classes=task.num_classes)
    result = tune(service, task, train, dev, TuneConfig(budget=8000), run_dir="runs/sst2")
    # or TuneOptions(task="sst2", k_shot=16, config=TuneConfig(budget=8000)), as bbt tune
    # builds them: the manifest then records every option
    TunedPrompt.load("runs/sst2", service).predict(["a gorgeous film"])
"""

from bbt.tuner.callbacks import TuneCallback
from bbt.tuner.data import (
    Example,
    load_examples,
    parse_columns,
    read_rows,
    sample_k_shot,
    to_examples,
)
from bbt.tuner.evaluator import Evaluator, ProjectingEvaluator, make_evaluator
from bbt.tuner.losses import (
    HINGE_MARGIN,
    LOSSES,
    accuracy,
    cross_entropy,
    f1,
    get_loss,
    get_metric,
    hinge,
    neg_accuracy,
    neg_f1,
    softmax,
)
from bbt.tuner.optimizers import CMAOptimizer
from bbt.tuner.options import TuneOptions
from bbt.tuner.predict import Prediction, TunedPrompt
from bbt.tuner.projection import Projection, ProjectionRecipe
from bbt.tuner.prompts import InitialPrompt, build_initial_prompt
from bbt.tuner.run import TuneResult, load_result, read_manifest, resume, tune
from bbt.tuner.tasks import (
    PRESET_NAMES,
    PRESETS,
    Task,
    custom_task,
    get_preset,
    load_task_file,
    parse_verbalizer,
    verbalizer_ids,
)
from bbt.tuner.tuner import Callback, Candidate, GenerationRecord, TuneConfig, Tuner

__all__ = [
    "HINGE_MARGIN",
    "LOSSES",
    "PRESETS",
    "PRESET_NAMES",
    "CMAOptimizer",
    "Callback",
    "Candidate",
    "Evaluator",
    "Example",
    "GenerationRecord",
    "InitialPrompt",
    "Prediction",
    "ProjectingEvaluator",
    "Projection",
    "ProjectionRecipe",
    "Task",
    "TuneCallback",
    "TuneConfig",
    "TuneOptions",
    "TuneResult",
    "TunedPrompt",
    "Tuner",
    "accuracy",
    "build_initial_prompt",
    "cross_entropy",
    "custom_task",
    "f1",
    "get_loss",
    "get_metric",
    "get_preset",
    "hinge",
    "load_examples",
    "load_result",
    "load_task_file",
    "make_evaluator",
    "neg_accuracy",
    "neg_f1",
    "parse_columns",
    "parse_verbalizer",
    "read_manifest",
    "read_rows",
    "resume",
    "sample_k_shot",
    "softmax",
    "to_examples",
    "tune",
    "verbalizer_ids",
]

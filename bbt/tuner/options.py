"""Options as data: everything that shapes a run, in one value.

:class:`TuneOptions` is what ``bbt tune`` builds from its flags, what :func:`bbt.tune`
accepts in place of a :class:`~bbt.tuner.tuner.TuneConfig`, and what a run's manifest
records (``"options"``) and :func:`bbt.tuner.run.resume` reads back. It wraps the
:class:`TuneConfig` (the algorithm's hyper-parameters, validated there) and adds what comes
before the algorithm: the task, the data and its k-shot sampling, and the initial prompt.

One source of truth: the defaults are the dataclasses' own, and the help text of every
option is :data:`HELP` (the CLI's ``--help`` reads it). A field added to
:class:`TuneConfig` travels in ``options.config`` untouched; it needs one :data:`HELP`
line and one flag in ``bbt tune``.

A manifest written before options existed has no ``"options"``: :meth:`from_manifest`
rebuilds them from its ``"config"``, ``"task"`` and ``"data"``, with defaults for the rest.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from bbt.tuner.tuner import TuneConfig

#: The help text of each option, by field name (TuneOptions' and TuneConfig's).
HELP: dict[str, str] = {
    # Task & data
    "task": "Preset: sst2, yelp, agnews, dbpedia, mrpc, snli, rte, mock.",
    "task_file": "Task from a JSON/TOML file.",
    "template": "Custom template, e.g. '{text} It was {mask} .'",
    "verbalizer": "Custom verbalizer, e.g. 0=bad,1=great.",
    "metric": "Custom task's metric: accuracy or f1.",
    "data": "Labelled examples (TSV, CSV, JSONL, Parquet, a datasets.save_to_disk dir).",
    "dev_data": "Draw the dev set from this file instead.",
    "columns": "FIELD=COLUMN mapping (repeatable).",
    "text_field": "Column holding the text (a one-field task's, or a pair's first).",
    "text_pair_column": "Column holding the second text of a two-field task.",
    "label_column": "Label column (default: label).",
    "label_map": "Data label -> task label, e.g. pos=1,neg=0.",
    "data_format": "tsv, csv, jsonl, parquet or hf (a save_to_disk directory).",
    "k_shot": "Training examples per class.",
    "dev_k": "Dev examples per class (default: k).",
    "data_seed": "Seed of k-shot sampling (default: --seed).",
    # Prompt
    "init": (
        "p0: zeros, vocab, vocab:START, text:WORDS, file:PATH, run:DIR (a tuned run's "
        "prompt), mix:DIR1,DIR2 (the mixture method's sources), prompt:ID (a prompt in the "
        "service's registry, e.g. one its operator shares)."
    ),
    "n_tokens": "Soft prompt length n.",
    "dim": "Intrinsic dimension d.",
    "alpha": "Projection scale alpha: it sets the search's step size in prompt space.",
    "projection": "Projection distribution: normal or uniform.",
    # Budget & CMA-ES
    "seed": "Seed of CMA-ES and the projection.",
    "budget": "API calls (one candidate on the training set).",
    "popsize": "CMA-ES population size.",
    "sigma": "CMA-ES initial step size in z. A's scale divides by it, so without --bound "
    "the prompts tried stay the same; change --alpha instead.",
    "bound": "Box bound on z (none by default).",
    "loss": "ce, hinge, neg_accuracy or neg_f1.",
    "eval_every": "Score the best candidate on dev every N calls.",
    "patience": "Stop after N dev evaluations without gain.",
    "patience_calls": "Stop when dev has not improved for N calls (checked every eval_every).",
    "stop_ucb": "Stop when an upper confidence bound on the dev gain of the next --stop-window "
    "checks, from the last ones' gains, is below this (0.01 = one accuracy point).",
    "stop_window": "Dev checks the --stop-ucb rule looks back on and ahead to.",
    "stop_min_calls": "--stop-ucb never stops a run before this many calls.",
    "eval_mean": "Also score the CMA-ES mean on dev at each check (one more dev call).",
    "method": "bbt (a prompt at the input) or bbtv2 (a prompt at every layer, layers tuned in "
    "turn; needs a server with deep prompts, e.g. bbt's own).",
    "layer_generations": "bbtv2: CMA-ES generations each layer runs per turn.",
    "optimizer": "The optimiser over z: cma, sepcma (diagonal CMA-ES), ipop (restarts, growing "
    "population), gp (GP-assisted CMA-ES; the gp extra) or one a plug-in registers "
    "(entry-point group bbt.optimizers). bbtv2 runs one per layer.",
    # Readout (bbt.tuner.readout)
    "label_words": "Several label words per class, LABEL=WORD|WORD,... (class score: log-sum-exp "
    "of its words' logits); with --search-label-words, the candidates to search.",
    "calibrate": "Contextual calibration: divide out the class probabilities of a content-free "
    "input ('N/A') under the same prompt.",
    "search_label_words": "Pick N label words per class on the training shots under p0 (one "
    "call; from --label-words, else a built-in list); 0: off.",
    # Service
    "sessions": "auto: send z to a projection session when the server offers them, else full "
    "prompts; on: require a session; off: always full prompts. Same results.",
}


@dataclass(frozen=True)
class TuneOptions:
    """Every option that shapes a run (see the module docstring). ``config`` holds the
    algorithm's; the other fields say which task, which data and which p0."""

    task: str | None = None
    task_file: str | None = None
    template: str | None = None
    verbalizer: str | None = None
    metric: str = "accuracy"
    data: str | None = None
    dev_data: str | None = None
    columns: tuple[str, ...] = ()
    text_field: str | None = None
    label_column: str | None = None
    text_pair_column: str | None = None
    label_map: str | None = None
    data_format: str | None = None
    k_shot: int = 16
    dev_k: int | None = None
    data_seed: int | None = None
    init: str = "zeros"
    config: TuneConfig = field(default_factory=TuneConfig)

    @property
    def sampling_seed(self) -> int:
        """The seed of k-shot sampling: ``data_seed``, else the run's seed."""
        return self.config.seed if self.data_seed is None else self.data_seed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, ``config`` as a nested dict."""
        out = self.manifest_dict()
        out["config"] = self.config.as_dict()
        return out

    def manifest_dict(self) -> dict[str, Any]:
        """What a manifest records under ``"options"``: all but ``config``, which the
        manifest already holds under ``"config"`` (one copy, read back by resume)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"}
        out["columns"] = list(self.columns)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneOptions:
        """The inverse of :meth:`as_dict`; unknown keys (from a newer bbt) are ignored and
        missing ones take their defaults."""
        known = {f.name for f in fields(cls)} - {"config"}
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        if "columns" in kwargs:
            kwargs["columns"] = tuple(kwargs["columns"])
        config = data.get("config")
        if isinstance(config, dict):
            kwargs["config"] = TuneConfig.from_dict(config)
        return cls(**kwargs)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> TuneOptions:
        """The options a run was made with. Manifests without ``"options"`` (bbt before
        them, or a run started through the library with a bare config) get what their
        ``"task"`` and ``"data"`` say and defaults for the rest."""
        recorded = manifest.get("options")
        if isinstance(recorded, dict):
            base = {k: v for k, v in recorded.items() if k != "config"}
        else:
            data = manifest.get("data", {})
            base = {
                "task": manifest.get("task", {}).get("name"),
                "k_shot": data.get("k_shot", default("k_shot")),
                "dev_k": data.get("dev_k"),
                "data_seed": data.get("data_seed"),
            }
        return cls.from_dict({**base, "config": manifest["config"]})


def default(name: str) -> Any:
    """The default of option ``name``: the dataclasses' own (one source of truth)."""
    for cls in (TuneOptions, TuneConfig):
        for f in fields(cls):
            if f.name == name:
                if f.default is not MISSING:
                    return f.default
                if f.default_factory is not MISSING:
                    return f.default_factory()
    raise KeyError(name)

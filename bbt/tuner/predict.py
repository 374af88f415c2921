"""Using a tuned prompt: predictions with class probabilities, and evaluation on labelled data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbt.client import Service
from bbt.errors import ConfigurationError, RunError, TaskError
from bbt.tuner.data import Example, load_examples
from bbt.tuner.losses import accuracy, cross_entropy, f1, softmax
from bbt.tuner.run import PROMPT, load_result, read_manifest
from bbt.tuner.tasks import Task, verbalizer_ids

F32 = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class Prediction:
    """The predicted class of one input and the probability of every class (softmax over the
    verbalizer logits)."""

    label: str
    index: int
    probs: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "probs": self.probs}


class TunedPrompt:
    """A tuned soft prompt together with its task, ready to classify new inputs.

    ``TunedPrompt.load(run_dir, service)`` reads a finished run. Without a service, the first
    prediction opens a :class:`bbt.Client` configured from ``BBT_*`` settings (or ``.env``),
    falling back to the base URL the run recorded. The service must serve the model the prompt was
    tuned for.
    """

    def __init__(
        self,
        prompt: F32,
        task: Task,
        model_id: str,
        candidate_ids: Sequence[int] | None = None,
        *,
        service: Service | None = None,
        base_url: str | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.prompt: F32 = np.ascontiguousarray(prompt, dtype=np.float32)
        if self.prompt.ndim != 2:
            raise ValueError("prompt must have shape [n, H]")
        self.task = task
        self.model_id = model_id
        self.candidate_ids = list(candidate_ids) if candidate_ids is not None else None
        self.base_url = base_url
        self.run_dir = run_dir
        self._service: Service | None = None
        if service is not None:
            self.bind(service)

    @classmethod
    def load(cls, run_dir: str | Path, service: Service | None = None) -> TunedPrompt:
        path = Path(run_dir)
        manifest = read_manifest(path)
        load_result(path)  # raises a clear RunError for a run that has not finished
        try:
            prompt = np.load(path / PROMPT, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RunError(f"cannot read the tuned prompt of {path}: {exc}") from None
        return cls(
            prompt,
            Task.from_dict(manifest["task"]),
            manifest["model"]["id"],
            manifest.get("candidate_ids"),
            service=service,
            base_url=manifest.get("service", {}).get("base_url"),
            run_dir=path,
        )

    def bind(self, service: Service) -> TunedPrompt:
        """Use ``service`` for predictions; checks it serves the right model and tokenizer."""
        info = service.model_info()
        if info.id != self.model_id or info.hidden_size != self.prompt.shape[1]:
            raise RunError(
                f"this prompt was tuned for model {self.model_id!r} (H={self.prompt.shape[1]}); "
                f"the service serves {info.id!r} (H={info.hidden_size})"
            )
        ids = verbalizer_ids(self.task, service)
        if self.candidate_ids is not None and ids != self.candidate_ids:
            raise RunError("the service's tokenizer maps the verbalizer words differently")
        self.candidate_ids = ids
        self._service = service
        return self

    @property
    def service(self) -> Service:
        if self._service is None:
            from bbt.client import Client, ClientSettings

            # Settings (arguments, BBT_* environment, .env) first; the URL the run recorded
            # only when they name none.
            url = ClientSettings().base_url or self.base_url
            if not url:
                raise ConfigurationError(
                    "no service to predict with: pass service=..., or set BBT_BASE_URL"
                )
            self.bind(Client(base_url=url))
        if self._service is None:  # pragma: no cover - bind() sets it
            raise ConfigurationError("no service")
        return self._service

    def _inputs(self, inputs: Sequence[str | Mapping[str, str]]) -> list[str]:
        svc = self.service
        info = svc.model_info()
        fields = self.task.fields
        texts = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                if len(fields) != 1:
                    raise TaskError(
                        f"input {i} is a plain text but task {self.task.name!r} needs fields "
                        f"{', '.join(fields)}"
                    )
                values: Mapping[str, str] = {fields[0]: item}
            else:
                values = item
            texts.append(self.task.render(values, info.mask_token, info.limits.max_text_chars))
        return texts

    def logits(self, inputs: Sequence[str | Mapping[str, str]]) -> np.ndarray[Any, Any]:
        """Verbalizer logits [B, C] of ``inputs`` under the tuned prompt."""
        if not inputs:
            return np.zeros((0, self.task.num_classes), dtype=np.float32)
        texts = self._inputs(inputs)
        assert self.candidate_ids is not None  # set by the service property's bind()
        out: np.ndarray[Any, Any] = self.service.logits(
            self.prompt[None], texts, self.candidate_ids
        )[0]
        return out

    def predict(self, inputs: Sequence[str | Mapping[str, str]]) -> list[Prediction]:
        """Predictions for texts (single-field tasks) or field mappings (any task)."""
        logits = self.logits(inputs)
        probs = softmax(logits)
        out = []
        for row in probs:
            k = int(np.argmax(row))
            out.append(
                Prediction(
                    self.task.labels[k],
                    k,
                    {lab: float(p) for lab, p in zip(self.task.labels, row, strict=True)},
                )
            )
        return out

    def evaluate(
        self, data: Sequence[Example] | str | Path, **load_kwargs: Any
    ) -> dict[str, float | int]:
        """Accuracy, F1 (class 1 for two classes, macro otherwise) and cross-entropy on
        labelled examples, or on a data file (``load_kwargs`` go to ``load_examples``)."""
        examples = (
            load_examples(data, self.task, **load_kwargs)
            if isinstance(data, str | Path)
            else list(data)
        )
        if not examples:
            raise TaskError("no examples to evaluate on")
        if any(e.label is None for e in examples):
            raise TaskError("evaluation needs a label on every example")
        labels = np.asarray([e.label for e in examples], dtype=np.int64)
        logits = self.logits([dict(e.fields) for e in examples])[None]
        return {
            "n": len(examples),
            "accuracy": float(accuracy(logits, labels)[0]),
            "f1": float(f1(logits, labels)[0]),
            "cross_entropy": float(cross_entropy(logits, labels)[0]),
        }

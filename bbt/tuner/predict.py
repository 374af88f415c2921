"""Using a tuned prompt: predictions with class probabilities, and evaluation on labelled data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbt.client import Service
from bbt.errors import ConfigurationError, RunError, TaskError
from bbt.protocol import DEEP_PROMPTS
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
    prediction opens a :class:`bbt.Client` on the URL you configured: ``base_url=`` here or
    in :meth:`load`, else ``BBT_BASE_URL`` (environment or ``.env``); the API key comes from
    ``BBT_API_KEY`` as usual. The service must serve the model the prompt was tuned for.

    The URL a run's manifest records (:attr:`recorded_base_url`) is never contacted on its
    own: a run directory can come from anyone, and the client would send your API key, and
    your inputs, to whatever URL it names. Pass that URL as ``base_url=`` to opt in.
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
        recorded_base_url: str | None = None,
    ) -> None:
        self.prompt: F32 = np.ascontiguousarray(prompt, dtype=np.float32)
        if self.prompt.ndim not in (2, 3):
            raise ValueError("prompt must have shape [n, H] (or [L, n, H], a deep prompt)")
        self.task = task
        self.model_id = model_id
        self.candidate_ids = list(candidate_ids) if candidate_ids is not None else None
        #: The service URL to use when no service is bound: given by the caller, never read
        #: from a file.
        self.base_url = base_url
        self.run_dir = run_dir
        #: The URL the run was tuned against, as its manifest says; shown, never contacted.
        self.recorded_base_url = recorded_base_url
        self._service: Service | None = None
        if service is not None:
            self.bind(service)

    @classmethod
    def load(
        cls, run_dir: str | Path, service: Service | None = None, *, base_url: str | None = None
    ) -> TunedPrompt:
        """A finished run's prompt, bound to ``service`` now or, lazily, to ``base_url``."""
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
            base_url=base_url,
            run_dir=path,
            recorded_base_url=manifest.get("service", {}).get("base_url"),
        )

    def bind(self, service: Service) -> TunedPrompt:
        """Use ``service`` for predictions; checks it serves the right model and tokenizer."""
        info = service.model_info()
        hidden = self.prompt.shape[-1]
        if info.id != self.model_id or info.hidden_size != hidden:
            raise RunError(
                f"this prompt was tuned for model {self.model_id!r} (H={hidden}); "
                f"the service serves {info.id!r} (H={info.hidden_size})"
            )
        if self.deep and DEEP_PROMPTS not in info.capabilities:
            raise RunError(
                f"this is a deep prompt (BBTv2, {self.prompt.shape[0]} layers); the service "
                f"does not serve deep prompts (no {DEEP_PROMPTS!r} capability): use bbt's own "
                "server for it"
            )
        if self.deep and info.num_layers != self.prompt.shape[0]:
            raise RunError(
                f"this deep prompt has {self.prompt.shape[0]} layers; the service's model has "
                f"{info.num_layers}"
            )
        ids = verbalizer_ids(self.task, service)
        if self.candidate_ids is not None and ids != self.candidate_ids:
            raise RunError("the service's tokenizer maps the verbalizer words differently")
        self.candidate_ids = ids
        self._service = service
        return self

    @property
    def deep(self) -> bool:
        """Whether this is a deep prompt [L, n, H] (BBTv2) rather than [n, H] (BBT)."""
        return self.prompt.ndim == 3

    @property
    def service(self) -> Service:
        if self._service is None:
            from bbt.client import Client, ClientSettings

            # Only a URL the user configured: an argument, then BBT_BASE_URL / .env. The
            # client attaches BBT_API_KEY to every request, so a URL read from the run
            # directory (which may have come from anyone) would receive the user's key.
            settings = ClientSettings(base_url=self.base_url)
            if not settings.base_url:
                raise ConfigurationError(self._no_url_message())
            client = Client.from_settings(settings)
            try:
                self.bind(client)
            except BaseException:
                client.close()
                raise
        if self._service is None:  # pragma: no cover - bind() sets it
            raise ConfigurationError("no service")
        return self._service

    def _no_url_message(self) -> str:
        if not self.recorded_base_url:
            return (
                "no service to predict with: pass service=... or base_url=..., "
                "or set BBT_BASE_URL (environment or .env)"
            )
        # repr(): the manifest is not ours to trust, so no raw control characters reach the
        # terminal from it.
        url = repr(self.recorded_base_url)
        return (
            f"no service URL configured; this run was tuned against {url}, which bbt does not "
            "contact on a run directory's say-so (your API key would go with every request). "
            f"To use it, pass base_url={url} (bbt eval/predict: --base-url) or set "
            "BBT_BASE_URL; or pass service=..."
        )

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

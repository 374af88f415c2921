"""Using a tuned prompt: predictions with class probabilities, and evaluation on labelled data."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbt.client import Service
from bbt.client.redaction import redact_url
from bbt.client.service import PromptStore, offers_prompt_registry
from bbt.errors import (
    APIStatusError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    RunError,
    TaskError,
)
from bbt.protocol import DEEP_PROMPTS
from bbt.tuner.data import Example, load_examples
from bbt.tuner.losses import accuracy, cross_entropy, f1, softmax
from bbt.tuner.probe_head import ProbeHead, has_head, head_logits
from bbt.tuner.readout import Readout, build_readout
from bbt.tuner.run import PROMPT, load_result, read_manifest
from bbt.tuner.rundir import atomic_write, load_npy, read_text
from bbt.tuner.tasks import Task, verbalizer_ids

F32 = np.ndarray[Any, np.dtype[np.float32]]

log = logging.getLogger("bbt.tuner")

#: File in a run directory listing the ids under which services keep the run's prompt.
PROMPT_IDS = "prompt_ids.json"
_PROMPT_IDS_VERSION = 1
_MAX_LABEL = 200


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

    **Served by id.** When the service keeps a prompt registry (its model lists the
    ``"prompt_registry"`` capability), the prompt is stored there on first use and every
    prediction then uploads only its texts. The id is recorded in the run directory
    (:data:`PROMPT_IDS`, per service URL and model) and reused by later processes after a
    check that the service still holds these very bytes. An id the service no longer knows
    (deleted, or stored with another API key) is replaced by storing the prompt again, once;
    a service without the registry, or one that refuses to keep the prompt (full), gets
    the prompt with each request as before. ``use_registry=False`` always uploads it.
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
        use_registry: bool = True,
        head: ProbeHead | None = None,
        label_words: str | None = None,
        calibrate: bool = False,
    ) -> None:
        #: A probe run's head (``head.json``): predictions come from the prompt's features.
        self.head = head
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
        #: Whether to use the service's prompt registry when it has one (see the class doc).
        self.use_registry = use_registry
        #: The run's readout (bbt.tuner.readout): label words per class and calibration.
        self.label_words = label_words
        self.calibrate = calibrate
        self.readout: Readout | None = None
        #: The id the bound service keeps this prompt under, once known.
        self.prompt_id: str | None = None
        #: How the last :meth:`logits` call reached the model: "id" or "upload".
        self.last_path: str | None = None
        self._digest = hashlib.sha256(self.prompt.astype("<f4", copy=False).tobytes()).hexdigest()
        self._registry_refused = False
        self._service: Service | None = None
        if service is not None:
            self.bind(service)

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        service: Service | None = None,
        *,
        base_url: str | None = None,
        use_registry: bool = True,
    ) -> TunedPrompt:
        """A finished run's prompt, bound to ``service`` now or, lazily, to ``base_url``."""
        path = Path(run_dir)
        manifest = read_manifest(path)
        load_result(path)  # raises a clear RunError for a run that has not finished
        try:
            prompt = load_npy(path / PROMPT)
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
            use_registry=use_registry,
            head=ProbeHead.load(path) if has_head(path) else None,
            label_words=manifest.get("config", {}).get("label_words"),
            calibrate=bool(manifest.get("config", {}).get("calibrate", False)),
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
        self.readout = build_readout(
            self.task.for_kind(info.kind, info.id), service, self.label_words, self.calibrate
        )
        self._service = service
        self.prompt_id = None  # an id belongs to one service
        self._registry_refused = False
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
            texts.append(self.task.render_for(info, values))
        return texts

    def logits(self, inputs: Sequence[str | Mapping[str, str]]) -> np.ndarray[Any, Any]:
        """Verbalizer logits [B, C] of ``inputs`` under the tuned prompt."""
        if not inputs:
            return np.zeros((0, self.task.num_classes), dtype=np.float32)
        texts = self._inputs(inputs)
        if self.head is not None:
            self.last_path = "features"
            return head_logits(self.head, self.service, self.prompt, texts)
        assert self.candidate_ids is not None  # set by the service property's bind()
        if self.readout is None:
            return self._word_logits(texts, self.candidate_ids)
        sent, ids = self.readout.request(texts)
        return self.readout.reduce(self._word_logits(sent, ids))

    def _word_logits(self, texts: list[str], candidate_ids: list[int]) -> np.ndarray[Any, Any]:
        svc = self.service
        if self.use_registry and not self._registry_refused and offers_prompt_registry(svc):
            assert isinstance(svc, PromptStore)  # offers_prompt_registry checked it
            try:
                by_id = self._logits_by_id(svc, texts, candidate_ids)
            except APIStatusError as exc:
                if exc.status_code != 503:
                    raise
                # The registry's storage failed (disk full, read-only, I/O; its client
                # already retried): the prompt itself still scores, as on a server without
                # a registry. Not asked again by this TunedPrompt.
                log.warning(
                    "the service's prompt registry is unavailable (%s); sending the prompt "
                    "with each request instead",
                    exc,
                )
                self._registry_refused = True
                by_id = None
            if by_id is not None:
                self.last_path = "id"
                return by_id
        self.last_path = "upload"
        out: np.ndarray[Any, Any] = svc.logits(self.prompt[None], texts, candidate_ids)[0]
        return out

    # ------------------------------------------------------------------ the prompt registry

    def _logits_by_id(
        self, svc: PromptStore, texts: list[str], candidate_ids: list[int]
    ) -> np.ndarray[Any, Any] | None:
        """Logits by the stored prompt's id, storing it first if need be; None: upload it."""
        prompt_id = self.prompt_id or self._recorded_id(svc) or self._register(svc)
        if prompt_id is None:
            return None
        try:
            return svc.prompt_logits(prompt_id, texts, candidate_ids)
        except (APIStatusError, InvalidRequestError) as exc:
            if not _names_the_prompt(exc):
                raise
            # Deleted since, stored with another key, or no longer usable: store it again,
            # once, and retry; a second failure is the service's to explain.
            log.info(
                "the service no longer serves prompt %s (%s); storing it again", prompt_id, exc
            )
            self.prompt_id = None
            prompt_id = self._register(svc)
            if prompt_id is None:
                return None
            return svc.prompt_logits(prompt_id, texts, candidate_ids)

    def _service_url(self, svc: PromptStore) -> str | None:
        """The service's URL as prompt_ids.json records (and matches) it: never with the
        credentials a ``user:pass@`` URL carries."""
        url = getattr(svc, "base_url", None)
        return redact_url(url) if isinstance(url, str) else None

    def _recorded_id(self, svc: PromptStore) -> str | None:
        """The id the run directory records for this service, if the service still holds
        exactly this prompt under it (checked: a run directory is not to be trusted)."""
        url = self._service_url(svc)
        if url is None or self.run_dir is None:
            return None
        for entry in _read_prompt_ids(self.run_dir):
            if (entry.get("base_url"), entry.get("model"), entry.get("sha256")) != (
                url,
                self.model_id,
                self._digest,
            ):
                continue
            prompt_id = entry.get("prompt_id")
            if not isinstance(prompt_id, str):
                return None
            try:
                meta = svc.get_prompt(prompt_id)
            except (APIStatusError, InvalidRequestError) as exc:
                if _names_the_prompt(exc):
                    return None
                raise
            if meta.sha256 == self._digest and meta.model == self.model_id:
                self.prompt_id = prompt_id
                return prompt_id
            return None
        return None

    def _register(self, svc: PromptStore) -> str | None:
        """Store the prompt on the service and record its id; None when the service refuses
        to keep it (the caller uploads the prompt instead)."""
        label = f"bbt run {self.run_dir.name}" if self.run_dir is not None else None
        try:
            stored = svc.store_prompt(
                self.prompt, label=label[:_MAX_LABEL] if label is not None else None
            )
        except (APIStatusError, InvalidRequestError) as exc:
            if isinstance(exc, APIStatusError) and exc.status_code >= 500:
                raise
            log.warning(
                "the service did not keep the prompt (%s); sending it with each request", exc
            )
            self._registry_refused = True
            return None
        if stored.sha256 != self._digest:
            log.warning(
                "the service stored prompt %s with different bytes; sending the prompt with "
                "each request instead",
                stored.id,
            )
            self._registry_refused = True
            return None
        self.prompt_id = stored.id
        url = self._service_url(svc)
        if url is not None and self.run_dir is not None:
            _record_prompt_id(self.run_dir, url, self.model_id, stored.id, self._digest)
        log.info("the service keeps this prompt as %s", stored.id)
        return stored.id

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


def _names_the_prompt(exc: APIStatusError | InvalidRequestError) -> bool:
    """An answer about the prompt id itself: unknown (404) or not usable (422), not about the
    texts or the model."""
    if exc.field != "prompt_id":
        return False
    if isinstance(exc, InvalidRequestError):
        return True
    return isinstance(exc, NotFoundError) or exc.status_code == 422


def _read_prompt_ids(run_dir: Path) -> list[dict[str, Any]]:
    """The run directory's id records; [] when absent or unreadable (never an error: the
    prompt can always be stored again). A link there is not followed."""
    try:
        data = json.loads(read_text(run_dir / PROMPT_IDS))
    except (OSError, ValueError, RunError):
        return []
    entries = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict)]


def _record_prompt_id(
    run_dir: Path, base_url: str, model: str, prompt_id: str, digest: str
) -> None:
    """Record (atomically) that ``base_url`` keeps this prompt as ``prompt_id``; a run
    directory that cannot be written only costs a store call next time."""
    entries = [
        e
        for e in _read_prompt_ids(run_dir)
        if (e.get("base_url"), e.get("model")) != (base_url, model)
    ]
    entries.append({"base_url": base_url, "model": model, "prompt_id": prompt_id, "sha256": digest})
    body = json.dumps({"version": _PROMPT_IDS_VERSION, "prompts": entries}, indent=2) + "\n"
    try:
        atomic_write(run_dir / PROMPT_IDS, body.encode("utf-8"))
    except OSError as exc:
        log.warning("cannot record the prompt id in %s: %s", run_dir, exc.strerror or exc)

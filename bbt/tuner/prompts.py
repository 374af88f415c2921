"""The initial prompt p0 that the projection is added to (p = A z + p0).

Sun et al. (2022, Sec. 3.2 and 4.2) start from p0 = 0 for most tasks, from embeddings of
vocabulary tokens in their code (the prompt tokens are a fixed id range of the vocabulary),
and from a prompt pre-trained on NLI for the sentence-pair tasks. All of these are recipes
here; a recipe and the model's embeddings give back the same p0.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bbt.client import Service
from bbt.errors import ConfigurationError
from bbt.protocol import ModelInfo
from bbt.tuner.transfer import load_registry_prompt, load_run_prompt, load_sources, mix_prompts

PromptKind = Literal[
    "zeros", "vocab_sample", "vocab_range", "text", "file", "run", "mix", "prompt"
]  # fmt: skip
PROMPT_KINDS: tuple[PromptKind, ...] = (
    "zeros", "vocab_sample", "vocab_range", "text", "file", "run", "mix", "prompt",
)  # fmt: skip

#: The paper's code takes its prompt tokens from ids 1000..1000+n of the vocabulary.
DEFAULT_VOCAB_START = 1000

FloatArray = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class InitialPrompt:
    """How p0 is made.

    - ``zeros``: p0 = 0 (the paper's default).
    - ``vocab_sample``: embeddings of n token ids drawn without replacement with ``seed``.
    - ``vocab_range``: embeddings of ids ``start .. start + n - 1``.
    - ``text``: embeddings of the tokens of ``text``, repeated cyclically (or cut) to n.
    - ``file``: an array of shape [n, H] (or [n * H]) in a ``.npy`` file; ``sha256`` is
      recorded so a run can tell when the file changed.
    - ``run``: the selected prompt of the finished run in directory ``path``
      (:mod:`bbt.tuner.transfer`); ``sha256`` is the prompt's, ``model`` the fingerprint of
      the model it was tuned on (checked against the service's).
    - ``mix``: the K finished runs in ``sources`` (each as for ``run``); p0 is their mean,
      softmax(0)-weighted, where the ``mixture`` method starts; ``sha256`` hashes the stack.
    - ``prompt``: the prompt ``prompt_id`` in the service's registry, shared by its operator
      or stored by this key (protocol 1.4); ``sha256`` and ``model`` as for ``run``.
    """

    kind: PromptKind = "zeros"
    seed: int = 0
    start: int = DEFAULT_VOCAB_START
    text: str | None = None
    path: str | None = None
    sha256: str | None = None
    model: str | None = None  # kinds "run" and "mix": the sources' model fingerprint
    sources: tuple[str, ...] | None = None  # kind "mix": the source run directories
    prompt_id: str | None = None  # kind "prompt": the registry id

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ConfigurationError(
                f"unknown initial prompt {self.kind!r}; choose one of {', '.join(PROMPT_KINDS)}"
            )
        if self.kind == "text" and not self.text:
            raise ConfigurationError("an initial prompt from text needs the text")
        if self.kind == "file" and not self.path:
            raise ConfigurationError("an initial prompt from a file needs the file's path")
        if self.kind == "run" and not self.path:
            raise ConfigurationError("an initial prompt from a run needs the run directory")
        if self.kind == "prompt" and not self.prompt_id:
            raise ConfigurationError("an initial prompt from the registry needs its id")
        if self.kind == "mix" and not self.sources:
            raise ConfigurationError("a mixture of prompts needs its source run directories")
        if self.start < 0:
            raise ConfigurationError("the first vocabulary id must be non-negative")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("model", "sources", "prompt_id"):  # older manifests have no such keys
            if data[key] is None:
                del data[key]
        if self.sources is not None:
            data["sources"] = list(self.sources)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InitialPrompt:
        sources = data.get("sources")
        if sources is not None:
            data = {**data, "sources": tuple(sources)}
        return cls(**data)

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> InitialPrompt:
        """Parse a CLI spec: ``zeros``, ``vocab``, ``vocab:START``, ``text:WORDS``,
        ``file:PATH``, ``run:DIR``, ``mix:DIR1,DIR2,...`` or ``prompt:ID``."""
        head, _, rest = spec.partition(":")
        if head == "zeros" and not rest:
            return cls("zeros")
        if head == "vocab":
            if not rest:
                return cls("vocab_sample", seed=seed)
            try:
                return cls("vocab_range", start=int(rest))
            except ValueError:
                raise ConfigurationError(f"vocab:START needs an integer; got {rest!r}") from None
        if head == "text" and rest:
            return cls("text", text=rest)
        if head == "file" and rest:
            return cls("file", path=rest)
        if head == "run" and rest:
            return cls("run", path=rest)
        if head == "mix" and rest:
            return cls("mix", sources=tuple(p for p in rest.split(",") if p))
        if head == "prompt" and rest:
            return cls("prompt", prompt_id=rest.strip())
        raise ConfigurationError(
            f"cannot read initial prompt {spec!r}; use zeros, vocab, vocab:START, "
            "text:WORDS, file:PATH.npy, run:DIR, mix:DIR1,DIR2,... or prompt:ID"
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _embed(service: Service, ids: list[int]) -> FloatArray:
    # Chunk to the server's limit: the client may or may not split embeddings calls.
    step = service.model_info().limits.max_embedding_ids
    parts = [service.embed(ids[i : i + step]) for i in range(0, len(ids), step)]
    return np.concatenate(parts, axis=0).astype(np.float32, copy=False)


def build_initial_prompt(
    recipe: InitialPrompt, service: Service, n_tokens: int
) -> tuple[FloatArray, InitialPrompt]:
    """p0 of shape [n, H] and the recipe completed with what makes it reproducible (a file's
    hash)."""
    info = service.model_info()
    h = info.hidden_size
    if recipe.kind == "zeros":
        return np.zeros((n_tokens, h), dtype=np.float32), recipe
    if recipe.kind in ("run", "mix"):
        return _transferred(recipe, info, n_tokens)
    if recipe.kind == "prompt":
        assert recipe.prompt_id is not None  # checked in __post_init__
        prompt, digest, fingerprint = load_registry_prompt(
            service, recipe.prompt_id, info, n_tokens, recipe.sha256
        )
        done = InitialPrompt("prompt", prompt_id=recipe.prompt_id, sha256=digest, model=fingerprint)
        return prompt, done
    if recipe.kind == "file":
        assert recipe.path is not None  # checked in __post_init__
        path = Path(recipe.path)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read initial prompt {path}: {exc}") from None
        if arr.shape == (n_tokens * h,):
            arr = arr.reshape(n_tokens, h)
        if arr.shape != (n_tokens, h):
            raise ConfigurationError(
                f"initial prompt {path} has shape {list(arr.shape)}; this run needs "
                f"[{n_tokens}, {h}] (n prompt tokens x the model's hidden size)"
            )
        digest = _sha256(path)
        if recipe.sha256 is not None and recipe.sha256 != digest:
            raise ConfigurationError(f"initial prompt {path} changed since the run started")
        return np.ascontiguousarray(arr, dtype=np.float32), InitialPrompt(
            "file", path=str(path), sha256=digest
        )
    if recipe.kind == "vocab_sample":
        if n_tokens > info.vocab_size:
            raise ConfigurationError(
                f"cannot sample {n_tokens} distinct ids from a vocabulary of {info.vocab_size}"
            )
        rng = np.random.Generator(np.random.PCG64(recipe.seed))
        ids = [int(i) for i in rng.choice(info.vocab_size, size=n_tokens, replace=False)]
    elif recipe.kind == "vocab_range":
        if recipe.start + n_tokens > info.vocab_size:
            raise ConfigurationError(
                f"ids {recipe.start}..{recipe.start + n_tokens - 1} run past the vocabulary "
                f"of {info.vocab_size}"
            )
        ids = list(range(recipe.start, recipe.start + n_tokens))
    else:
        assert recipe.text is not None
        tokens = service.tokenize([recipe.text]).ids[0]
        if not tokens:
            raise ConfigurationError(f"initial prompt text {recipe.text!r} has no tokens")
        ids = [tokens[i % len(tokens)] for i in range(n_tokens)]
    if n_tokens == 0:
        return np.zeros((0, h), dtype=np.float32), recipe
    return _embed(service, ids), recipe


def _transferred(
    recipe: InitialPrompt, info: ModelInfo, n_tokens: int
) -> tuple[FloatArray, InitialPrompt]:
    """p0 from finished runs (``run``: one; ``mix``: the mean of several), checked against
    the served model and ``n_tokens`` (:mod:`bbt.tuner.transfer`)."""
    if recipe.kind == "run":
        assert recipe.path is not None  # checked in __post_init__
        prompt, digest, fingerprint = load_run_prompt(recipe.path, info, n_tokens)
        if recipe.sha256 is not None and recipe.sha256 != digest:
            raise ConfigurationError(f"the prompt of run {recipe.path} changed since this started")
        return prompt, InitialPrompt("run", path=recipe.path, sha256=digest, model=fingerprint)
    assert recipe.sources is not None  # kind "mix", checked in __post_init__
    stack, digest, fingerprint = load_sources(recipe.sources, info, n_tokens, recipe.sha256)
    p0 = mix_prompts(np.zeros((1, len(recipe.sources))), stack)[0]
    return p0, InitialPrompt("mix", sources=recipe.sources, sha256=digest, model=fingerprint)

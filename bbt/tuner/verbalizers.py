"""Verbalizer ids: the one token id each label word is for the served model (masked: the
word at the mask; causal: the first token the decoder predicts after the template)."""

from __future__ import annotations

from typing import Protocol

from bbt.client import Service
from bbt.errors import TaskError
from bbt.tuner.templates import MASK_FIELD, parse_template


class Worded(Protocol):
    """What these functions read of a task already resolved for the served kind
    (:class:`bbt.tuner.tasks.Task` is one; this module does not import it, tasks.py imports
    this one)."""

    @property
    def template(self) -> str: ...
    @property
    def labels(self) -> tuple[str, ...]: ...
    @property
    def words(self) -> tuple[str, ...]: ...


def _space_before_mask(template: str) -> bool:
    before = template.split("{" + MASK_FIELD + "}", 1)[0]
    return bool(before) and before[-1].isspace()


def _template_tail(template: str) -> str:
    """The literal text after the template's last placeholder (what precedes the word)."""
    tail = ""
    for literal, name, _, _ in parse_template(template):
        # A field ends the literal text before it; "{{" escapes split a literal in pieces.
        tail = "" if name is not None else tail + literal
    return tail


def causal_verbalizer_ids(task: Worded, service: Service) -> list[int]:
    """Each word must be the ONE token a decoder would produce right after the rendered text.

    Tokenising a word alone is wrong for SentencePiece models (Llama): ``" positive"`` alone
    becomes ``▁`` + ``▁positive`` (the tokenizer prepends a space), while after ``Sentiment:``
    it is the single ``▁positive``. So each word is tokenised after the template's literal
    tail (``\\nSentiment:``; a neutral ``.`` when the template ends in a field), and must
    add exactly one token to the tail's own tokens. This also holds for byte-level BPE
    (GPT-2: ``Ġpositive``) and catches a word that merges with the end of the template.
    """
    anchor = _template_tail(task.template) or "."
    words = list(task.words)
    # The other spacing of each word, to suggest it when it is a single token.
    other = [w[1:] if w.startswith(" ") else " " + w for w in words]
    resp = service.tokenize([anchor] + [anchor + w for w in words] + [anchor + w for w in other])
    base = resp.ids[0]
    k = len(words)

    def extra(row: int) -> tuple[list[int], list[str]] | None:
        got = resp.ids[row]
        if got[: len(base)] != base:
            return None  # the word merged with the end of the template
        return got[len(base) :], resp.tokens[row][len(base) :]

    ids: list[int] = []
    model = service.model_info().id
    for i, word in enumerate(words):
        added = extra(1 + i)
        if added is not None and len(added[0]) == 1:
            ids.append(added[0][0])
            continue
        alt = extra(1 + k + i)
        hint = (
            f"; {other[i]!r} is one token, so write the word "
            f"{'without' if word.startswith(' ') else 'with'} its leading space"
            if alt is not None and len(alt[0]) == 1
            else "; choose a word that is a single token"
        )
        if added is None:
            raise TaskError(
                f"verbalizer word {word!r} (label {task.labels[i]!r}) merges with the end of "
                f"the template {anchor!r} for model {model!r}: {anchor + word!r} is "
                f"{resp.tokens[1 + i]}{hint}"
            )
        raise TaskError(
            f"verbalizer word {word!r} (label {task.labels[i]!r}) is {len(added[0])} tokens "
            f"{added[1]} for model {model!r} after {anchor!r}, but must be exactly one{hint}"
        )
    return ids


def masked_verbalizer_ids(task: Worded, service: Service) -> list[int]:
    spaced = _space_before_mask(task.template)
    forms = [(" " + w) if spaced else w for w in task.words]
    resp = service.tokenize(forms + list(task.words) + [" " + w for w in task.words])
    k = len(task.words)
    ids: list[int] = []
    for i, word in enumerate(task.words):
        got = resp.ids[i]
        if len(got) == 1:
            ids.append(got[0])
            continue
        bare, with_space = resp.ids[k + i], resp.ids[2 * k + i]
        other = with_space if not spaced else bare
        hint = (
            f"; it is one token {'with' if not spaced else 'without'} a leading space, so "
            f"{'add' if not spaced else 'remove'} the space before {{mask}} in the template"
            if len(other) == 1
            else "; choose a word that is a single token"
        )
        pieces = resp.tokens[i]
        where = "after a space" if spaced else "with no leading space"
        raise TaskError(
            f"verbalizer word {word!r} (label {task.labels[i]!r}) is {len(got)} tokens {pieces} "
            f"for model {service.model_info().id!r} {where}, but must be exactly one{hint}"
        )
    return ids

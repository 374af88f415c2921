"""Templates: ``{field}`` placeholders for the inputs and, for a masked LM, one ``{mask}``
(see :mod:`bbt.tuner.tasks` for what a task is); parsing and checking them."""

from __future__ import annotations

import string

from bbt.errors import TaskError
from bbt.protocol import MODEL_KINDS, ModelKind

MASK_FIELD = "mask"
KIND_NAMES = {"masked_lm": "masked LM", "causal_lm": "causal LM"}


def parse_template(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TaskError(f"template {template!r} is malformed: {exc}") from None


def template_kind(template: str) -> ModelKind:
    """The kind of model ``template`` is written for: masked when it holds ``{mask}``."""
    has_mask = any(name == MASK_FIELD for _, name, _, _ in parse_template(template))
    return "masked_lm" if has_mask else "causal_lm"


def template_fields(template: str, kind: ModelKind = "masked_lm") -> tuple[str, ...]:
    """Input fields of ``template`` in order of appearance (``{mask}`` excluded).

    A ``masked_lm`` template must hold ``{mask}`` exactly once; a ``causal_lm`` one none, and
    must not end in a space or tab (the space before the label word belongs to the word).
    """
    if kind not in MODEL_KINDS:
        raise TaskError(f"unknown model kind {kind!r}; choose {' or '.join(MODEL_KINDS)}")
    parsed = parse_template(template)
    names: list[str] = []
    masks = 0
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise TaskError(
                f"template {template!r}: placeholder {{{name}}} must be a plain field name "
                "(write literal braces as {{ and }})"
            )
        if name == MASK_FIELD:
            masks += 1
        elif name not in names:
            names.append(name)
    if kind == "masked_lm" and masks != 1:
        hint = (
            "; a template without {mask} is for a causal LM (kind causal_lm)" if not masks else ""
        )
        raise TaskError(
            f"template {template!r} must contain {{mask}} exactly once (found {masks}){hint}"
        )
    if kind == "causal_lm":
        if masks:
            raise TaskError(
                f"template {template!r} is for a causal LM, which has no mask token: drop "
                "{mask} and end the template where the label word comes, e.g. "
                "'Review: {text}\\nSentiment:'"
            )
        if template.endswith((" ", "\t")):
            raise TaskError(
                f"causal template {template!r} ends with a space: end it before the space and "
                "start each verbalizer word with it (' positive'), as a decoder predicts it"
            )
    if not names:
        raise TaskError(f"template {template!r} has no input field such as {{text}}")
    return tuple(names)


def check_words(name: str, labels: tuple[str, ...], words: tuple[str, ...], what: str) -> None:
    if len(words) != len(labels):
        raise TaskError(f"task {name!r}: {len(labels)} labels but {len(words)} {what}")
    if len(set(words)) != len(words):
        raise TaskError(f"task {name!r}: {what} must be distinct")
    if any(not w.strip() for w in words):
        raise TaskError(f"task {name!r}: {what} must not be empty")

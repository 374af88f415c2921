"""The token layout both vLLM modes must give the model: ``BOS? + soft prompt + text``.

Embedding-table mode builds the sequence itself from ``/tokenize`` (the ids the tokenizer
puts before a text, then the text's own ids). Black-box (chat) mode leaves it to vLLM, which
renders the chat template with the ``prompt_embeds`` part as the special token
``<prompt_embeds>`` and tokenizes the rendered string once, with ``add_special_tokens``
off whatever the request says. Two consequences, both fixed here:

* **BOS**: the tokenizer adds none, so bbt's template writes ``bos_token`` itself when
  asked (``chat_template_kwargs={"bbt_bos": true}``), which bbt asks for exactly when
  ``/tokenize`` shows the tokenizer putting BOS before a text.
* **The text's first token**: a SentencePiece-style tokenizer marks the start of a text with
  a word boundary (``▁It``); after a special token some do not (``It``). bbt asks the
  server's own tokenizer (``/tokenize`` of ``<prompt_embeds>`` + lead + probe, which vLLM
  tokenizes with the placeholder registered) which lead (nothing or one space) makes the
  text after the placeholder tokenize as the text alone, and puts that lead before every
  text it sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bbt.engines.codec import Tokenize, special_prefix

__all__ = [
    "BOS_TEMPLATE_KWARG",
    "LEADS",
    "PROBE_TEXT",
    "PROMPT_EMBEDS_PLACEHOLDER",
    "ChatLayout",
    "Tokenize",
    "chat_layout",
    "special_prefix",
    "text_lead",
]

logger = logging.getLogger("bbt.vllm")

#: vLLM's placeholder for a ``prompt_embeds`` chat part in the rendered prompt.
PROMPT_EMBEDS_PLACEHOLDER = "<prompt_embeds>"
#: The template variable that makes bbt's chat template write ``bos_token`` first.
BOS_TEMPLATE_KWARG = "bbt_bos"
#: Texts tried after the placeholder: a word with a capital, a space inside, no punctuation.
PROBE_TEXT = "It was"
#: Leads tried, in order: the text as is, then one space (SentencePiece's word boundary).
LEADS = ("", " ")


@dataclass(frozen=True)
class ChatLayout:
    """What black-box requests add so vLLM's chat path tokenizes as ``/tokenize`` does."""

    bos: bool
    lead: str
    #: False when no lead reproduced ``/tokenize`` (the first token may differ).
    exact: bool = True


def text_lead(tokenize: Tokenize) -> tuple[str, bool]:
    """(lead, exact): the string to put before a text after the placeholder so that vLLM's
    tokenization of it equals ``/tokenize(text)``."""
    plain = tokenize(PROBE_TEXT, False)
    for lead in LEADS:
        ids = tokenize(PROMPT_EMBEDS_PLACEHOLDER + lead + PROBE_TEXT, False)
        if len(ids) == len(plain) + 1 and ids[1:] == plain:
            return lead, True
    logger.warning(
        "the server's tokenizer splits the text after <prompt_embeds> differently from "
        "/tokenize(text) whatever bbt puts before it: black-box scores may differ from "
        "embedding-table ones in the text's first token"
    )
    return "", False


def chat_layout(tokenize: Tokenize) -> ChatLayout:
    """Probe the server's tokenizer once (four ``/tokenize`` calls at most)."""
    bos = bool(special_prefix(tokenize))
    lead, exact = text_lead(tokenize)
    return ChatLayout(bos=bos, lead=lead, exact=exact)

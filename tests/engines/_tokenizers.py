"""Tiny tokenizers built offline, of the two families whose chat path differs:
SentencePiece-style (Llama: a ``▁`` word boundary, BOS added) and byte-level (GPT-2: no BOS)."""

from __future__ import annotations

from typing import Any

CORPUS = [
    "It was great. It was bad. It was terrible, not good.",
    "Review: good fun and a very nice film\nSentiment: great",
    "the plot was thin but the cast was fine so it was good",
    "pepe vate sato great bad yes no",
] * 8


def llama_style() -> Any:
    """BPE over Metaspace (prepend_scheme "first", as Llama 3-era SentencePiece
    conversions): ``/tokenize("It")`` is ``▁It``; ``<s>`` added in front."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"])
    )
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def byte_level() -> Any:
    """Byte-level BPE as GPT-2's: spaces are part of the next token (``Ġwas``), no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


TOKENIZERS = {"llama_style": llama_style, "byte_level": byte_level}

"""Tiny randomly initialised causal LMs (GPT-2 and Llama architectures), built offline.

For tests and examples of ``bbt serve`` with a causal LM and of anything that needs a real
Hugging Face decoder without downloading one: :func:`build_tiny_causal_lm` writes a model
directory (config, safetensors weights, a ``tokenizers`` tokenizer trained here on a few
hundred words) that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load with
``HF_HUB_OFFLINE=1``. The weights are random, so the model knows nothing; what is real is
the architecture, the tokenizer conventions and the file layout:

* ``gpt2``: byte-level BPE; a word's leading space is part of its token (``Ġpositive``); the
  tokenizer adds no BOS (the soft prompt goes first).
* ``llama``: SentencePiece-style BPE (``▁`` marks a space, one is prepended to the text, as
  Llama's tokenizer does); the tokenizer adds ``<s>`` (the soft prompt goes right after it).

Needs torch, transformers and tokenizers (``bbt[serve]``); imported lazily.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

Arch = Literal["gpt2", "llama"]
ARCHS: tuple[Arch, ...] = ("gpt2", "llama")

#: Words the tokenizer holds as single tokens (with a leading space, and at a text's start):
#: the decoder presets' templates and label words, the mock task's words, and some filler.
VOCAB_WORDS: tuple[str, ...] = (
    *("Review", "Sentiment", "Article", "Topic", "Text", "Category", "Answer", "Premise"),
    *("Hypothesis", "Sentence", "Does", "the", "premise", "entail", "hypothesis", "Do"),
    *("they", "mean", "same", "It", "was", "it", "a", "an", "and", "but", "not", "very"),
    *("positive", "negative", "great", "bad", "good", "terrible", "Yes", "No", "Maybe"),
    *("World", "Sports", "Business", "Tech", "True", "False", "movie", "film", "plot"),
    *("acting", "story", "boring", "fun", "loved", "hated", "best", "worst", "news"),
    *("team", "market", "game", "won", "lost", "company", "stock", "new", "phone"),
    *("is", "of", "to", "in", "this", "that", "with", "for", "on", "at", "by", "from"),
)
_SPECIALS = ("<s>", "</s>", "<pad>", "<unk>")


def _require() -> tuple[Any, Any, Any]:
    try:
        import tokenizers
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        from bbt.errors import ConfigurationError

        raise ConfigurationError(
            f"tiny models need torch, transformers and tokenizers ({exc.name} is missing): "
            "pip install 'bbt[serve]'"
        ) from None
    return tokenizers, torch, transformers


def _corpus() -> list[str]:
    # Each word at a text's start and after a space, often enough for every merge to win.
    line = " ".join(VOCAB_WORDS)
    return [line, *(f"{w} {w}: {w}.\n{w}" for w in VOCAB_WORDS)] * 3


def _train_tokenizer(arch: Arch) -> Any:
    tokenizers, _, _ = _require()
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    alphabet = sorted(set(string.printable))
    if arch == "gpt2":
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        specials = ["<|endoftext|>"]
    else:
        tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = [*alphabet, "▁"]
        specials = list(_SPECIALS)
    # Room for every merge of every word form: the training stops when no pair is left.
    size = len(alphabet) + len(specials) + 4 * sum(len(w) + 1 for w in VOCAB_WORDS)
    trainer = trainers.BpeTrainer(
        vocab_size=size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if arch == "llama":
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    return tok


def build_tiny_causal_lm(
    path: str | Path,
    arch: Arch = "gpt2",
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_positions: int = 128,
) -> Path:
    """Write a tiny random ``arch`` causal LM with its tokenizer to ``path``; return it."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    _, torch, transformers = _require()
    transformers.utils.logging.disable_progress_bar()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(arch)
    vocab = tok.get_vocab_size()
    if arch == "gpt2":
        eos = tok.token_to_id("<|endoftext|>")
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
        config: Any = transformers.GPT2Config(
            vocab_size=vocab,
            n_positions=max_positions,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=2,
            bos_token_id=eos,
            eos_token_id=eos,
        )
        model_cls: Any = transformers.GPT2LMHeadModel
    else:
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
        )
        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=max_positions,
            bos_token_id=tok.token_to_id("<s>"),
            eos_token_id=tok.token_to_id("</s>"),
            pad_token_id=tok.token_to_id("<pad>"),
            tie_word_embeddings=False,
        )
        model_cls = transformers.LlamaForCausalLM
    fast.model_max_length = max_positions
    torch.manual_seed(seed)
    model = model_cls(config)
    model.eval()
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


__all__ = ["ARCHS", "VOCAB_WORDS", "Arch", "build_tiny_causal_lm"]

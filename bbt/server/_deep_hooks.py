"""Deep prompts (BBTv2) in the Hugging Face backends: where a model keeps its layer list, and
the forward pre-hooks that add a chunk's deep prompt to the hidden states entering a layer.

A deep prompt is [P, L, n, H]: slice 0 is the input prompt (placed among the embeddings by
the backend's ``_forward_chunk``), slice l >= 1 is added to the hidden states entering layer
l at the prompt's n positions. While a deep chunk runs, the backend holds that chunk's
prompts in ``_deep_chunk`` ([S, L, n, H]) and where they go in ``_deep_at``:

* ``(at, n)``: the same positions in every sequence (the masked backend pads on the right,
  so every prompt starts at ``at``);
* a long tensor [S, n]: each sequence's own positions (the causal backend pads on the left,
  so a prompt starts after its sequence's padding).

The masked path concatenates exactly as before this module existed; the causal path adds
with ``scatter_add`` at distinct positions, one addition per element, so a zero slice changes
no bit in either.

torch is never imported here: the backends pass their module in.
"""

from __future__ import annotations

from typing import Any, Protocol

#: Where a masked LM's base model keeps its layers (BERT, RoBERTa: ``encoder.layer``).
ENCODER_LAYER_PATHS: tuple[tuple[str, ...], ...] = (("encoder", "layer"),)

#: Where a causal LM's base model keeps its layers: Llama, Mistral, Qwen2, Gemma, Phi,
#: GPT-NeoX (``layers``), GPT-2, GPT-J, Falcon, Bloom (``h``), OPT (``decoder.layers``).
DECODER_LAYER_PATHS: tuple[tuple[str, ...], ...] = (("layers",), ("h",), ("decoder", "layers"))


class DeepOwner(Protocol):
    """What the hooks read from a backend while a chunk runs."""

    _deep_chunk: Any  # [S, L, n, H] while a deep chunk runs, else None
    _deep_at: Any  # (first prompt position, n), or a long tensor [S, n] of positions


def find_layers(root: Any, paths: tuple[tuple[str, ...], ...], num_layers: int, nn: Any) -> Any:
    """The first ``nn.ModuleList`` of ``num_layers`` modules found at one of ``paths`` under
    ``root``, or None when this architecture has none we know how to hook (no deep prompts
    then)."""
    for path in paths:
        node = root
        for name in path:
            node = getattr(node, name, None)
        if isinstance(node, nn.ModuleList) and len(node) == num_layers:
            return node
    return None


def add_deep(torch: Any, hidden: Any, deep: Any, at: Any) -> Any:
    """``hidden`` [S, T, H] with ``deep`` [S, n, H] added at the prompt positions ``at``, out
    of place (the tensor entering a layer is the previous layer's output)."""
    if isinstance(at, tuple):
        start, n = at
        return torch.cat(
            [hidden[:, :start], hidden[:, start : start + n] + deep, hidden[:, start + n :]],
            dim=1,
        )
    index = at.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.scatter_add(1, index, deep)


def install_deep_hooks(owner: DeepOwner, layers: Any, torch: Any) -> None:
    """A forward pre-hook on each layer l >= 1 adding slice l of ``owner``'s deep chunk."""
    for index, layer in enumerate(layers):
        if index > 0:
            layer.register_forward_pre_hook(_hook(owner, index, torch), with_kwargs=True)


def _hook(owner: DeepOwner, index: int, torch: Any) -> Any:
    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        deep = owner._deep_chunk
        if deep is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        moved = add_deep(torch, hidden, deep[:, index], owner._deep_at)
        if args:
            return (moved, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": moved}

    return hook


__all__ = [
    "DECODER_LAYER_PATHS",
    "ENCODER_LAYER_PATHS",
    "DeepOwner",
    "add_deep",
    "find_layers",
    "install_deep_hooks",
]

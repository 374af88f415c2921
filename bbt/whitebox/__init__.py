"""White-box training on the local model (``bbt[whitebox]``: torch, transformers, peft).

The provider of a model served as an API can train with gradients; this package does so on
the model ``bbt serve`` serves (the embedded default or a model directory), for the
white-box reference rows of a comparison and for pre-training prompts that black-box runs
start from (``bbt pretrain``). Heavy imports happen when training starts.
"""

from __future__ import annotations

from bbt.whitebox.train import WHITEBOX_METHODS, WhiteboxResult, train_whitebox

__all__ = ["WHITEBOX_METHODS", "WhiteboxResult", "train_whitebox"]

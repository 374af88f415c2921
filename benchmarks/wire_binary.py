"""Full-prompt path: is a binary body worth it over protocol v1's JSON + base64?

Issue 10, item 5. One paper-scale logits request (P = 20 prompts of n = 50 x H = 1024, B = 32
texts, C = 2), in float32 and float16, two ways:

- **json+base64**: protocol v1 as it is: ``Tensor.from_numpy`` + ``LogitsRequest`` +
  ``model_dump_json`` on the client; on the server what FastAPI does with the body
  (``json.loads``, then pydantic validation of the dict) and ``Tensor.to_numpy`` to float32.
- **json/jiter**: the same body, parsed on the server by pydantic's own JSON parser
  (``model_validate_json``) instead of ``json.loads``: how much of the cost is the parse and
  how much is base64;
- **binary**: a sketch of the alternative, built here with the same checks: a 4-byte
  little-endian header length, a JSON header (model, texts, candidate ids, dtype, shape;
  validated with pydantic on the server), then the raw little-endian tensor bytes; the server
  checks the byte count against the shape before ``np.frombuffer``.

Both decode to the same float32 array (asserted). Printed per request: bytes, client encode
and server decode (median ms over ``--repeats``), and, from the same run for scale, the
projection p = A z + p0 of the same population (d = 500), which the client does anyway.

    python benchmarks/wire_binary.py             # paper scale
    python benchmarks/wire_binary.py --smoke     # tiny, for CI

Writes ``benchmarks/results/wire_binary.json`` (``--out-dir`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bbt.protocol import DType, LogitsRequest, Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import wire_bytes  # noqa: E402  (the paper-scale texts of benchmarks/wire_bytes.py)

WIRE = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
IDS = [372, 6587]


class BinaryHeader(BaseModel):
    """What a binary body would carry in JSON: everything but the tensor's bytes."""

    model_config = ConfigDict(extra="forbid")
    model: str
    dtype: DType
    shape: list[int] = Field(min_length=3, max_length=3)
    texts: list[str] = Field(min_length=1)
    candidate_ids: list[int] = Field(min_length=1)


def json_encode(prompts: np.ndarray[Any, Any], texts: list[str], dtype: DType) -> bytes:
    req = LogitsRequest(
        model="roberta-large",
        prompts=Tensor.from_numpy(prompts, dtype),
        texts=texts,
        candidate_ids=IDS,
    )
    return req.model_dump_json().encode()


def json_decode(body: bytes) -> tuple[np.ndarray[Any, Any], list[str]]:
    req = LogitsRequest.model_validate(json.loads(body))  # FastAPI: json.loads, then pydantic
    return req.prompts.to_numpy().astype(np.float32, copy=False), req.texts


def json_decode_jiter(body: bytes) -> tuple[np.ndarray[Any, Any], list[str]]:
    # The same body parsed by pydantic's own JSON parser (a route reading the raw body):
    # what is left of the JSON cost without json.loads.
    req = LogitsRequest.model_validate_json(body)
    return req.prompts.to_numpy().astype(np.float32, copy=False), req.texts


def binary_encode(prompts: np.ndarray[Any, Any], texts: list[str], dtype: DType) -> bytes:
    raw = np.ascontiguousarray(prompts, dtype=WIRE[dtype])
    header = json.dumps(
        {
            "model": "roberta-large",
            "dtype": dtype,
            "shape": list(raw.shape),
            "texts": texts,
            "candidate_ids": IDS,
        }
    ).encode()
    return b"".join((struct.pack("<I", len(header)), header, raw.tobytes()))


def binary_decode(body: bytes) -> tuple[np.ndarray[Any, Any], list[str]]:
    (size,) = struct.unpack_from("<I", body)
    head = BinaryHeader.model_validate(json.loads(body[4 : 4 + size]))
    dt = WIRE[head.dtype]
    count = int(np.prod(head.shape))
    if len(body) - 4 - size != count * dt.itemsize:
        raise ValueError("tensor bytes do not match the declared shape")
    arr = np.frombuffer(body, dtype=dt, count=count, offset=4 + size).reshape(head.shape)
    return arr.astype(np.float32), head.texts


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return sorted({f for f in text.split() if f in wanted})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 3 repeats")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    p, n, h, b, d = (2, 3, 8, 2, 4) if args.smoke else (20, 50, 1024, 32, 500)
    repeats = 3 if args.smoke else args.repeats

    rng = np.random.default_rng(0)
    z = rng.normal(size=(p, d)).astype(np.float32)
    a = rng.normal(0.0, 0.05, size=(d, n * h)).astype(np.float32)
    p0 = rng.normal(0.0, 0.05, size=(n, h)).astype(np.float32)
    prompts = (z @ a).reshape(p, n, h) + p0
    texts = wire_bytes.texts(b)
    project_ms = median_ms(lambda: (z @ a).reshape(p, n, h) + p0, repeats)

    rows = []
    for dtype in ("float32", "float16"):
        jb = json_encode(prompts, texts, dtype)  # type: ignore[arg-type]
        bb = binary_encode(prompts, texts, dtype)  # type: ignore[arg-type]
        ja, jt = json_decode(jb)
        ba, bt = binary_decode(bb)
        # The two bodies must decode alike.
        assert np.array_equal(ja, ba)
        assert jt == bt == texts
        for form, body, enc, dec in (
            ("json+base64", jb, json_encode, json_decode),
            ("json/jiter", jb, json_encode, json_decode_jiter),
            ("binary", bb, binary_encode, binary_decode),
        ):
            rows.append(
                {
                    "dtype": dtype,
                    "body": form,
                    "bytes": len(body),
                    "client_encode_ms": median_ms(
                        lambda enc=enc, dtype=dtype: enc(prompts, texts, dtype), repeats
                    ),
                    "server_decode_ms": median_ms(lambda dec=dec, body=body: dec(body), repeats),
                }
            )

    print(f"P={p} n={n} H={h} B={b}; median of {repeats}; CPU flags: {' '.join(cpu_flags())}")
    print(f"projection p = A z + p0 (d={d}), same run, for scale: {project_ms:.2f} ms")
    print(
        f"{'dtype':8} {'body':12} {'bytes':>10} {'encode ms':>10} {'decode ms':>10} {'sum ms':>8}"
    )
    for r in rows:
        total = r["client_encode_ms"] + r["server_decode_ms"]
        print(
            f"{r['dtype']:8} {r['body']:12} {r['bytes']:>10,} {r['client_encode_ms']:>10.2f} "
            f"{r['server_decode_ms']:>10.2f} {total:>8.2f}"
        )
    for dtype in ("float32", "float16"):
        j, _, bn = (r for r in rows if r["dtype"] == dtype)
        saved = j["client_encode_ms"] + j["server_decode_ms"] - bn["client_encode_ms"]
        saved -= bn["server_decode_ms"]
        print(
            f"{dtype}: binary saves {j['bytes'] - bn['bytes']:,} B "
            f"({1 - bn['bytes'] / j['bytes']:.0%}) and {saved:.2f} ms of encode+decode per request"
        )
    out = args.out_dir / ("wire_binary_smoke.json" if args.smoke else "wire_binary.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    scale = {"P": p, "n": n, "H": h, "B": b, "d": d, "repeats": repeats}
    env = {"cpu_flags": cpu_flags(), "python": platform.python_version()}
    data = {"scale": scale, "projection_ms": project_ms, "rows": rows, "env": env}
    out.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

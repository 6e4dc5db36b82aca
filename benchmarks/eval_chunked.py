"""Chunked evaluation against a plain full-matrix argsort, on an N × N text–video evaluation.

    python benchmarks/eval_chunked.py               # 10,000 captions × 10,000 videos, 512-d
    python benchmarks/eval_chunked.py --n 2000      # smaller
    python benchmarks/eval_chunked.py --n 100000 --videos 5000 --chunked-only   # ours alone at 100k × 5k

Ours: `mascot.metrics.embedding_metrics`, two passes over caption chunks, never the whole matrix.
Plain: the route of the public code — the whole similarity matrix, a full argsort of every row, the
position of the correct video. Peak memory is what numpy allocates (tracemalloc), time is wall clock.
Both give the same ranks here (random embeddings have no ties). Record the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time
import tracemalloc

import numpy as np

from mascot.metrics import embedding_metrics, summarize


def plain_argsort(text: np.ndarray, video: np.ndarray, caption_video: np.ndarray) -> dict:
    sim = text @ video.T
    order = np.argsort(-sim, axis=1)
    t2v = 1 + np.argmax(order == caption_video[:, None], axis=1)
    order = np.argsort(-sim.T, axis=1)
    v2t = 1 + np.argmax(order == np.arange(len(video))[:, None], axis=1)  # one caption per video here
    return {"t2v": summarize(t2v), "v2t": summarize(v2t)}


def measure(fn, *args) -> tuple[dict, float, float]:
    tracemalloc.start()
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="captions")
    parser.add_argument("--videos", type=int, default=None, help="videos (default: as many as captions)")
    parser.add_argument("--chunked-only", action="store_true", help="skip the full-matrix route (too big for large N)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=1024)
    args = parser.parse_args()
    videos = args.videos or args.n
    rng = np.random.default_rng(0)
    video = rng.normal(size=(videos, args.dim)).astype(np.float32)
    targets = np.arange(args.n) % videos  # every video gets captions; caption i describes video i mod V
    text = (video[targets] + rng.normal(size=(args.n, args.dim)).astype(np.float32) * 6.0).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    video /= np.linalg.norm(video, axis=1, keepdims=True)

    ours, t_ours, m_ours = measure(embedding_metrics, text, video, targets, args.chunk)
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; numpy {np.__version__}; {args.n:,} × {videos:,}, {args.dim}-d"
    )
    print()
    print("| method | time (s) | peak memory (MiB) |")
    print("|---|---:|---:|")
    print(f"| chunked, two passes (chunk {args.chunk}) | {t_ours:.1f} | {m_ours:,.0f} |")
    if not args.chunked_only:
        if videos != args.n:
            raise SystemExit("the full-matrix route here assumes one caption per video (--videos = --n)")
        plain, t_plain, m_plain = measure(plain_argsort, text, video, targets)
        assert ours == plain, (ours, plain)
        print(f"| full matrix + argsort | {t_plain:.1f} | {m_plain:,.0f} |")
        print(f"\nsame metrics: yes (t2v R@1 {ours['t2v']['R1']:.2f})")


if __name__ == "__main__":
    main()

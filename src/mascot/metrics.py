"""Retrieval metrics: R@1, R@5, R@10, median rank (MdR) and mean rank (MnR).

Rank definition: the rank of a query's correct candidate is 1 + the number of candidates that
score *strictly higher* than it. Ties therefore count in the query's favour, deterministically,
without searching for float-equal scores (which over-counts when captions are duplicated, as in the
MSR-VTT 1k-A test set). With several correct candidates (video→text when a video has several
captions) the best-scoring correct candidate counts.

Scores are processed in row chunks, so memory stays at O(chunk × candidates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRICS = ("R1", "R5", "R10", "MdR", "MnR")


def _as_pairs(targets, num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, candidate) index pairs from an int array (one target each) or a list of lists."""
    if targets is None:
        q = np.arange(num_queries)
        return q, q
    if isinstance(targets, np.ndarray) and targets.ndim == 1 and targets.dtype.kind in "iu":
        if len(targets) != num_queries:
            raise ValueError(f"targets has {len(targets)} entries for {num_queries} queries")
        return np.arange(num_queries), targets.astype(np.int64)
    targets = list(targets)
    if len(targets) != num_queries:
        raise ValueError(f"targets has {len(targets)} entries for {num_queries} queries")
    qs, cs = [], []
    for q, t in enumerate(targets):
        t = np.atleast_1d(np.asarray(t, dtype=np.int64))
        if t.size == 0:
            raise ValueError(f"query {q} has no correct candidate")
        qs.append(np.full(t.size, q))
        cs.append(t)
    return np.concatenate(qs), np.concatenate(cs)


def ranks(sim: np.ndarray, targets=None, chunk_size: int = 1024) -> np.ndarray:
    """1-based rank of each query's (best) correct candidate; rows of `sim` are queries."""
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise ValueError(f"sim must be 2-D (queries × candidates), got shape {sim.shape}")
    nq, nc = sim.shape
    q_idx, c_idx = _as_pairs(targets, nq)
    if c_idx.size and (c_idx.min() < 0 or c_idx.max() >= nc):
        raise ValueError(f"target index out of range for {nc} candidates")
    best = np.full(nq, -np.inf)
    np.maximum.at(best, q_idx, sim[q_idx, c_idx].astype(np.float64))
    out = np.empty(nq, np.int64)
    for start in range(0, nq, chunk_size):
        stop = min(start + chunk_size, nq)
        out[start:stop] = 1 + count_above(sim[start:stop].astype(np.float64), best[start:stop])
    return out


def count_above(scores: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Per row of `scores`, how many entries score strictly higher than the row's `threshold`: a
    rank is 1 + this count (ties count in the query's favour)."""
    return (scores > np.asarray(threshold)[:, None]).sum(axis=1)


def summarize(rank: np.ndarray) -> dict[str, float]:
    rank = np.asarray(rank)
    return {
        "R1": float(100.0 * np.mean(rank <= 1)),
        "R5": float(100.0 * np.mean(rank <= 5)),
        "R10": float(100.0 * np.mean(rank <= 10)),
        "MdR": float(np.median(rank)),
        "MnR": float(np.mean(rank)),
    }


def retrieval_metrics(sim: np.ndarray, targets=None, chunk_size: int = 1024) -> dict[str, float]:
    """The five metrics for a similarity matrix whose rows are queries.

    `targets`: None (query i's correct candidate is i), an int array (one correct candidate per
    query), or a sequence of index sequences (several correct candidates; the best one counts).
    """
    return summarize(ranks(sim, targets, chunk_size))


def text_video_metrics(sim: np.ndarray, caption_video: Sequence[int], chunk_size: int = 1024) -> dict[str, dict[str, float]]:
    """Both directions from a (captions × videos) matrix and each caption's video index."""
    caption_video = np.asarray(caption_video, dtype=np.int64)
    num_videos = sim.shape[1]
    t2v = retrieval_metrics(sim, caption_video, chunk_size)
    by_video = [[] for _ in range(num_videos)]
    for c, v in enumerate(caption_video):
        by_video[v].append(c)
    v2t = retrieval_metrics(np.asarray(sim).T, by_video, chunk_size)
    return {"t2v": t2v, "v2t": v2t}


def dual_softmax(sim: np.ndarray, scale: float, axis: int) -> np.ndarray:
    """DSL post-processing (CAMoE): scores × softmax(scale · scores) over `axis`, the queries."""
    z = scale * sim
    z = z - z.max(axis=axis, keepdims=True)
    prior = np.exp(z)
    return sim * prior / prior.sum(axis=axis, keepdims=True)


def embedding_metrics(
    text: np.ndarray, video: np.ndarray, caption_video: Sequence[int], chunk_size: int = 1024, dsl_scale: float | None = None
) -> dict:
    """Both directions (and, with `dsl_scale`, the DSL post-processed ones) from L2-normalised
    embeddings, without ever holding the captions × videos matrix: two passes over caption chunks
    (three with DSL), memory O(chunk × videos).

    DSL re-weights each score by a softmax over the *queries*: for text→video over all captions of
    the split (so it uses the test queries jointly), for video→text over all videos.
    """
    text, video = np.asarray(text), np.asarray(video, np.float64)  # caption chunks are widened one at a time
    caption_video = np.asarray(caption_video, dtype=np.int64)
    nc, nv = len(text), len(video)
    if np.bincount(caption_video, minlength=nv).min(initial=1) == 0:
        raise ValueError("every video needs at least one caption")
    views = {"plain": lambda s: s}
    if dsl_scale is not None:
        col_lse = np.full(nv, -np.inf)  # log Σ_captions exp(scale · s) per video, for the t2v prior
        for lo in range(0, nc, chunk_size):
            col_lse = np.logaddexp(
                col_lse, _logsumexp(dsl_scale * (text[lo : lo + chunk_size].astype(np.float64) @ video.T), axis=0)
            )
        views["t2v_dsl"] = lambda s: s * np.exp(dsl_scale * s - col_lse)
        views["v2t_dsl"] = lambda s: dual_softmax(s, dsl_scale, axis=1)

    t2v = {name: np.empty(nc, np.int64) for name in ("plain", "t2v_dsl") if name in views}
    best = {name: np.full(nv, -np.inf) for name in ("plain", "v2t_dsl") if name in views}
    for lo in range(0, nc, chunk_size):  # pass 1: text→video ranks, each video's best own caption
        sim = text[lo : lo + chunk_size].astype(np.float64) @ video.T
        cv, r = caption_video[lo : lo + chunk_size], np.arange(len(sim))
        for name, rank in t2v.items():
            rank[lo : lo + len(sim)] = ranks(views[name](sim), cv, chunk_size)
        for name, b in best.items():
            np.maximum.at(b, cv, views[name](sim)[r, cv])
    v2t = {name: np.ones(nv, np.int64) for name in best}
    for lo in range(0, nc, chunk_size):  # pass 2: captions scoring above each video's best own one
        sim = text[lo : lo + chunk_size].astype(np.float64) @ video.T
        for name, rank in v2t.items():
            rank += count_above(views[name](sim).T, best[name])
    out = {"t2v": summarize(t2v["plain"]), "v2t": summarize(v2t["plain"])}
    if dsl_scale is not None:
        out["dsl"] = {"t2v": summarize(t2v["t2v_dsl"]), "v2t": summarize(v2t["v2t_dsl"]), "scale": float(dsl_scale)}
    return out


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def ceiling_metrics(
    caption_fits: Sequence[int], video_fits: Sequence[tuple[Sequence[int], int]], ks: Sequence[int] = (1, 5, 10)
) -> dict:
    """Expected R@k (in %) of a model that scores every candidate a query fits above every other
    and cannot order the fitting ones: it ranks them at random (with distinct scores, except that
    copies of one caption text score alike, as their tokens are the same).

    caption_fits: per text query, the number of videos its caption fits (its own included, n >= 1):
    R@k = min(1, k / n). video_fits: per video query, (the number of copies of each *wrong* caption
    text that fits it, the number of distinct texts of its own captions). The distinct fitting texts
    are in random order; copies of a text tie, and ties count in the query's favour (rank = 1 + the
    captions scoring strictly higher, as `ranks` counts): the rank of the video's first own text is
    1 + the copies of the wrong texts ordered before it. Exact, by counting subsets."""
    t2v = np.asarray(caption_fits, dtype=float)
    if (t2v < 1).any():
        raise ValueError("every caption fits at least its own video")
    out = {"t2v": {f"R{k}": float(np.mean(np.minimum(1.0, k / t2v)) * 100) for k in ks}, "v2t": {}}
    for k in ks:
        out["v2t"][f"R{k}"] = float(np.mean([_first_correct_within(list(w), g, k) for w, g in video_fits]) * 100)
    return out


def _first_correct_within(wrong_copies: list[int], own: int, k: int) -> float:
    """P(the copies of the wrong texts ordered before the first of `own` correct texts number < k),
    for a uniformly random order of the len(wrong_copies) + own distinct texts."""
    m = len(wrong_copies)
    # subsets[j][s]: how many j-subsets of the wrong texts have s copies in all (s < k suffices)
    subsets = [[0] * k for _ in range(m + 1)]
    subsets[0][0] = 1
    for c in wrong_copies:
        for j in range(m, 0, -1):
            for s in range(k - 1, c - 1, -1):
                subsets[j][s] += subsets[j - 1][s - c]
    total, before = 0.0, 1.0  # before: P(the first j texts are all wrong)
    for j in range(m + 1):
        first_own_next = own / (m + own - j)  # ... and the next one is an own text
        total += before * first_own_next * sum(subsets[j]) / math.comb(m, j)
        before *= (m - j) / (m + own - j)
    return total

import numpy as np
import pytest

from mascot import retrieval_metrics, text_video_metrics
from mascot.metrics import ranks


def test_known_ranks_and_metrics():
    sim = np.array(
        [
            [0.9, 0.1, 0.0],  # correct (0) is best → rank 1
            [0.5, 0.2, 0.7],  # correct (1) beaten by two → rank 3
            [0.3, 0.4, 0.1],  # correct (2) beaten by two → rank 3
        ]
    )
    np.testing.assert_array_equal(ranks(sim), [1, 3, 3])
    m = retrieval_metrics(sim)
    assert m["R1"] == pytest.approx(100 / 3)
    assert m["R5"] == 100.0 and m["R10"] == 100.0
    assert m["MdR"] == 3.0
    assert m["MnR"] == pytest.approx(7 / 3)


def test_ties_count_in_favour_of_the_query():
    # Duplicate captions give identical rows; equal scores do not push the correct item down.
    sim = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.1, 0.9, 0.2]])
    np.testing.assert_array_equal(ranks(sim), [1, 1, 2])


def test_explicit_targets_and_several_correct_candidates():
    sim = np.array([[0.1, 0.8, 0.3], [0.9, 0.2, 0.4]])
    np.testing.assert_array_equal(ranks(sim, np.array([2, 1])), [2, 3])
    # Query 1 has two correct candidates (1 and 2): the better-scoring one (2, rank 2) counts.
    np.testing.assert_array_equal(ranks(sim, [[2], [1, 2]]), [2, 2])


def test_text_video_with_several_captions_per_video():
    # 4 captions, 2 videos; captions 0,1 → video 0; captions 2,3 → video 1.
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.5]])
    out = text_video_metrics(sim, [0, 0, 1, 1])
    assert out["t2v"]["R1"] == 50.0  # captions 0 and 2 right, 1 and 3 wrong
    # video 0: best own caption 0 (0.9) is top → rank 1; video 1: best own caption 2 (0.7), caption 1 (0.8) above → rank 2
    assert out["v2t"]["R1"] == 50.0 and out["v2t"]["MnR"] == 1.5


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(257, 100)).round(1)  # rounding creates many ties
    targets = rng.integers(0, 100, size=257)
    np.testing.assert_array_equal(ranks(sim, targets, chunk_size=7), ranks(sim, targets, chunk_size=10_000))


def test_bad_targets_rejected():
    with pytest.raises(ValueError):
        ranks(np.zeros((2, 2)), np.array([0, 5]))
    with pytest.raises(ValueError):
        ranks(np.zeros((2, 2)), [[0], []])
    with pytest.raises(ValueError):
        ranks(np.zeros(3))


def _embeddings(rng, n, d=8):
    x = rng.integers(-3, 4, size=(n, d)).astype(np.float64)  # small integers: exact products, many ties
    x[np.all(x == 0, axis=1), 0] = 1
    return x / 4


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_streaming_metrics_equal_the_full_matrix(chunk):
    from mascot.metrics import dual_softmax, embedding_metrics

    rng = np.random.default_rng(0)
    text, video = _embeddings(rng, 60), _embeddings(rng, 20)
    caption_video = np.concatenate([np.arange(20), rng.integers(0, 20, size=40)])  # every video has ≥ 1 caption
    sim = text @ video.T
    got = embedding_metrics(text, video, caption_video, chunk_size=chunk, dsl_scale=10.0)
    assert {k: got[k] for k in ("t2v", "v2t")} == text_video_metrics(sim, caption_video)
    assert got["dsl"]["t2v"] == text_video_metrics(dual_softmax(sim, 10.0, axis=0), caption_video)["t2v"]
    assert got["dsl"]["v2t"] == text_video_metrics(dual_softmax(sim, 10.0, axis=1), caption_video)["v2t"]
    assert "dsl" not in embedding_metrics(text, video, caption_video, chunk_size=chunk)


def test_dsl_known_answer_down_weights_a_hub_video():
    from mascot.metrics import embedding_metrics

    # Video 0 scores high for both captions (a hub); caption 0 belongs to video 1, caption 1 to video 0.
    text, video = np.eye(2), np.array([[0.9, 0.85], [0.8, 0.1]])  # sim = text @ video.T
    sim = text @ video.T
    assert sim.tolist() == [[0.9, 0.8], [0.85, 0.1]]
    out = embedding_metrics(text, video, np.array([1, 0]), dsl_scale=10.0)
    assert out["t2v"]["R1"] == 50.0  # plain: caption 0 ranks its video second
    assert out["dsl"]["t2v"]["R1"] == 100.0  # the prior over captions demotes the hub for caption 0


def test_streaming_metrics_need_a_caption_per_video():
    from mascot.metrics import embedding_metrics

    with pytest.raises(ValueError, match="at least one caption"):
        embedding_metrics(np.eye(2), np.eye(3)[:, :2], np.array([0, 1]))


def test_ceiling_known_answers():
    from mascot.metrics import ceiling_metrics

    # captions fitting 1, 2 and 4 videos: R@1 = (1 + 1/2 + 1/4) / 3; every one within the first 5
    # videos: one that no wrong text fits; one with two wrong texts (one copy each) and two own texts
    out = ceiling_metrics([1, 2, 4], [([], 2), ([1, 1], 2)])
    assert out["t2v"]["R1"] == pytest.approx(100 * 1.75 / 3) and out["t2v"]["R5"] == 100.0
    assert out["v2t"]["R1"] == pytest.approx(100 * (1.0 + 0.5) / 2)  # an own text first among 4: 1/2
    assert out["v2t"]["R5"] == 100.0
    # one own text, wrong texts with 2 and 1 copies (copies tie, in the query's favour): the own text is
    # first (1/3), after the 1-copy text (1/6, rank 2), after the 2-copy one (1/6, rank 3), last (1/3, rank 4)
    out = ceiling_metrics([1], [([2, 1], 1)], ks=(1, 2, 3, 4))
    assert [out["v2t"][f"R{k}"] for k in (1, 2, 3, 4)] == pytest.approx([100 / 3, 50.0, 100 * 2 / 3, 100.0])
    with pytest.raises(ValueError, match="at least its own"):
        ceiling_metrics([0], [])

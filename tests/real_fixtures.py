"""Tiny annotation files in the real formats of the four benchmarks (made up, not copied from them)."""

from __future__ import annotations

import json
from pathlib import Path

LSMDC_LINES = {
    "LSMDC16_annos_training.csv": [
        ("9901_EXAMPLE_FILM_ONE_00.01.02.500-00.01.05.250", "SOMEONE opens the red umbrella, then waits."),
        ("9901_EXAMPLE_FILM_ONE_00.01.06.000-00.01.09.125", "A taxi pulls up beside the curb."),
        ("9903_the_2nd_Film_00.10.00.000-00.10.02.000", 'SOMEONE\'s dog barks "loudly".'),
    ],
    "LSMDC16_annos_val.csv": [("9904_Val_Movie_00.00.01.000-00.00.03.000", "SOMEONE smiles.")],
    "LSMDC16_challenge_1000_publictect.csv": [
        ("9902_ANOTHER_MADE_UP_TITLE_01.12.40.010-01.12.44.760", "SOMEONE glances at the clock."),
        ("9902_ANOTHER_MADE_UP_TITLE_01.12.45.000-01.12.47.000", "A door closes."),
    ],
}


def write_msrvtt(ann: Path) -> None:
    ann.mkdir(parents=True, exist_ok=True)
    train = [f"video{i}" for i in range(10)]
    test = ["video20", "video21", "video22"]
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train))
    (ann / "MSRVTT_train.7k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train[:8]))
    (ann / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr20,video20,a man playing video games\n"
        "ret1,msr21,video21,a man playing video games\nret2,msr22,video22,a dog runs\n"
    )
    sentences = [
        {"caption": f"caption {k} of {v}", "video_id": v, "sen_id": i * 3 + k}
        for i, v in enumerate(train + test + ["video30"])
        for k in range(3)
    ]
    (ann / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": [], "sentences": sentences}))


def write_lsmdc(ann: Path) -> None:
    ann.mkdir(parents=True, exist_ok=True)
    for name, rows in LSMDC_LINES.items():
        lines = []
        for clip, sentence in rows:
            start, end = clip.rsplit("_", 1)[1].split("-")
            lines.append("\t".join([clip, start, end, start, end, sentence]))
        (ann / name).write_text("".join(f"{line}\n" for line in lines))


def _anet(videos: dict[str, list[tuple[float, float, str]]]) -> str:
    return json.dumps(
        {
            v: {"duration": 100.0, "timestamps": [[s, e] for s, e, _ in segs], "sentences": [t for _, _, t in segs]}
            for v, segs in videos.items()
        }
    )


def write_activitynet(ann: Path) -> None:
    ann.mkdir(parents=True, exist_ok=True)
    train = {f"v_train{i}": [(0.0, 10.0, f" first of {i}."), (12.0, 30.0, f" second of {i}.")] for i in range(8)}
    train["v_train0"][1] = (61.29, 60.71, " an inverted segment.")  # as in the real train.json
    train["v_train1"][1] = (90.0, 120.0, " past the end.")
    test = {f"v_test{i}": [(1.0, 5.0, f" test {i} a."), (5.0, 9.0, f" test {i} b.")] for i in range(3)}
    (ann / "train.json").write_text(_anet(train))
    (ann / "val_1.json").write_text(_anet(test))


DIDEMO_VIDEOS = {
    "train": ["1@N01_1001_aa.mov", "2@N02_1002_bb.avi", "3@N03_1003_cc."],
    "val": ["4@N04_1004_dd.mp4", "5@N05_1005_ee.mp4"],
    "test": ["6@N06_1006_ff.m4v", "7@N07_1007_gg.mp4", "8@N08_1008_hh.3gp"],
}


def write_didemo(ann: Path) -> None:
    ann.mkdir(parents=True, exist_ok=True)
    aid = 0
    for split, videos in DIDEMO_VIDEOS.items():
        entries = []
        for v in videos:
            for k in range(2):
                entries.append(
                    {
                        "annotation_id": aid,
                        "description": f"{v} moment {k}",
                        "video": v,
                        "times": [[k, k + 1], [k, k], [0, 1], [k, k + 1]],
                        "num_segments": 6,
                        "dl_link": "https://www.flickr.com/video_download.gne?id=1",
                    }
                )
                aid += 1
        (ann / f"{split}_data.json").write_text(json.dumps(entries))
        (ann / f"{split}_list.txt").write_text(
            "".join(f"{v}\n" for v in videos[:-1] if split != "train") if split != "train" else "".join(f"{v}\n" for v in videos)
        )
    (ann / "yfcc100m_hash.txt").write_text("".join(f"{1000 + i}\t{i:03d}abc{i}def\n" for i in range(1, 9)))


WRITERS = {"msrvtt": write_msrvtt, "lsmdc": write_lsmdc, "activitynet": write_activitynet, "didemo": write_didemo}

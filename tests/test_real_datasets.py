"""The four real benchmarks: parsers on fixtures in the real formats, and on the real files when present."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mascot.datasets import dataset_config_class, get_dataset
from mascot.datasets.remote import MISSING
from mascot.errors import MascotError

from .conftest import SHARED_DATA
from .http_fixture import serve
from .real_fixtures import DIDEMO_VIDEOS, LSMDC_LINES, WRITERS
from .test_download import _zip

SHARED_ANN = SHARED_DATA / "annotations"
needs_shared = pytest.mark.skipif(not SHARED_ANN.is_dir(), reason="../shared/data is not present")


def dataset(name: str, **config):
    return get_dataset(name, dataset_config_class(name).model_validate(config))


def unchecked_files(name: str) -> dict:
    """`files` overrides that drop the released checksums (the fixtures are not the released files)."""
    files = dataset(name).config.files
    return {k: {"checksum": None, "members": {m: {"checksum": None} for m in spec.members}} for k, spec in files.items()}


def fixture_raw(tmp_path: Path, name: str) -> Path:
    raw = tmp_path / name / "raw"
    WRITERS[name](raw / "annotations")
    return raw


def counts(table):
    g = table.groupby("split")
    return {s: (int(g.get_group(s)["video_id"].nunique()), len(g.get_group(s))) for s in g.groups}


def test_msrvtt_fixture(tmp_path):
    table = dataset("msrvtt", val_videos=2).read_annotations(fixture_raw(tmp_path, "msrvtt"))
    assert counts(table) == {"train": (8, 24), "val": (2, 6), "test": (3, 3)}
    test = table[table["split"] == "test"]
    assert test["caption"].tolist() == ["a man playing video games", "a man playing video games", "a dog runs"]
    assert set(table["video_path"]) >= {"video0.mp4", "video20.mp4"}
    assert "video30" not in set(table["video_id"])  # captions of videos in no list are not used
    assert table["start"].isna().all()
    seven = dataset("msrvtt", val_videos=2, train_list="7k").read_annotations(fixture_raw(tmp_path / "b", "msrvtt"))
    assert counts(seven)["train"] == (6, 18)


def test_val_is_carved_deterministically_from_train(tmp_path):
    raw = fixture_raw(tmp_path, "msrvtt")

    def val(seed):
        t = dataset("msrvtt", val_videos=3, val_seed=seed).read_annotations(raw)
        return set(t.loc[t["split"] == "val", "video_id"])

    assert val(0) == val(0) and len(val(0)) == 3
    assert any(val(s) != val(0) for s in range(1, 5))
    with pytest.raises(MascotError, match="leaves no training videos"):
        dataset("msrvtt", val_videos=10).read_annotations(raw)


def test_msrvtt_uncaptioned_training_video_is_an_error(tmp_path):
    raw = fixture_raw(tmp_path, "msrvtt")
    (raw / "annotations" / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo99\nvideo1\nvideo2\n")
    with pytest.raises(MascotError, match=r"1 videos of MSRVTT_train.9k.csv have no caption.*video99"):
        dataset("msrvtt", val_videos=1).read_annotations(raw)


def test_lsmdc_fixture(tmp_path):
    table = dataset("lsmdc").read_annotations(fixture_raw(tmp_path, "lsmdc"))
    assert counts(table) == {"train": (3, 3), "val": (1, 1), "test": (2, 2)}
    row = table[table["video_id"] == "9903_the_2nd_Film_00.10.00.000-00.10.02.000"].iloc[0]
    assert row["video_path"] == "9903_the_2nd_Film/9903_the_2nd_Film_00.10.00.000-00.10.02.000.avi"
    assert row["caption"] == LSMDC_LINES["LSMDC16_annos_training.csv"][2][1]  # quotes kept verbatim
    assert "SOMEONE opens the red umbrella, then waits." in set(table["caption"])


def test_lsmdc_wrong_field_count_names_file_and_line(tmp_path):
    raw = fixture_raw(tmp_path, "lsmdc")
    path = raw / "annotations" / "LSMDC16_annos_val.csv"
    path.write_text(path.read_text().replace("\t", ",", 2))
    with pytest.raises(MascotError, match=r"LSMDC16_annos_val.csv, line 1: expected 6 tab-separated fields"):
        dataset("lsmdc").read_annotations(raw)


def test_activitynet_paragraphs_and_sentences(tmp_path):
    raw = fixture_raw(tmp_path, "activitynet")
    (raw / "videos").mkdir()
    (raw / "videos" / "v_train3.mkv").write_bytes(b"x")
    para = dataset("activitynet", val_videos=2).read_annotations(raw)
    assert counts(para) == {"train": (6, 6), "val": (2, 2), "test": (3, 3)}
    t0 = para[para["video_id"] == "v_test0"].iloc[0]
    assert t0["caption"] == "test 0 a. test 0 b." and np.isnan(t0["start"]) and np.isnan(t0["end"])
    paths = dict(zip(para["video_id"], para["video_path"], strict=True))
    assert paths["v_train3"] == "v_train3.mkv" and paths["v_train4"] == "v_train4.mp4"
    sent = dataset("activitynet", val_videos=2, paragraph=False).read_annotations(raw)
    assert len(sent) == 22
    spans = sent.set_index("video_id")[["start", "end", "video_path"]]
    assert tuple(spans.loc["v_train0#1", ["start", "end"]]) == (60.71, 61.29)  # inverted segment swapped
    assert tuple(spans.loc["v_train1#1", ["start", "end"]]) == (90.0, 100.0)  # clipped to the duration
    assert spans.loc["v_train3#0", "video_path"] == "v_train3.mkv"


def test_didemo_paragraphs_lists_and_sentences(tmp_path):
    raw = fixture_raw(tmp_path, "didemo")
    para = dataset("didemo").read_annotations(raw)
    assert counts(para) == {"train": (3, 3), "val": (1, 1), "test": (2, 2)}
    v = DIDEMO_VIDEOS["test"][0]
    row = para[para["video_id"] == v].iloc[0]
    assert row["caption"] == f"{v} moment 0 {v} moment 1"
    assert (row["start"], row["end"]) == (0.0, 30.0) and row["video_path"] == v + ".mp4"
    assert counts(dataset("didemo", use_lists=False).read_annotations(raw))["test"] == (3, 3)
    sent = dataset("didemo", paragraph=False).read_annotations(raw)
    clip = sent.set_index("video_id").loc[f"{v}#1"]
    assert (clip["start"], clip["end"], clip["video_path"]) == (5.0, 15.0, v + ".mp4")  # segments 1..2 of 5 s


# --- the real annotation files of ../shared/data (counts from its SOURCES.md) ---


def _shared_raw(tmp_path: Path, name: str, folder: str) -> Path:
    ann = tmp_path / name / "annotations"
    shutil.copytree(SHARED_ANN / folder, ann)
    return ann.parent


@needs_shared
@pytest.mark.heavy
def test_real_msrvtt_counts(tmp_path):
    raw = _shared_raw(tmp_path, "msrvtt", "msrvtt")
    # MSRVTT_data.json (4 MiB) is not among the shared files: 20 made-up captions per listed video.
    import csv

    ids = [r["video_id"] for r in csv.DictReader(open(raw / "annotations" / "MSRVTT_train.9k.csv"))]
    sentences = [{"caption": f"c{k}", "video_id": v, "sen_id": i * 20 + k} for i, v in enumerate(ids) for k in range(20)]
    (raw / "annotations" / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    table = dataset("msrvtt", val_videos=500).read_annotations(raw)
    c = counts(table)
    assert c["train"][0] + c["val"][0] == 9000 and c["val"][0] == 500
    assert c["test"] == (1000, 1000)
    assert table.loc[table["split"] == "test", "caption"].nunique() == 995
    assert dataset("msrvtt", train_list="7k").read_annotations(raw).query("split != 'test'")["video_id"].nunique() == 7010


@needs_shared
@pytest.mark.heavy
def test_real_activitynet_counts(tmp_path):
    raw = _shared_raw(tmp_path, "activitynet", "activitynet")
    c = counts(dataset("activitynet", val_videos=500).read_annotations(raw))
    assert c["train"][0] + c["val"][0] == 10009 and c["test"] == (4917, 4917)
    s = counts(dataset("activitynet", val_videos=500, paragraph=False).read_annotations(raw))
    assert s["train"][1] + s["val"][1] == 37421 and s["test"][1] == 17505


@needs_shared
@pytest.mark.heavy
def test_real_didemo_counts(tmp_path):
    raw = _shared_raw(tmp_path, "didemo", "didemo")
    # train_data.json (4 MiB) is not among the shared files: one made-up moment per listed video.
    names = (raw / "annotations" / "train_list.txt").read_text().split("\n")[:-1]
    assert len(names) == 8392
    (raw / "annotations" / "train_data.json").write_text(
        json.dumps([{"annotation_id": 10**6 + i, "description": "d", "video": v, "times": [[0, 0]]} for i, v in enumerate(names)])
    )
    c = counts(dataset("didemo").read_annotations(raw))
    assert c == {"train": (8392, 8392), "val": (1065, 1065), "test": (1004, 1004)}
    s = counts(dataset("didemo", paragraph=False).read_annotations(raw))
    assert s["test"][1] == 3932 and s["val"][1] == 4109


REGISTERED_CHECKSUMS = [
    (name, member.file, member.checksum)
    for name in ("msrvtt", "lsmdc", "activitynet", "didemo")
    for spec in dataset(name).config.files.values()
    for member in spec.provides().values()
    if member.checksum
]


def test_the_entries_register_checksums():
    assert {name for name, _, _ in REGISTERED_CHECKSUMS} == {"msrvtt", "activitynet", "didemo"}  # LSMDC: placed by hand


@pytest.mark.parametrize(
    ("name", "member", "checksum"), REGISTERED_CHECKSUMS, ids=[f"{n}/{m}" for n, m, _ in REGISTERED_CHECKSUMS]
)
def test_real_files_match_the_registered_checksums(name, member, checksum):
    from mascot.download import verify

    path = SHARED_ANN / name / member
    if not path.is_file():
        pytest.skip(f"no copy of {name}/{member} in {SHARED_ANN} to check its registered checksum against")
    verify(path, checksum, f"{name}/{member}")


# --- the download stage: placement by hand, completeness, per-video and archive downloads ---


def test_source_dir_placement_copies_files_and_lists_missing_videos(tmp_path):
    source = tmp_path / "placed"
    WRITERS["lsmdc"](source / "annotations")
    clips = [c for rows in LSMDC_LINES.values() for c, _ in rows]
    for clip in clips[:-1]:
        video = source / "videos" / clip.rsplit("_", 1)[0] / f"{clip}.avi"
        video.parent.mkdir(parents=True, exist_ok=True)
        video.write_bytes(b"avi")
    raw = tmp_path / "raw"
    dataset("lsmdc", source_dir=str(source), max_missing_fraction=0.2).download(raw, tmp_path / "cache")
    assert (raw / MISSING).read_text() == f"{clips[-1].rsplit('_', 1)[0]}/{clips[-1]}.avi\n"
    first = raw / "videos" / clips[0].rsplit("_", 1)[0] / f"{clips[0]}.avi"
    placed = source / "videos" / first.relative_to(raw / "videos")
    assert first.read_bytes() == b"avi" and first.stat().st_ino != placed.stat().st_ino
    # what DVC does to the raw folder (read-only, moved into its cache) never reaches the user's files
    first.chmod(0o444)
    first.unlink()
    assert placed.stat().st_nlink == 1 and os.access(placed, os.W_OK) and placed.read_bytes() == b"avi"
    assert (source / "annotations" / "LSMDC16_annos_val.csv").stat().st_nlink == 1
    linked = tmp_path / "raw-linked"
    dataset("lsmdc", source_dir=str(source), max_missing_fraction=0.2, link_placed=True).download(linked, tmp_path / "cache")
    assert (linked / "videos" / first.relative_to(raw / "videos")).stat().st_ino == placed.stat().st_ino  # the opt-in
    with pytest.raises(MascotError, match=r"1 of 6 annotated videos \(16.7%\) are missing.*test: 1 of 2"):
        dataset("lsmdc", source_dir=str(source), max_missing_fraction=0.1).download(tmp_path / "raw2", tmp_path / "cache")


def test_without_source_dir_a_hand_placed_dataset_says_what_to_place(tmp_path):
    with pytest.raises(MascotError, match=r"LSMDC16_annos_training.csv.*no download URL.*source_dir is not set"):
        dataset("lsmdc").download(tmp_path / "raw", tmp_path / "cache")
    with pytest.raises(MascotError, match="source_dir = .*nowhere: no such folder"):
        dataset("lsmdc", source_dir=str(tmp_path / "nowhere")).download(tmp_path / "raw", tmp_path / "cache")


def test_didemo_videos_are_downloaded_per_video(tmp_path):
    source = tmp_path / "placed"
    WRITERS["didemo"](source / "annotations")
    listed = [v for s in ("train", "val", "test") for v in (source / "annotations" / f"{s}_list.txt").read_text().split()]
    hashes = dict(line.split("\t") for line in (source / "annotations" / "yfcc100m_hash.txt").read_text().splitlines())
    served = {f"/mp4/{h[:3]}/{h[3:6]}/{h}.mp4": f"video {fid}".encode() for fid, h in hashes.items()}
    gone = listed[0]
    del served[next(k for k in served if hashes[gone.split("_")[1]] in k)]  # gone upstream, as 13 real ones
    with serve(served) as srv:
        ds = dataset(
            "didemo",
            source_dir=str(source),
            files=unchecked_files("didemo"),
            video_url=srv.url + "/mp4/{p1}/{p2}/{hash}.mp4",
            max_missing_fraction=0.2,
            download_workers=2,
        )
        ds.download(tmp_path / "raw", tmp_path / "cache")
    raw = tmp_path / "raw"
    assert (raw / MISSING).read_text() == f"{gone}.mp4\n"
    for v in listed[1:]:
        assert (raw / "videos" / f"{v}.mp4").read_bytes() == f"video {v.split('_')[1]}".encode()


def test_msrvtt_download_from_overridden_urls(tmp_path):
    ann = tmp_path / "ann"
    WRITERS["msrvtt"](ann)
    videos = [f"video{i}" for i in range(10)] + ["video20", "video21", "video22"]
    served = {
        "/msrvtt_data.zip": _zip({f"msrvtt_data/{p.name}": p.read_bytes() for p in ann.iterdir()}),
        "/MSRVTT.zip": _zip({f"MSRVTT/videos/all/{v}.mp4": v.encode() for v in videos}),
    }
    members = unchecked_files("msrvtt")["annotations"]["members"]  # the fixture files are not the released ones
    with serve(served) as srv:
        ds = dataset(
            "msrvtt",
            val_videos=2,
            files={
                "annotations": {"url": srv.url + "/msrvtt_data.zip", "members": members},
                "videos": {"url": srv.url + "/MSRVTT.zip"},
            },
        )
        assert ds.config.files["annotations"].root == "msrvtt_data"  # defaults kept under an override
        ds.download(tmp_path / "raw", tmp_path / "cache")
    assert (tmp_path / "raw" / "videos" / "video21.mp4").read_bytes() == b"video21"
    assert (tmp_path / "raw" / MISSING).read_text() == ""
    assert counts(ds.read_annotations(tmp_path / "raw"))["test"] == (3, 3)


def test_released_checksums_reject_other_files(tmp_path):
    ann = tmp_path / "ann"
    WRITERS["msrvtt"](ann)
    with serve({"/msrvtt_data.zip": _zip({f"msrvtt_data/{p.name}": p.read_bytes() for p in ann.iterdir()})}) as srv:
        ds = dataset("msrvtt", files={"annotations": {"url": srv.url + "/msrvtt_data.zip"}})
        with pytest.raises(MascotError, match=r"checksum mismatch for MSRVTT_train.9k.csv: expected gitblob:95b6bce"):
            ds.download(tmp_path / "raw", tmp_path / "cache")


def test_a_partly_placed_group_names_the_missing_file_instead_of_downloading(tmp_path):
    """MSR-VTT's annotation files come in one archive: placing some of them (here all but
    MSRVTT_train.7k.csv) is an error that names the missing file, not a silent download attempt."""
    source = tmp_path / "placed"
    WRITERS["msrvtt"](source / "annotations")
    (source / "annotations" / "MSRVTT_train.7k.csv").unlink()
    (source / "videos").mkdir()
    ds = dataset(
        "msrvtt", source_dir=str(source), verify_placed=False, files={"annotations": {"url": "http://unused.invalid/x.zip"}}
    )
    with pytest.raises(MascotError, match=r"data.msrvtt.files.annotations: .*annotations holds .* but not MSRVTT_train.7k.csv"):
        ds.download(tmp_path / "raw", tmp_path / "cache")


def test_a_placed_subset_names_the_exact_key_and_the_switch(tmp_path, capsys):
    """A trimmed MSRVTT_train.9k.csv placed by hand: the message names the logical key (settable
    with -S) and data.msrvtt.verify_placed; the switch lets it through; downloads stay checked."""
    source = tmp_path / "placed"
    WRITERS["msrvtt"](source / "annotations")
    (source / "videos").mkdir()  # videos placed by hand (none here), so nothing is downloaded
    with pytest.raises(MascotError) as info:
        dataset("msrvtt", source_dir=str(source), val_videos=2).download(tmp_path / "raw", tmp_path / "cache")
    message = str(info.value)
    assert "checksum mismatch for MSRVTT_train.9k.csv" in message and "placed by hand" in message
    assert "dvc exp run -S '++data.msrvtt.verify_placed=false'" in message
    assert "dvc exp run -S '++data.msrvtt.files.annotations.members.train_9k.checksum=null'" in message
    assert "under `data.msrvtt:` add `files: {annotations: {members: {train_9k: {checksum: null}}}}`" in message
    assert "Re-download" not in message
    # both forms the message offers are accepted, and each lets the placed subset through
    per_file = {"annotations": {"members": {m: {"checksum": None} for m in ("train_9k", "train_7k", "test")}}}
    for i, config in enumerate([{"verify_placed": False}, {"files": per_file}]):
        ds = dataset("msrvtt", source_dir=str(source), val_videos=2, max_missing_fraction=1.0, **config)
        ds.download(tmp_path / f"raw{i}", tmp_path / "cache")
        assert (tmp_path / f"raw{i}" / "annotations" / "MSRVTT_train.9k.csv").is_file()
    # a download is checked whatever verify_placed says
    ann = tmp_path / "ann"
    WRITERS["msrvtt"](ann)
    with serve({"/msrvtt_data.zip": _zip({f"msrvtt_data/{p.name}": p.read_bytes() for p in ann.iterdir()})}) as srv:
        ds = dataset("msrvtt", verify_placed=False, files={"annotations": {"url": srv.url + "/msrvtt_data.zip"}})
        with pytest.raises(
            MascotError,
            match=r"checksum mismatch for MSRVTT_train.9k.csv.*download it again.*"
            r"members.train_9k.checksum=null",
        ):
            ds.download(tmp_path / "raw-dl", tmp_path / "cache")


def test_the_missing_videos_error_names_the_final_raw_folder(tmp_path, capsys):
    import yaml

    from mascot.cli import main

    from .conftest import tiny_params_dict

    source = tmp_path / "placed"
    WRITERS["activitynet"](source / "annotations")
    (source / "videos").mkdir()
    raw_params = tiny_params_dict()
    raw_params["data"]["activitynet"] = {"source_dir": str(source), "verify_placed": False, "val_videos": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    out = tmp_path / "data" / "activitynet" / "raw"
    assert main(["--params", str(tmp_path / "params.yaml"), "download", "--dataset", "activitynet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"are missing from {out / 'videos'} " in err and ".tmp-" not in err


def test_placed_videos_keep_their_extension(tmp_path):
    source = tmp_path / "placed"
    WRITERS["activitynet"](source / "annotations")
    (source / "videos").mkdir()
    for i in range(8):
        (source / "videos" / f"v_train{i}{'.mkv' if i % 2 else '.mp4'}").write_bytes(b"v")
    for i in range(3):
        (source / "videos" / f"v_test{i}.webm").write_bytes(b"v")
    ds = dataset("activitynet", source_dir=str(source), files=unchecked_files("activitynet"), val_videos=2)
    ds.download(tmp_path / "raw", tmp_path / "cache")
    assert (tmp_path / "raw" / MISSING).read_text() == ""
    table = ds.read_annotations(tmp_path / "raw")
    assert dict(zip(table["video_id"], table["video_path"], strict=True))["v_train1"] == "v_train1.mkv"


def test_a_real_dataset_entry_runs_through_every_stage(tmp_path, tiny_raw):
    """LSMDC placed by hand (fixture annotations, real mp4 clips under its .avi names), with the
    stage commands of dvc.yaml: download → annotations → frames → features → train → evaluate."""
    import yaml

    from mascot.cli import main

    from .conftest import tiny_params_dict

    source = tmp_path / "placed"
    WRITERS["lsmdc"](source / "annotations")
    clips = sorted((tiny_raw / "videos").glob("*.mp4"))
    for clip, src in zip([c for rows in LSMDC_LINES.values() for c, _ in rows], clips, strict=False):
        video = source / "videos" / clip.rsplit("_", 1)[0] / f"{clip}.avi"
        video.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, video)
    raw_params = tiny_params_dict()
    raw_params["datasets"], raw_params["variants"] = ["lsmdc"], ["meanP"]
    raw_params["figures"]["masked"] = "meanP"  # the figures draw runs of `variants`
    raw_params["data"]["lsmdc"] = {"source_dir": str(source), "files": unchecked_files("lsmdc")}
    raw_params["train"]["batch_size"] = 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw_params))
    d = tmp_path / "data" / "lsmdc"
    steps = [
        ["download", "--dataset", "lsmdc", "--out", f"{d}/raw"],
        ["annotations", "--dataset", "lsmdc", "--raw", f"{d}/raw", "--out", f"{d}/annotations.parquet"],
        [
            "frames",
            "--dataset",
            "lsmdc",
            "--raw",
            f"{d}/raw",
            "--annotations",
            f"{d}/annotations.parquet",
            "--out",
            f"{d}/frames",
        ],
        ["features", "--annotations", f"{d}/annotations.parquet", "--frames", f"{d}/frames", "--out", f"{d}/features"],
        [
            "train",
            "--features",
            f"{d}/features",
            "--dataset",
            "lsmdc",
            "--variant",
            "meanP",
            "--seed",
            "0",
            "--model-out",
            f"{tmp_path}/model.pt",
            "--log-out",
            f"{tmp_path}/log.csv",
            "--state-dir",
            f"{tmp_path}/state",
        ],
        ["evaluate", "--features", f"{d}/features", "--model", f"{tmp_path}/model.pt", "--out", f"{tmp_path}/metrics.json"],
    ]
    for step in steps:
        assert main(["--params", str(params), *step]) == 0, step
    assert (d / "raw" / MISSING).read_text() == ""
    frames_index = pd.read_parquet(d / "frames" / "index.parquet")
    # the clips (the tiny synthetic set's, one keyframe each): the in-order route, no fallback
    assert len(frames_index) == 6 and set(frames_index["decoder"]) == {"pyav"}
    assert not (d / "frames" / "repairs.json").exists() or json.loads((d / "frames" / "repairs.json").read_text()) == []
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["t2v"]["R1"] <= 100

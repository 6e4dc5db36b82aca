import hashlib
import io
import tarfile
import zipfile

import pytest

from mascot.download import Checksum, DownloadError, fetch, safe_extract

from .http_fixture import serve

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], symlink: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            tf.addfile(info)
    return buf.getvalue()


def test_checksums_known_answers(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"hello\n")
    # `git hash-object` of "hello\n" and the sha256 / md5 of the same bytes
    assert Checksum.parse("gitblob:ce013625030ba8dba906f756967f9e9ca394464a").matches(f)
    assert Checksum.parse("sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03").matches(f)
    assert Checksum.parse("md5:b1946ac92492d2347c6235b4d2611184").matches(f)
    with pytest.raises(Exception, match="expected `sha256"):
        Checksum.parse("crc:123")


def test_fetch_verifies_and_places(tmp_path):
    with serve({"/a.bin": PAYLOAD}) as srv:
        out = fetch(f"{srv.url}/a.bin", tmp_path / "a.bin", SHA, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.bin.part").exists()


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    dest = tmp_path / "a.bin"
    with serve({"/a.bin": PAYLOAD}) as srv:
        srv.cut_next["/a.bin"] = 300_000
        with pytest.raises(DownloadError, match="resumes from there"):
            fetch(f"{srv.url}/a.bin", dest, SHA, retries=0, progress=False)
        assert not dest.exists()
        assert (tmp_path / "a.bin.part").stat().st_size == 300_000
        fetch(f"{srv.url}/a.bin", dest, SHA, retries=0, progress=False)
        assert srv.requests[-1] == ("/a.bin", "bytes=300000-")
    assert dest.read_bytes() == PAYLOAD


def test_transient_failures_are_retried(tmp_path):
    with serve({"/a.bin": PAYLOAD}) as srv:
        srv.fail_next["/a.bin"] = [503, 429]
        srv.cut_next["/a.bin"] = 1000
        # 503, 429, then a short read, then the rest by Range
        fetch(f"{srv.url}/a.bin", tmp_path / "a.bin", SHA, retries=4, backoff=0.01, progress=False)
        assert len(srv.requests) == 4
        assert srv.requests[-1][1] == "bytes=1000-"
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_dead_link_fails_at_once_with_what_to_do(tmp_path):
    with serve({}) as srv:
        with pytest.raises(DownloadError, match=r"HTTP 404.*mirror in params.yaml.*source_dir"):
            fetch(f"{srv.url}/gone.zip", tmp_path / "gone.zip", None, retries=3, backoff=0.01, progress=False)
        assert len(srv.requests) == 1


def test_checksum_mismatch_leaves_nothing(tmp_path):
    bad = "sha256:" + "0" * 64
    with serve({"/a.bin": PAYLOAD}) as srv:
        with pytest.raises(DownloadError, match=r"checksum mismatch for a.bin: expected sha256:0+, got sha256:"):
            fetch(f"{srv.url}/a.bin", tmp_path / "a.bin", bad, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cached_file_is_reused_only_when_it_verifies(tmp_path):
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"stale")
    with serve({"/a.bin": PAYLOAD}) as srv:
        fetch(f"{srv.url}/a.bin", dest, SHA, progress=False)
        assert len(srv.requests) == 1
        fetch(f"{srv.url}/a.bin", dest, SHA, progress=False)
        assert len(srv.requests) == 1  # verified copy, nothing fetched
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_root_is_extracted(tmp_path, kind):
    members = {"pkg/data/a.csv": b"a", "pkg/data/sub/b.csv": b"b", "pkg/README": b"r"}
    archive = tmp_path / f"x.{kind}"
    archive.write_bytes(_zip(members) if kind == "zip" else _tar(members))
    safe_extract(archive, tmp_path / "out", root="pkg/data")
    assert (tmp_path / "out" / "a.csv").read_bytes() == b"a"
    assert (tmp_path / "out" / "sub" / "b.csv").read_bytes() == b"b"
    assert not (tmp_path / "out" / "README").exists()


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: _zip({"ok.txt": b"1", "../evil.txt": b"x"}), "`..` component"),
        (lambda: _tar({"ok.txt": b"1", "a/../../evil.txt": b"x"}), "`..` component"),
        (lambda: _tar({"/tmp/evil.txt": b"x"}), "absolute path"),
        (lambda: _tar({"ok.txt": b"1"}, symlink=("link", "/etc/passwd")), "link"),
    ],
)
def test_unsafe_archives_are_refused_before_writing(tmp_path, build, reason):
    archive = tmp_path / "bad.archive"
    archive.write_bytes(build())
    target = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError, match=reason):
        safe_extract(archive, target)
    assert not target.exists()
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_served_archive_end_to_end(tmp_path):
    """A fixture archive over HTTP: download (interrupted once), verify, extract."""
    blob = _zip({"msrvtt_data/MSRVTT_train.9k.csv": b"video_id\nvideo1\n"})
    with serve({"/msrvtt_data.zip": blob}) as srv:
        srv.cut_next["/msrvtt_data.zip"] = len(blob) // 2
        path = fetch(
            f"{srv.url}/msrvtt_data.zip",
            tmp_path / "cache" / "a.zip",
            "sha256:" + hashlib.sha256(blob).hexdigest(),
            backoff=0.01,
            progress=False,
        )
    safe_extract(path, tmp_path / "raw", root="msrvtt_data")
    assert (tmp_path / "raw" / "MSRVTT_train.9k.csv").read_text() == "video_id\nvideo1\n"


def test_a_host_that_does_not_resolve_fails_at_once(tmp_path, monkeypatch):
    import socket

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(DownloadError) as info:
        fetch(
            "http://example.invalid/a.zip",
            tmp_path / "a.zip",
            None,
            retries=4,
            backoff=30.0,
            progress=False,
            what="data.x.files.a",
        )
    message = str(info.value)
    assert len(calls) == 1 and "cannot be resolved (Name or service not known)" in message and "offline" in message
    assert "nothing was fetched yet" in message and ".part" not in message


def test_a_failed_download_says_what_was_kept(tmp_path):
    import socket

    with socket.socket() as s:  # a port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"failed after 1 attempts .*nothing was fetched yet\)\.$"):
        fetch(f"http://127.0.0.1:{port}/a.bin", tmp_path / "a.bin", None, retries=0, progress=False)
    with serve({"/a.bin": PAYLOAD}) as srv:
        srv.cut_next["/a.bin"] = 300_000
        with pytest.raises(DownloadError, match=r"the 300000 bytes already fetched are kept in .*a\.bin\.part"):
            fetch(f"{srv.url}/a.bin", tmp_path / "a.bin", SHA, retries=0, progress=False)

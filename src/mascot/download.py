"""Getting remote files right: resumable HTTP, checksums, retries, safe archive extraction.

Dataset links die and large downloads break half-way, so `fetch` keeps the partial bytes in a
cache folder that survives a failed stage and resumes them with an HTTP Range request; a file is
moved into place only after its checksum matched. `safe_extract` refuses archive members that would
land outside the target folder (absolute paths, `..`, links, devices) before writing anything.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .errors import MascotError

log = logging.getLogger(__name__)
CHUNK = 1 << 20
USER_AGENT = "mascot-pipeline/0.1 (+https://github.com/; research data download)"
#: HTTP statuses worth retrying; every other 4xx means the URL is wrong or gone.
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(MascotError):
    """A file could not be obtained or verified."""


@dataclass(frozen=True)
class Checksum:
    """`sha256:<hex>`, `md5:<hex>` or `gitblob:<hex>` (the id `git hash-object` prints)."""

    algorithm: str
    digest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        algorithm, sep, digest = text.partition(":")
        if not sep or algorithm not in ("sha256", "md5", "gitblob") or not digest:
            raise MascotError(f"checksum `{text}`: expected `sha256:<hex>`, `md5:<hex>` or `gitblob:<hex>`.")
        return cls(algorithm, digest.lower())

    def of(self, path: Path) -> str:
        if self.algorithm == "gitblob":
            h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        else:
            h = hashlib.new(self.algorithm)
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        return h.hexdigest()

    def matches(self, path: Path) -> bool:
        return self.of(path) == self.digest

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.digest}"


def set_key_hint(key: str, value: str) -> str:
    """How to set the dotted params key `key`: a `dvc exp run -S` argument and the params.yaml form."""
    *parents, leaf = key.split(".")
    nested = f"{leaf}: {value}"
    for part in reversed(parents[2:]):  # below data.<dataset>
        nested = f"{part}: {{{nested}}}"
    return f"`dvc exp run -S '++{key}={value}'`, or in params.yaml under `{'.'.join(parents[:2])}:` add `{nested}`"


def verify(
    path: Path, checksum: str | None, what: str, name: str | None = None, key: str | None = None, fix: str | None = None
) -> None:
    """Raise DownloadError when `path` does not have `checksum` (None: nothing to check).

    `key` is the params key that holds the checksum (named in the message); `fix` replaces the
    default advice (re-download, or trust the new file).
    """
    if checksum is None:
        return
    expected = Checksum.parse(checksum)
    got = expected.of(path)
    if got != expected.digest:
        if fix is None:
            trust = (
                f"set its checksum to null: {set_key_hint(key, 'null')}" if key else "set its checksum (or null) in params.yaml"
            )
            fix = (
                "The file is corrupt or the upstream file changed; it was not used. Rerun the stage to download it "
                f"again, or, if you trust the new file, {trust}."
            )
        raise DownloadError(
            f"{what}: checksum mismatch for {name or path.name}: expected {expected}, got {expected.algorithm}:{got}. {fix}"
        )


def _total_size(resp, offset: int) -> int | None:
    content_range = resp.headers.get("Content-Range")
    if content_range and "/" in content_range and not content_range.endswith("*"):
        return int(content_range.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the missing bytes of `url` to `part`; raise on a short or broken transfer."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the partial file is complete
            return
        raise
    with resp:
        status = getattr(resp, "status", None) or 200
        if offset and status != 206:
            offset = 0  # the server ignored the Range header: start over
        total = _total_size(resp, offset)
        with (
            open(part, "ab" if offset else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=None if progress else True,
                leave=False,
            ) as bar,
        ):
            while block := resp.read(CHUNK):
                out.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        raise http.client.IncompleteRead(b"", total - size)


def fetch(
    url: str,
    dest: Path,
    checksum: str | None = None,
    *,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
    what: str | None = None,
    key: str | None = None,
) -> Path:
    """Download `url` to `dest` (resuming `dest`.part), verify it, and move it into place.

    An existing `dest` that verifies is reused. Transient failures (connection errors, timeouts,
    5xx, 429, short reads) are retried `retries` times with exponential backoff; a host name that
    does not resolve is not transient and fails at once; a checksum mismatch deletes the partial
    file and raises (`key`: the params key of the checksum, for the message).
    """
    dest = Path(dest)
    what = what or url
    if dest.exists():
        try:
            verify(dest, checksum, what)
            return dest
        except DownloadError:
            log.warning("%s: cached copy fails its checksum, downloading again", dest)
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as exc:
            if exc.code not in TRANSIENT_STATUS or attempt == retries:
                raise DownloadError(
                    f"{what}: HTTP {exc.code} {exc.reason} for {url}. The link may be dead: point the URL at a "
                    "mirror in params.yaml, or place the file by hand under the dataset's source_dir."
                ) from None
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            cause = getattr(exc, "reason", exc)
            if isinstance(cause, socket.gaierror):
                raise DownloadError(
                    f"{what}: the host of {url} cannot be resolved ({cause.strerror or cause}): this machine is offline "
                    "or the host name is wrong, which retrying does not fix. Connect to the network (or fix the URL in "
                    f"params.yaml) and rerun the stage ({_kept(part)}), or place the file by hand under the dataset's source_dir."
                ) from None
            if attempt == retries:
                raise DownloadError(
                    f"{what}: {url} failed after {retries + 1} attempts ({exc}). Check the network and rerun the stage "
                    f"({_kept(part)})."
                ) from None
            reason = str(exc) or type(exc).__name__
        delay = backoff * 2**attempt
        log.warning("%s: attempt %d failed (%s); retrying in %.1f s", what, attempt + 1, reason, delay)
        time.sleep(delay)
    try:
        verify(part, checksum, what, dest.name, key=key)
    except DownloadError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


def _kept(part: Path) -> str:
    size = part.stat().st_size if part.exists() else 0
    return (
        f"the {size} bytes already fetched are kept in {part} and the download resumes from there"
        if size
        else "nothing was fetched yet"
    )


def _unsafe_reason(name: str, is_link: bool, is_special: bool) -> str | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        return "absolute path"
    if ".." in path.parts:
        return "`..` component"
    if is_link:
        return "link"
    if is_special:
        return "device, fifo or other special file"
    return None


def _members(archive: Path) -> list[tuple[str, str | None]]:
    """(name, reason it is unsafe or None) for every member of a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            out = []
            for info in zf.infolist():
                mode = info.external_attr >> 16
                is_link = (mode & 0o170000) == 0o120000
                out.append((info.filename, _unsafe_reason(info.filename, is_link, False)))
            return out
    try:
        with tarfile.open(archive) as tf:
            return [
                (m.name, _unsafe_reason(m.name, m.issym() or m.islnk(), not (m.isfile() or m.isdir()))) for m in tf.getmembers()
            ]
    except tarfile.TarError:
        raise DownloadError(f"{archive}: neither a zip nor a tar archive; it cannot be extracted.") from None


def safe_extract(archive: Path, target: Path, root: str = "") -> None:
    """Extract the members of `archive` under `root` (a folder inside it) into `target`.

    Every member is checked before anything is written; one unsafe member refuses the whole archive.
    """
    archive, target = Path(archive), Path(target)
    unsafe = [(name, why) for name, why in _members(archive) if why]
    if unsafe:
        listed = ", ".join(f"`{n}` ({why})" for n, why in unsafe[:5])
        raise DownloadError(
            f"{archive}: refusing to extract an archive with {len(unsafe)} unsafe member(s): {listed}. "
            "Such members could write outside the dataset folder; nothing was extracted. Get the archive "
            "from a trusted source."
        )
    staging = target.with_name(f".{target.name}.extract-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(staging, filter="data")
        source = staging / root if root else staging
        if not source.is_dir():
            raise DownloadError(
                f"{archive}: has no folder `{root}`; the archive's layout changed. Set the file's `root` in params.yaml."
            )
        target.mkdir(parents=True, exist_ok=True)
        for item in sorted(source.iterdir()):
            os.replace(item, target / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def copy_file(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` as a file of its own: a reflink where the filesystem shares blocks
    (btrfs, XFS: no space used), else a plain copy. Unlike a hard link, later changes to one of the
    two (DVC making its cache read-only, an edit) never reach the other."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    try:
        import fcntl

        with open(src, "rb") as s, open(dest, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    except (OSError, ImportError):
        shutil.copyfile(src, dest)


FICLONE = 0x40049409  # Linux ioctl: share the blocks of another file (a reflink)


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link `src` to `dest` (no second copy on the same filesystem), else copy it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)

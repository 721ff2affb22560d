"""Find, verify and download the data files that manntk's loaders read.

A [`DataFile`][manntk.data.files.DataFile] describes one file: its name, the
dataset folder it belongs to, its expected size and SHA-256, and where to get it.
[`locate`][manntk.data.files.locate] searches a fixed list of folders, verifies
what it finds and, when nothing is found, downloads into the cache folder. Every
loader therefore fails the same way: with a [`DataError`][manntk.data.files.DataError]
that names the file, every place searched, what was wrong and how to get a good copy.

Search order (first hit wins), each folder both directly and under its
``<dataset>/`` subfolder:

1. the ``root`` argument;
2. ``$MANNTK_DATA``;
3. the cache folder, ``$MANNTK_CACHE`` or ``~/.cache/manntk``.

Hashing a 100 MB file takes a noticeable fraction of a second, so a verified
digest is remembered in ``verified.json`` in the cache folder, keyed by the
file's absolute path, size and modification time; it is recomputed only when one
of those changes.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import IO

import attrs
from tqdm import tqdm

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "KNOWN_FILES",
    "DataError",
    "DataFile",
    "cache_dir",
    "find",
    "locate",
    "search_dirs",
]

DATA_ENV = "MANNTK_DATA"
"""Environment variable naming a folder of data files searched after ``root``."""

CACHE_ENV = "MANNTK_CACHE"
"""Environment variable overriding the cache folder (default ``~/.cache/manntk``)."""

_MEMO_NAME = "verified.json"
_BLOCK = 1 << 20
_TIMEOUT_S = 60.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DataError(RuntimeError):
    """A data file is missing, corrupt or malformed.

    The message is written for a person: it names the file, the places that were
    searched, what was expected and found, and how to get a good copy.
    """


def _check_sha256(_: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and not _SHA256.fullmatch(value):
        raise ValueError(f"{attribute.name} must be 64 lowercase hex digits, got {value!r}")


@attrs.frozen
class DataFile:
    """A data file a loader needs, and how to check and obtain it.

    Attributes:
        name: File name, e.g. ``"ptb.char.train.txt"``.
        dataset: Dataset folder name, e.g. ``"ptb"``; the file is also looked for
            under this subfolder of every search folder, and downloaded into it.
        size: Expected size in bytes, or None if unknown. For a ``gzipped`` file it
            is the size of the decompressed content.
        sha256: Expected SHA-256 (lowercase hex), or None if unknown. For a
            ``gzipped`` file it is the digest of the decompressed content, so that
            any gzip of the right bytes is accepted.
        urls: Download URLs, tried in order; may be empty.
        note: How to get the file by hand, for error messages.
        gzipped: True if ``name`` ends in ``.gz`` and the file may equally be found
            decompressed, under ``name`` without ``.gz``.
        archive: A tar archive that holds this file, for files that are not
            downloadable on their own (the PTB files inside Mikolov's tarball).
        member: Path of this file inside ``archive``; set exactly when ``archive`` is.
    """

    name: str
    dataset: str
    size: int | None = None
    sha256: str | None = attrs.field(default=None, validator=_check_sha256)
    urls: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    note: str = ""
    gzipped: bool = False
    archive: DataFile | None = None
    member: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.gzipped and not self.name.endswith(".gz"):
            raise ValueError(f"gzipped DataFile {self.name!r} must have a name ending in .gz")
        if (self.archive is None) != (self.member is None):
            raise ValueError(f"DataFile {self.name!r}: set both archive and member, or neither")

    @property
    def names(self) -> tuple[str, ...]:
        """Accepted file names, preferred first: ``name``, then its decompressed name."""
        return (self.name, self.name[: -len(".gz")]) if self.gzipped else (self.name,)


def cache_dir() -> Path:
    """Return the cache folder: ``$MANNTK_CACHE`` if set, else ``~/.cache/manntk``.

    Downloads go to ``<cache>/<dataset>/``; the folder need not exist yet.
    """
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "manntk"


def search_dirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Return the folders searched for data files, in order, without duplicates.

    Args:
        root: A folder to search first, typically given by the user.

    Returns:
        ``root`` (if given), ``$MANNTK_DATA`` (if set) and the cache folder.
    """
    dirs = [Path(root).expanduser()] if root is not None else []
    if value := os.environ.get(DATA_ENV):
        dirs.append(Path(value).expanduser())
    dirs.append(cache_dir())
    return list(dict.fromkeys(dirs))


def _candidates(file: DataFile, dirs: Iterable[Path]) -> list[Path]:
    paths = (folder / name for base in dirs for folder in (base, base / file.dataset) for name in file.names)
    return list(dict.fromkeys(paths))


def find(file: DataFile, root: str | os.PathLike[str] | None = None) -> Path | None:
    """Search for a data file without downloading it.

    Args:
        file: The file to look for.
        root: A folder to search before ``$MANNTK_DATA`` and the cache.

    Returns:
        The path of the first copy found, verified; None if there is none.

    Raises:
        DataError: The first copy found has the wrong size or SHA-256, or is a
            broken gzip file. A bad copy is reported rather than skipped, so that a
            damaged file never silently shadows or is shadowed by another one.
    """
    for path in _candidates(file, search_dirs(root)):
        if path.is_file():
            problem = _problem(file, path, gunzip=file.gzipped and path.name == file.name)
            if problem is not None:
                raise DataError(f"Data file {path} is corrupt: {problem}.\nDelete or replace it.\n{_how_to_get(file)}")
            return path
    return None


def locate(
    file: DataFile,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Find a data file, downloading it into the cache folder if it is missing.

    A download is written under a temporary name in ``<cache>/<dataset>/``, verified
    and only then renamed, so an interrupted or corrupt download never leaves a file
    under the real name. A file that only exists inside a tar archive is extracted
    from the archive, which is itself located (and downloaded) first.

    Args:
        file: The file wanted.
        root: A folder to search before ``$MANNTK_DATA`` and the cache.
        download: Whether a missing file may be downloaded.
        progress: Whether to show a tqdm progress bar while downloading.

    Returns:
        The path of a verified copy.

    Raises:
        DataError: The file is corrupt, or missing and could not be obtained; the
            message lists every place searched, each failed download and how to get
            the file by hand.
    """
    path = find(file, root)
    if path is not None:
        return path
    target = cache_dir() / file.dataset / file.name
    failures: list[str] = []
    if file.archive is not None and file.member is not None:
        try:
            archive = locate(file.archive, root, download=download, progress=progress)
        except DataError as error:
            failures.append(f"the archive holding it is unavailable:\n{_indent(str(error))}")
        else:
            return _extract(file, archive, file.member, target)
    elif download and file.urls:
        for url in file.urls:
            error = _download(file, url, target, progress)
            if error is None:
                return target
            failures.append(f"{url}: {error}")
    raise DataError(_missing_message(file, root, failures, download))


def _problem(file: DataFile, path: Path, gunzip: bool) -> str | None:
    """Describe how ``path`` differs from what ``file`` promises, or return None."""
    if file.size is not None and not gunzip:
        found = path.stat().st_size
        if found != file.size:
            return f"its size is {found:,} bytes, expected {file.size:,}"
    if file.sha256 is None and (file.size is None or not gunzip):
        return None
    try:
        size, digest = _measure(path, gunzip)
    except (OSError, EOFError, zlib.error) as error:
        return f"it could not be read{' as gzip' if gunzip else ''} ({error})"
    if file.size is not None and size != file.size:
        return f"its decompressed size is {size:,} bytes, expected {file.size:,}"
    if file.sha256 is not None and digest != file.sha256:
        content = "decompressed content" if gunzip else "content"
        return f"the sha256 of its {content} is {digest}, expected {file.sha256}"
    return None


def _measure(path: Path, gunzip: bool) -> tuple[int, str]:
    """Return the content size and SHA-256 of ``path``, remembered across runs."""
    stat = path.stat()
    key = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns, gunzip]
    memo = _read_memo()
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return entry["size"], entry["sha256"]
    size, digest = _hash(path, gunzip)
    memo[key] = {"stamp": stamp, "size": size, "sha256": digest}
    _write_memo(memo)
    return size, digest


def _hash(path: Path, gunzip: bool) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as stream:
        while block := stream.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _read_memo() -> dict[str, dict]:
    try:
        memo = json.loads((cache_dir() / _MEMO_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_memo(memo: dict[str, dict]) -> None:
    """Save the memo atomically, dropping files that no longer exist.

    Failing to save (read-only cache, full disk) only costs a re-hash next time,
    so it is not an error.
    """
    kept = {key: value for key, value in memo.items() if Path(key).is_file()}
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{_MEMO_NAME}.", suffix=".part")
        with os.fdopen(handle, "w") as out:
            json.dump(kept, out, indent=1)
        os.replace(temp, folder / _MEMO_NAME)
    except OSError:
        pass


def _download(file: DataFile, url: str, target: Path, progress: bool) -> str | None:
    """Download ``url`` to ``target`` if it is the right file.

    Returns:
        None on success, else what went wrong (network error or verification failure).
    """
    try:
        problem = _install(file, target, partial(_fetch, url, label=file.name, progress=progress), file.gzipped)
    except (OSError, http.client.HTTPException) as error:
        return f"download failed: {str(error) or repr(error)}"
    return None if problem is None else f"the downloaded file is wrong: {problem}"


def _fetch(url: str, out: IO[bytes], label: str, progress: bool) -> None:
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length is not None else None
        received = 0
        with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress) as bar:
            while block := response.read(_BLOCK):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received != total:
        raise urllib.error.ContentTooShortError(f"connection closed after {received:,} of {total:,} bytes", None)


def _extract(file: DataFile, archive: Path, member: str, target: Path) -> Path:
    """Extract ``member`` of the tar ``archive`` to ``target`` if it is the right file."""
    wanted = member.removeprefix("./")
    try:
        with tarfile.open(archive) as tar:
            info = next((m for m in tar if m.name.removeprefix("./") == wanted), None)
            source = tar.extractfile(info) if info is not None else None
            if source is None:
                raise DataError(
                    f"Archive {archive} has no regular file {member!r}, where {file.name} was expected.\n"
                    f"{_how_to_get(file)}"
                )
            problem = _install(file, target, partial(shutil.copyfileobj, source, length=_BLOCK), gunzip=False)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as error:
        raise DataError(
            f"Could not extract {file.name} from archive {archive} ({error!r}).\n"
            f"Delete the archive to download it again.\n{_how_to_get(file)}"
        ) from error
    if problem is not None:
        raise DataError(
            f"Member {member!r} of archive {archive} is not the expected {file.name}: {problem}.\n{_how_to_get(file)}"
        )
    return target


def _install(file: DataFile, target: Path, write: Callable[[IO[bytes]], object], gunzip: bool) -> str | None:
    """Write a file with ``write`` under a temporary name next to ``target``, verify, rename.

    The temporary file is removed whatever happens, so ``target`` either does not
    change or becomes a complete, verified copy.

    Returns:
        None if the file was verified and renamed to ``target``, else the problem found.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{file.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        problem = _problem(file, temp, gunzip)
        if problem is None:
            temp.chmod(0o644)  # mkstemp makes it private (0600); data files are for everyone to read
            os.replace(temp, target)
        return problem
    finally:
        temp.unlink(missing_ok=True)


def _missing_message(file: DataFile, root: str | os.PathLike[str] | None, failures: list[str], download: bool) -> str:
    lines = [f"Data file {file.name} (dataset {file.dataset!r}) was not found. Looked for:"]
    lines += [f"  {path}" for path in _candidates(file, search_dirs(root))]
    if failures:
        lines.append("Could not obtain it:")
        lines += [_indent(failure) for failure in failures]
    elif file.urls and not download:
        lines.append("Downloading was not allowed (download=False).")
    lines.append(_how_to_get(file))
    return "\n".join(lines)


def _how_to_get(file: DataFile) -> str:
    expected = [f"{file.name} ({file.dataset})"]
    if file.size is not None:
        expected.append(f"{file.size:,} bytes" + (" decompressed" if file.gzipped else ""))
    if file.sha256 is not None:
        expected.append(f"sha256 {file.sha256}")
    lines = ["Expected: " + ", ".join(expected) + "."]
    if file.note:
        lines.append(f"How to get it: {file.note}")
    if file.urls:
        lines.append("Download URLs: " + " ".join(file.urls))
    data = os.environ.get(DATA_ENV)
    where = f"MANNTK_DATA is {data}" if data else "MANNTK_DATA is not set"
    lines.append(
        f"Or put the file in a folder and set MANNTK_DATA to it, or pass root=; it may sit "
        f"directly there or in its {file.dataset}/ subfolder ({where})."
    )
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# --- Known files -------------------------------------------------------------------

_PTB_TARBALL = DataFile(
    name="simple-examples.tgz",
    dataset="ptb",
    urls=("http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",),
    note="Tomas Mikolov's RNNLM examples tarball; it holds the PTB word and character "
    "level files under simple-examples/data/.",
)


def _ptb(name: str, size: int, sha256: str, derived_from: str | None = None) -> DataFile:
    note = f"extract ./simple-examples/data/{name} from {_PTB_TARBALL.urls[0]}."
    if derived_from is not None:
        note += (
            f" Alternatively provide the word level {derived_from}: load_ptb_char derives "
            "this file from it, byte for byte."
        )
    return DataFile(
        name=name,
        dataset="ptb",
        size=size,
        sha256=sha256,
        note=note,
        archive=_PTB_TARBALL,
        member=f"./simple-examples/data/{name}",
    )


def _mnist(name: str, size: int, sha256: str) -> DataFile:
    return DataFile(
        name=name,
        dataset="mnist",
        size=size,
        sha256=sha256,
        urls=(
            f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}",
            f"http://yann.lecun.com/exdb/mnist/{name}",
        ),
        note="the MNIST IDX file, gzipped or not; size and sha256 are those of the decompressed bytes.",
        gzipped=True,
    )


_ENWIK8_ZIP_URL = "http://mattmahoney.net/dc/enwik8.zip"

_KNOWN = [
    _PTB_TARBALL,
    _ptb("ptb.train.txt", 5_101_618, "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
    _ptb("ptb.valid.txt", 399_782, "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
    _ptb("ptb.test.txt", 449_945, "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
    _ptb(
        "ptb.char.train.txt",
        10_034_964,
        "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
        derived_from="ptb.train.txt",
    ),
    _ptb(
        "ptb.char.valid.txt",
        786_084,
        "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
        derived_from="ptb.valid.txt",
    ),
    _ptb(
        "ptb.char.test.txt",
        884_846,
        "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
        derived_from="ptb.test.txt",
    ),
    _mnist(
        "train-images-idx3-ubyte.gz",
        47_040_016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    _mnist(
        "train-labels-idx1-ubyte.gz",
        60_008,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    _mnist(
        "t10k-images-idx3-ubyte.gz",
        7_840_016,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    _mnist(
        "t10k-labels-idx1-ubyte.gz",
        10_008,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
    DataFile(
        name="enwik8",
        dataset="enwik8",
        size=100_000_000,
        sha256="2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
        note=f"unzip {_ENWIK8_ZIP_URL}; the zip itself is accepted too.",
    ),
    DataFile(
        name="enwik8.zip",
        dataset="enwik8",
        size=36_445_475,
        sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
        urls=(_ENWIK8_ZIP_URL,),
        note="Matt Mahoney's Large Text Compression Benchmark; the unzipped enwik8 is accepted too.",
    ),
]

KNOWN_FILES: Mapping[str, DataFile] = MappingProxyType({file.name: file for file in _KNOWN})
"""The data files manntk's loaders know, by file name, with their sizes and digests."""

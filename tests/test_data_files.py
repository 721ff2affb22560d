"""Tests for manntk.data.files: search order, verification, download, extraction."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from manntk.data import files
from manntk.data.files import KNOWN_FILES, DataError, DataFile, find, locate, search_dirs

CONTENT = b"hello, memory-augmented world\n" * 10


def make_file(**overrides: object) -> DataFile:
    fields = dict(
        name="toy.txt",
        dataset="toy",
        size=len(CONTENT),
        sha256=hashlib.sha256(CONTENT).hexdigest(),
        note="write it by hand",
    )
    fields.update(overrides)
    return DataFile(**fields)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at a fresh folder and unset MANNTK_DATA; return the cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MANNTK_CACHE", str(cache))
    monkeypatch.delenv("MANNTK_DATA", raising=False)
    return cache


def write(path: Path, data: bytes = CONTENT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class TruncatingHandler(QuietHandler):
    """Promises 1000 bytes, sends 10, then closes the connection."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True


def serve(directory: Path, handler: type = QuietHandler) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    folder = tmp_path / "served"
    folder.mkdir()
    yield from ((folder, url) for url in serve(folder))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/toy.txt"


def files_named(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and name in p.name] if folder.exists() else []


# --- finding -------------------------------------------------------------------------


def test_search_order_is_root_then_data_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANNTK_DATA", str(tmp_path / "data"))
    assert search_dirs(tmp_path / "root") == [tmp_path / "root", tmp_path / "data", tmp_path / "cache"]
    assert search_dirs() == [tmp_path / "data", tmp_path / "cache"]


@pytest.mark.parametrize("place", ["root", "root/toy", "data", "data/toy", "cache", "cache/toy"])
def test_finds_file_in_each_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, place: str) -> None:
    monkeypatch.setenv("MANNTK_DATA", str(tmp_path / "data"))
    path = write(tmp_path / place / "toy.txt")
    assert find(make_file(), root=tmp_path / "root") == path
    assert locate(make_file(), root=tmp_path / "root", download=False) == path


def test_root_wins_over_data_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANNTK_DATA", str(tmp_path / "data"))
    write(tmp_path / "data" / "toy.txt")
    write(tmp_path / "cache" / "toy" / "toy.txt")
    in_root = write(tmp_path / "root" / "toy" / "toy.txt")
    assert find(make_file(), root=tmp_path / "root") == in_root
    assert find(make_file()) == tmp_path / "data" / "toy.txt"


def test_missing_file_error_lists_every_place_and_how_to_get_it(tmp_path: Path) -> None:
    file = make_file(urls=("http://example.invalid/toy.txt",))
    assert find(file, root=tmp_path / "root") is None
    with pytest.raises(DataError) as caught:
        locate(file, root=tmp_path / "root", download=False)
    message = str(caught.value)
    for folder in (tmp_path / "root", tmp_path / "root" / "toy", tmp_path / "cache", tmp_path / "cache" / "toy"):
        assert str(folder / "toy.txt") in message
    assert "download=False" in message
    assert "http://example.invalid/toy.txt" in message
    assert "write it by hand" in message
    assert "MANNTK_DATA" in message


# --- verification ----------------------------------------------------------------------


def test_size_mismatch_is_reported_with_expected_and_found(tmp_path: Path) -> None:
    path = write(tmp_path / "toy.txt", CONTENT[:-1])
    with pytest.raises(DataError) as caught:
        locate(make_file(), root=tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert f"{len(CONTENT) - 1:,} bytes, expected {len(CONTENT):,}" in message
    assert "write it by hand" in message


def test_sha256_mismatch_is_reported_with_both_digests(tmp_path: Path) -> None:
    corrupt = CONTENT.replace(b"hello", b"HELLO")
    path = write(tmp_path / "toy.txt", corrupt)
    with pytest.raises(DataError) as caught:
        find(make_file(), root=tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert hashlib.sha256(corrupt).hexdigest() in message
    assert hashlib.sha256(CONTENT).hexdigest() in message


def test_unverifiable_file_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "toy.txt", b"anything")
    assert find(make_file(size=None, sha256=None), root=tmp_path) == path


def test_gzipped_file_is_verified_by_its_decompressed_content(tmp_path: Path) -> None:
    file = make_file(name="toy.bin.gz", gzipped=True)
    packed = write(tmp_path / "toy.bin.gz", gzip.compress(CONTENT, mtime=0))
    assert find(file, root=tmp_path) == packed
    packed.unlink()
    raw = write(tmp_path / "toy" / "toy.bin")
    assert find(file, root=tmp_path) == raw
    raw.unlink()
    write(tmp_path / "toy.bin.gz", gzip.compress(CONTENT[:-1]))
    with pytest.raises(DataError, match="decompressed size"):
        find(file, root=tmp_path)
    write(tmp_path / "toy.bin.gz", b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="could not be read as gzip"):
        find(file, root=tmp_path)


def test_verified_digest_is_remembered_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    calls: list[Path] = []
    real_hash = files._hash
    monkeypatch.setattr(files, "_hash", lambda path, gunzip: calls.append(path) or real_hash(path, gunzip))
    path = write(tmp_path / "toy.txt")
    for _ in range(3):
        assert find(make_file(), root=tmp_path) == path
    assert calls == [path]
    assert (isolated_env / "verified.json").is_file()
    write(path, CONTENT.replace(b"h", b"j"))  # same size, new mtime
    with pytest.raises(DataError, match="sha256"):
        find(make_file(), root=tmp_path)
    assert calls == [path, path]


# --- downloading -----------------------------------------------------------------------


def test_download_over_http_lands_verified_in_cache(http_root: tuple[Path, str], isolated_env: Path) -> None:
    served, base = http_root
    write(served / "toy.txt")
    file = make_file(urls=(f"{base}/toy.txt",))
    path = locate(file, progress=False)
    assert path == isolated_env / "toy" / "toy.txt"
    assert path.read_bytes() == CONTENT
    assert files_named(isolated_env, "toy.txt") == [path]  # no temporary file left over
    (served / "toy.txt").unlink()
    assert locate(file, progress=False) == path  # found in the cache, not downloaded again


def test_download_from_file_url(tmp_path: Path, isolated_env: Path) -> None:
    source = write(tmp_path / "elsewhere" / "toy.txt")
    path = locate(make_file(urls=(source.as_uri(),)), progress=False)
    assert path == isolated_env / "toy" / "toy.txt"
    assert path.read_bytes() == CONTENT


def test_download_falls_back_to_the_next_url(tmp_path: Path, isolated_env: Path) -> None:
    source = write(tmp_path / "elsewhere" / "toy.txt")
    file = make_file(urls=(closed_port_url(), source.as_uri()))
    assert locate(file, progress=False).read_bytes() == CONTENT


def test_corrupt_download_leaves_no_file(http_root: tuple[Path, str], isolated_env: Path) -> None:
    served, base = http_root
    write(served / "toy.txt", CONTENT.upper())
    with pytest.raises(DataError) as caught:
        locate(make_file(urls=(f"{base}/toy.txt",)), progress=False)
    message = str(caught.value)
    assert f"{base}/toy.txt" in message
    assert "downloaded file is wrong" in message
    assert hashlib.sha256(CONTENT.upper()).hexdigest() in message
    assert files_named(isolated_env, "toy.txt") == []


def test_interrupted_download_leaves_no_file(tmp_path: Path, isolated_env: Path) -> None:
    for base in serve(tmp_path, TruncatingHandler):
        with pytest.raises(DataError) as caught:
            locate(make_file(size=None, sha256=None, urls=(f"{base}/toy.txt",)), progress=False)
    assert "connection closed after 10 of 1,000 bytes" in str(caught.value)
    assert files_named(isolated_env, "toy.txt") == []


def test_offline_error_names_the_network_error_and_the_places(tmp_path: Path, isolated_env: Path) -> None:
    url = closed_port_url()
    with pytest.raises(DataError) as caught:
        locate(make_file(urls=(url,)), root=tmp_path / "root", progress=False)
    message = str(caught.value)
    assert "was not found" in message
    assert str(tmp_path / "root" / "toy" / "toy.txt") in message
    assert url in message
    assert "refused" in message.lower()
    assert "write it by hand" in message
    assert files_named(isolated_env, "toy.txt") == []


# --- extraction from an archive -----------------------------------------------------------


def make_tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_file_is_extracted_from_a_downloaded_archive(tmp_path: Path, isolated_env: Path) -> None:
    tarball = make_tarball(tmp_path / "bundle.tgz", {"./bundle/data/toy.txt": CONTENT})
    archive = DataFile(name="bundle.tgz", dataset="toy", urls=(tarball.as_uri(),))
    file = make_file(archive=archive, member="./bundle/data/toy.txt")
    path = locate(file, progress=False)
    assert path == isolated_env / "toy" / "toy.txt"
    assert path.read_bytes() == CONTENT
    assert (isolated_env / "toy" / "bundle.tgz").is_file()


def test_archive_without_the_member_or_with_a_wrong_one_is_reported(tmp_path: Path, isolated_env: Path) -> None:
    make_tarball(tmp_path / "bundle.tgz", {"bundle/other.txt": CONTENT, "bundle/toy.txt": b"wrong"})
    archive = DataFile(name="bundle.tgz", dataset="toy")
    with pytest.raises(DataError, match="has no regular file 'bundle/missing.txt'"):
        locate(make_file(archive=archive, member="bundle/missing.txt"), root=tmp_path)
    with pytest.raises(DataError, match="is not the expected toy.txt: its size is 5 bytes"):
        locate(make_file(archive=archive, member="bundle/toy.txt"), root=tmp_path)
    assert files_named(isolated_env, "toy.txt") == []


# --- the table of known files ----------------------------------------------------------------


def test_known_files_cover_the_benchmarks() -> None:
    for name in ("ptb.char.train.txt", "ptb.test.txt", "t10k-labels-idx1-ubyte.gz", "enwik8", "enwik8.zip"):
        assert KNOWN_FILES[name].name == name
    assert KNOWN_FILES["enwik8"].size == 100_000_000
    assert KNOWN_FILES["enwik8.zip"].urls == ("http://mattmahoney.net/dc/enwik8.zip",)
    assert KNOWN_FILES["train-images-idx3-ubyte.gz"].names == (
        "train-images-idx3-ubyte.gz",
        "train-images-idx3-ubyte",
    )


def test_data_file_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        make_file(sha256="abc")
    with pytest.raises(ValueError, match="ending in .gz"):
        make_file(gzipped=True)
    with pytest.raises(ValueError, match="both archive and member"):
        make_file(member="x")

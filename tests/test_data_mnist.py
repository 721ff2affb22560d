"""Tests for manntk.data.mnist: IDX parsing and the real MNIST files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from manntk.data.files import DataError
from manntk.data.mnist import load_mnist, read_idx

MNIST_DIR = (Path(__file__).parents[1] / "../shared/data/mnist").resolve()
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST files not present at {MNIST_DIR}")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANNTK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MANNTK_DATA", raising=False)


def idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


IMAGES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)


@pytest.mark.parametrize("compress", [False, True])
def test_tiny_uint8_idx_reads_back(tmp_path: Path, compress: bool) -> None:
    data = idx_bytes(0x08, (2, 3, 4), IMAGES.tobytes())
    path = tmp_path / "tiny-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    tensor = read_idx(path)
    assert tensor.dtype == torch.uint8
    assert tensor.shape == (2, 3, 4)
    assert tensor.tolist() == IMAGES.tolist()


def test_big_endian_types_are_converted(tmp_path: Path) -> None:
    values = np.array([[-2, 70000], [3, -1]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(idx_bytes(0x0C, (2, 2), values.tobytes()))
    tensor = read_idx(path)
    assert tensor.dtype == torch.int32
    assert tensor.tolist() == [[-2, 70000], [3, -1]]


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_file_is_reported(tmp_path: Path, compress: bool) -> None:
    data = idx_bytes(0x08, (2, 3, 4), IMAGES.tobytes())[:-5]
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match=rf"{path.name} is truncated: .*shape \(2, 3, 4\).* 40 bytes .* has 35"):
        read_idx(path)


def test_truncated_gzip_stream_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (2, 3, 4), IMAGES.tobytes()))[:-12])
    with pytest.raises(DataError, match=rf"{path.name} is a broken gzip file"):
        read_idx(path)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x01\x00\x08\x01" + b"\x00" * 8, r"not an IDX file: its magic number is 01 00 08 01"),
        (b"PK\x03\x04rest", r"not an IDX file: its magic number is 50 4b 03 04"),
        (b"\x00\x00", r"magic number is 00 00, expected"),
        (idx_bytes(0x07, (1,), b"\x00"), r"unknown IDX dtype code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00", r"truncated: its IDX header declares 3 dimensions"),
        (idx_bytes(0x08, (2,), b"abc"), r"longer than declared"),
    ],
)
def test_wrong_magic_and_header_are_reported(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "bad-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError, match=expected) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_missing_mnist_names_the_file_and_urls(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_mnist(root=tmp_path, download=False)
    message = str(caught.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte") in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message


@needs_mnist
def test_real_mnist() -> None:
    train_images, train_labels, test_images, test_labels = load_mnist(root=MNIST_DIR, download=False)
    assert train_images.shape == (60_000, 28, 28) and train_images.dtype == torch.uint8
    assert test_images.shape == (10_000, 28, 28) and test_images.dtype == torch.uint8
    assert train_labels.shape == (60_000,) and train_labels.dtype == torch.long
    assert train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert train_images.double().mean().item() / 255 == pytest.approx(0.13066, abs=5e-6)


@needs_mnist
def test_real_mnist_accepted_decompressed(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    packed = (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(packed))
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (folder / name).symlink_to(MNIST_DIR / name)
    assert torch.bincount(load_mnist(root=tmp_path, download=False).test_labels)[1].item() == 1135

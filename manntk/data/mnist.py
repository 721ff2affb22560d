"""MNIST from its IDX files, gzipped or not.

The IDX format (LeCun's) is a 4-byte magic number, ``00 00 <dtype code> <rank>``,
then ``rank`` big-endian uint32 dimensions, then the array in C order, big-endian.
[`read_idx`][manntk.data.mnist.read_idx] checks every part of that, so a truncated
download or a file of the wrong kind fails with a message naming the file instead
of producing a tensor of the wrong shape.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from manntk.data.files import KNOWN_FILES, DataError, locate

__all__ = ["MNIST", "load_mnist", "read_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class MNIST(NamedTuple):
    """The MNIST train and test sets; unpacks as a 4-tuple.

    Attributes:
        train_images: ``uint8 [60000, 28, 28]``, pixel values 0-255.
        train_labels: ``long [60000]``, digits 0-9, ready for cross-entropy.
        test_images: ``uint8 [10000, 28, 28]``.
        test_labels: ``long [10000]``.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file, gzipped or not (detected from its first bytes, not its name).

    Args:
        path: The file.

    Returns:
        A tensor of the file's shape, in native byte order, with the dtype the file
        declares (``uint8`` for MNIST).

    Raises:
        DataError: The file is not IDX (bad magic number or dtype code), is a broken
            gzip, or its length does not match the dimensions it declares.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path} is a broken gzip file ({error}); delete it and fetch it again.") from None
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise DataError(
            f"{path} is not an IDX file: its magic number is {data[:4].hex(' ') or 'missing'}, "
            "expected 00 00 <dtype code> <rank>."
        )
    code, rank = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02x}; known codes are {known}.")
    dtype = _IDX_DTYPES[code]
    header = 4 + 4 * rank
    if rank == 0:
        raise DataError(f"{path}: the IDX header declares rank 0; an IDX array has at least one dimension.")
    if len(data) < header:
        raise DataError(f"{path} is truncated: its IDX header declares {rank} dimensions but it has {len(data)} bytes.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than declared"
        raise DataError(
            f"{path} is {problem}: an IDX array of shape {shape} and dtype {dtype.name} takes "
            f"{expected:,} bytes with its header, but the (decompressed) file has {len(data):,}."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).astype(dtype.newbyteorder("="))
    return torch.from_numpy(array.reshape(shape))


def load_mnist(root: str | os.PathLike[str] | None = None, download: bool = True) -> MNIST:
    """Load the standard 60,000/10,000 MNIST split.

    The four ``*-ubyte`` files are found with [`locate`][manntk.data.files.locate],
    gzipped or not, verified against the canonical decompressed SHA-256 and
    downloaded if missing and allowed.

    Args:
        root: A folder to search before ``$MANNTK_DATA`` and the cache.
        download: Whether missing files may be downloaded.

    Returns:
        Images as ``uint8 [N, 28, 28]`` and labels as ``long [N]``.

    Raises:
        DataError: A file is missing or corrupt.
    """
    train_images, train_labels, test_images, test_labels = (
        read_idx(locate(KNOWN_FILES[f"{name}-ubyte.gz"], root, download=download))
        for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    )
    return MNIST(train_images, train_labels.long(), test_images, test_labels.long())

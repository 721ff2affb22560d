"""Character and byte level corpora as 1-D token streams with a vocabulary.

Every loader returns a [`Corpus`][manntk.data.text.Corpus]: three ``torch.long``
streams of token ids (train, valid, test) and the tuple of symbols the ids index.
Two kinds of vocabulary are used:

* **character level** (PTB, ``load_text_file(level="char")``): the symbols are
  one-character strings, sorted by code point, so ids do not depend on the order
  in which symbols first appear;
* **byte level** (enwik8, ``load_text_file(level="byte")``): the symbols are all
  256 byte values and a token's id *is* its byte value. A fixed vocabulary needs
  no lookup, accepts any byte in valid/test (a vocabulary built from train would
  reject a byte first seen in test) and is identical for every prefix of a file.
  Bytes that never occur cost nothing in bits per character once a model has
  learnt to give them negligible probability.
"""

from __future__ import annotations

import numbers
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch

from manntk.data.files import KNOWN_FILES, DataError, find, locate

__all__ = [
    "BYTE_VOCAB",
    "ENWIK8_SPLIT",
    "Corpus",
    "Split",
    "load_enwik8",
    "load_ptb_char",
    "load_text_file",
]

Symbol = str | int
"""A vocabulary entry: a one-character string, or a byte value 0-255."""

Split = Sequence[int | float]
"""Three token counts (ints summing to the stream length) or three fractions summing to 1."""

BYTE_VOCAB: tuple[int, ...] = tuple(range(256))
"""The byte level vocabulary: id ``i`` is byte value ``i``."""

ENWIK8_SPLIT: tuple[int, int, int] = (90_000_000, 5_000_000, 5_000_000)
"""The standard enwik8 split in bytes: train [0, 90M), valid [90M, 95M), test [95M, 100M)."""

_SPLIT_NAMES = ("train", "valid", "test")


@attrs.frozen(eq=False)
class Corpus:
    """A language modelling corpus: three token streams over one vocabulary.

    Attributes:
        train: Training stream, 1-D ``torch.long`` tensor of ids into ``vocab``.
        valid: Validation stream, same format.
        test: Test stream, same format.
        vocab: The symbols, indexed by id: one-character strings or byte values.
        name: A short name for logs, e.g. ``"ptb_char"`` or a file name.
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: tuple[Symbol, ...] = attrs.field(converter=tuple)
    name: str

    def __attrs_post_init__(self) -> None:
        if not self.vocab:
            raise ValueError(f"Corpus {self.name!r}: the vocabulary is empty")
        for split in _SPLIT_NAMES:
            stream = getattr(self, split)
            if stream.dtype != torch.long or stream.dim() != 1:
                raise ValueError(
                    f"Corpus {self.name!r}: {split} must be a 1-D torch.long tensor, "
                    f"got {stream.dtype} of shape {tuple(stream.shape)}"
                )
            if stream.numel() < 2:
                raise ValueError(
                    f"Corpus {self.name!r}: {split} has {stream.numel()} tokens; at least 2 are "
                    "needed for one prediction"
                )
            if int(stream.min()) < 0 or int(stream.max()) >= len(self.vocab):
                raise ValueError(
                    f"Corpus {self.name!r}: {split} has ids outside [0, {len(self.vocab)}), the vocabulary size"
                )

    @property
    def vocab_size(self) -> int:
        """Number of symbols, i.e. the number of output classes a model needs."""
        return len(self.vocab)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Turn a 1-D sequence of ids back into text, e.g. to read a model's samples.

        Byte level ids are decoded as UTF-8, with U+FFFD for invalid sequences
        (a sample may well cut a multi-byte character).
        """
        symbols = [self.vocab[int(i)] for i in ids]
        if symbols and isinstance(symbols[0], int):
            return bytes(symbols).decode("utf-8", errors="replace")
        return "".join(symbols)


def load_ptb_char(root: str | os.PathLike[str] | None = None, download: bool = True) -> Corpus:
    r"""Load character level Penn Treebank in Mikolov's format (vocabulary of 50).

    Mikolov's ``ptb.char.{train,valid,test}.txt`` hold one sentence per line, every
    symbol followed by one space, ``_`` for the space between words. Each line ends
    with a newline, and the **newline is itself a symbol**: it is written as a
    token (``"\n "``), so it is predicted like any other character and counts in
    bits per character. The vocabulary is therefore the 49 printable symbols of
    train plus ``"\n"``: 50 in all. Streams are the files' symbols in order:
    train, valid and test have 5,017,482, 393,042 and 442,423 tokens, of which
    42,068, 3,370 and 3,761 are newlines.

    For each split the char file is used if found; otherwise the word level
    ``ptb.{split}.txt`` is used if found, and the char stream derived from it
    (each line stripped, spaces replaced by ``_``, a newline token appended: the
    rule that generated the char files, which it reproduces exactly); otherwise the
    char file is obtained with [`locate`][manntk.data.files.locate].

    Args:
        root: A folder to search before ``$MANNTK_DATA`` and the cache.
        download: Whether missing files may be downloaded.

    Returns:
        The corpus, its vocabulary the sorted symbols of train (``"\n"`` is id 0).

    Raises:
        DataError: A file is missing, corrupt or not in the expected format, or
            valid/test contain a symbol absent from train.
    """
    tokens = {split: _ptb_tokens(split, root, download) for split in _SPLIT_NAMES}
    vocab = tuple(sorted(set(tokens["train"][0])))
    streams = {split: _encode(text, vocab, f"PTB {split} split ({source})") for split, (text, source) in tokens.items()}
    return Corpus(**streams, vocab=vocab, name="ptb_char")


def load_enwik8(
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    path: str | os.PathLike[str] | None = None,
    split: Split = ENWIK8_SPLIT,
) -> Corpus:
    """Load enwik8 at byte level: ids are byte values, the vocabulary all 256 bytes.

    Without ``path``, the raw ``enwik8`` is used if found, else ``enwik8.zip``
    (found or downloaded), whose ``enwik8`` member is read directly. With ``path``,
    that file is read as is (a zip if it is one) without checksum verification,
    which is how to use a prefix of enwik8 or another byte file. The streams take
    8 bytes per token: 800 MB for the full enwik8.

    Args:
        root: A folder to search before ``$MANNTK_DATA`` and the cache.
        download: Whether ``enwik8.zip`` may be downloaded.
        path: A specific file to read instead of searching.
        split: Token counts summing to the file length, or fractions summing to 1.
            The default is the standard 90M/5M/5M split of the full 100M bytes; use
            e.g. ``(0.9, 0.05, 0.05)`` for a file of another length.

    Returns:
        The corpus, named ``"enwik8"`` or after ``path``.

    Raises:
        DataError: The file is missing, corrupt, a zip without an ``enwik8`` member,
            or too short for ``split``.
    """
    if path is None:
        source = find(KNOWN_FILES["enwik8"], root) or locate(KNOWN_FILES["enwik8.zip"], root, download)
        name = "enwik8"
    else:
        source = _existing_file(Path(path), "task.path (the enwik8 file to read)")
        name = source.name
    data = _read_enwik8(source)
    stream = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))
    return Corpus(*_split(stream, split, str(source)), vocab=BYTE_VOCAB, name=name)


def load_text_file(
    path: str | os.PathLike[str],
    split: Split = (0.9, 0.05, 0.05),
    level: Literal["char", "byte"] = "char",
) -> Corpus:
    """Load any text file as a corpus, split into contiguous train/valid/test parts.

    At character level the file must be UTF-8; every code point, newlines included,
    is a token, and the vocabulary is the sorted set of characters of the **whole
    file**. Only the symbol set is taken from valid/test, not any statistics, and it
    keeps a character that happens to occur only after the train boundary from
    making the file unusable. At byte level, ids are byte values (vocabulary of 256).

    Args:
        path: The file.
        split: Token counts summing to the stream length, or fractions summing to 1.
        level: ``"char"`` for Unicode characters, ``"byte"`` for raw bytes.

    Returns:
        The corpus, named after the file.

    Raises:
        DataError: The file is missing, is not valid UTF-8 (at character level; the
            message gives the byte offset) or is too short for ``split``.
        ValueError: ``level`` or ``split`` is invalid.
    """
    path = _existing_file(Path(path), "task.path (the text file to model)")
    if level == "char":
        text = _read_utf8(path)
        vocab: tuple[Symbol, ...] = tuple(sorted(set(text)))
        stream = _encode(text, vocab, str(path))
    elif level == "byte":
        vocab = BYTE_VOCAB
        stream = torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64))
    else:
        raise ValueError(f"level must be 'char' or 'byte', got {level!r}")
    return Corpus(*_split(stream, split, str(path)), vocab=vocab, name=path.name)


def _ptb_tokens(split: str, root: str | os.PathLike[str] | None, download: bool) -> tuple[str, Path]:
    """Return one PTB split as a string of one-character symbols, and the file it came from."""
    char_file = KNOWN_FILES[f"ptb.char.{split}.txt"]
    path = find(char_file, root)
    if path is not None:
        return _parse_char_file(path), path
    word_path = find(KNOWN_FILES[f"ptb.{split}.txt"], root)
    if word_path is not None:
        return _chars_from_words(word_path), word_path
    path = locate(char_file, root, download=download)
    return _parse_char_file(path), path


def _parse_char_file(path: Path) -> str:
    """Read a file of one-character symbols, each followed by one space.

    Returns:
        The symbols concatenated: character ``i`` of the result is symbol ``i``.
    """
    text = _read_utf8(path)
    double = text.find("  ")
    if double >= 0:
        raise DataError(
            f"{path}: {_where(text, double)}: two spaces in a row. Mikolov's character "
            "format writes the space between words as '_', never as a space symbol."
        )
    if len(text) % 2:
        text += " "  # tolerate a missing separator after the last symbol
    separators = text[1::2]
    bad = len(separators) - len(separators.lstrip(" "))
    if bad < len(separators):
        offset = 2 * bad + 1
        raise DataError(
            f"{path}: {_where(text, offset)}: expected a space after the symbol "
            f"{text[offset - 1]!r}, found {text[offset]!r}. Mikolov's character format "
            "writes every symbol as one character followed by one space."
        )
    return text[0::2]


def _chars_from_words(path: Path) -> str:
    """Derive Mikolov's character symbols from a PTB word file.

    Each line is stripped, its spaces replaced by ``_``, and a newline symbol
    appended; this reproduces ``ptb.char.*.txt`` byte for byte.
    """
    lines = _read_utf8(path).split("\n")
    if lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line, it starts no new one
    return "".join(line.strip().replace(" ", "_") + "\n" for line in lines)


def _where(text: str, offset: int, unit: str = "character offset") -> str:
    """Describe position ``offset`` of ``text`` as line and column, for error messages."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column} ({unit} {offset})"


def _existing_file(path: Path, what: str) -> Path:
    """``path``, or a [`DataError`][manntk.data.files.DataError] naming it as ``what`` when it is not a file."""
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        where = "" if path.is_absolute() else f" (relative to the current directory, {Path.cwd()})"
        raise DataError(f"{what}: {path} {problem}{where}")
    return path


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not valid UTF-8: byte offset {error.start} (byte 0x{data[error.start]:02x}): "
            f"{error.reason}. Read it with level='byte' to model raw bytes instead."
        ) from None


def _encode(symbols: str, vocab: tuple[Symbol, ...], source: str) -> torch.Tensor:
    """Map each character of ``symbols`` to its id in the sorted character ``vocab``."""
    codes = np.frombuffer(symbols.encode("utf-32-le"), dtype="<u4")
    table = np.array([ord(symbol) for symbol in vocab], dtype=np.uint32)
    ids = np.minimum(np.searchsorted(table, codes), len(table) - 1)
    unknown = table[ids] != codes
    if unknown.any():
        index = int(unknown.argmax())
        raise DataError(
            f"{source}: symbol {symbols[index]!r} (U+{ord(symbols[index]):04X}) at "
            f"{_where(symbols, index, unit='symbol')} does not occur in "
            "the training split, so it has no id. The vocabulary is built from train."
        )
    return torch.from_numpy(ids.astype(np.int64))


def _split(stream: torch.Tensor, split: Split, source: str) -> tuple[torch.Tensor, ...]:
    """Cut ``stream`` into three contiguous parts by token counts or by fractions."""
    if len(split) != 3:
        raise ValueError(f"split must have 3 entries (train, valid, test), got {split!r}")
    n = stream.numel()
    if all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in split):
        if sum(split) != n:
            raise DataError(
                f"{source} has {n:,} tokens but split {tuple(split)} counts {sum(split):,}. "
                "Token counts must add up to the stream length; for a file of another length "
                "pass fractions such as split=(0.9, 0.05, 0.05)."
            )
        lengths = [int(x) for x in split]
    else:
        if any(not isinstance(x, numbers.Real) or x < 0 for x in split) or abs(sum(split) - 1) > 1e-9:
            raise ValueError(f"split must be 3 non-negative fractions summing to 1 or 3 token counts, got {split!r}")
        train_end = round(n * split[0])
        valid_end = round(n * (split[0] + split[1]))
        lengths = [train_end, valid_end - train_end, n - valid_end]
    for name, length in zip(_SPLIT_NAMES, lengths, strict=True):
        if length < 2:
            raise DataError(
                f"{source} is too short for split {tuple(split)}: its {n:,} tokens leave "
                f"{length} for {name}, which needs at least 2 (one input, one target)."
            )
    return tuple(torch.split(stream, lengths))


def _read_enwik8(path: Path) -> bytes:
    """Return the bytes of ``path``, or of the ``enwik8`` member if it is a zip."""
    if not zipfile.is_zipfile(path):
        return path.read_bytes()
    try:
        with zipfile.ZipFile(path) as archive:
            if "enwik8" not in archive.namelist():
                raise DataError(
                    f"{path} is a zip archive without an 'enwik8' member "
                    f"(it holds {archive.namelist()[:5]}); expected Matt Mahoney's enwik8.zip."
                )
            return archive.read("enwik8")
    except zipfile.BadZipFile as error:
        raise DataError(f"{path} is a damaged zip archive ({error}); delete it to download it again.") from error

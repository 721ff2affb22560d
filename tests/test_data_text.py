"""Tests for manntk.data.text: PTB char format, enwik8, plain text files, Corpus."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from manntk.data import files
from manntk.data.files import DataError, DataFile
from manntk.data.text import BYTE_VOCAB, Corpus, load_enwik8, load_ptb_char, load_text_file

SHARED = (Path(__file__).parents[1] / "../shared/data").resolve()
PTB = SHARED / "ptb"
ENWIK6 = SHARED / "enwik8" / "enwik8_first_1000000_bytes"
needs_ptb = pytest.mark.skipif(not PTB.is_dir(), reason=f"PTB files not present at {PTB}")
needs_enwik = pytest.mark.skipif(not ENWIK6.is_file(), reason=f"enwik8 prefix not present at {ENWIK6}")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANNTK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MANNTK_DATA", raising=False)


def unverified(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Let hand-written stand-ins for known files pass verification."""
    table = dict(files.KNOWN_FILES)
    for name in names:
        table[name] = DataFile(name=name, dataset=table[name].dataset)
    monkeypatch.setattr("manntk.data.text.KNOWN_FILES", table)


def char_format(lines: list[str]) -> str:
    """Write sentences the way Mikolov's ptb.char files do."""
    return "".join(" ".join(line.replace(" ", "_")) + " \n " for line in lines)


# --- PTB character format on hand-written files -----------------------------------------


@pytest.fixture
def tiny_ptb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    names = [f"ptb.char.{split}.txt" for split in ("train", "valid", "test")]
    unverified(monkeypatch, *names, *(f"ptb.{split}.txt" for split in ("train", "valid", "test")))
    folder = tmp_path / "ptb"
    folder.mkdir()
    (folder / names[0]).write_text(char_format(["ab c", "ca"]))
    (folder / names[1]).write_text(char_format(["cab"]))
    (folder / names[2]).write_text(char_format(["a"]))
    return folder


def test_ptb_char_known_answer(tiny_ptb: Path) -> None:
    corpus = load_ptb_char(root=tiny_ptb, download=False)
    assert corpus.vocab == ("\n", "_", "a", "b", "c")
    assert corpus.train.tolist() == [2, 3, 1, 4, 0, 4, 2, 0]  # a b _ c \n c a \n
    assert corpus.valid.tolist() == [4, 2, 3, 0]
    assert corpus.test.tolist() == [2, 0]
    assert corpus.decode(corpus.train) == "ab_c\nca\n"
    assert corpus.name == "ptb_char"


def test_ptb_char_is_derived_from_word_files(tiny_ptb: Path, tmp_path: Path) -> None:
    words = tmp_path / "words"
    words.mkdir()
    (words / "ptb.train.txt").write_text(" ab c \n ca \n")
    (words / "ptb.valid.txt").write_text(" cab \n")
    (words / "ptb.test.txt").write_text(" a \n")
    derived = load_ptb_char(root=words, download=False)
    direct = load_ptb_char(root=tiny_ptb, download=False)
    assert derived.vocab == direct.vocab
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(derived, split), getattr(direct, split))


def test_ptb_symbol_missing_from_train_is_named(tiny_ptb: Path) -> None:
    (tiny_ptb / "ptb.char.test.txt").write_text(char_format(["a", "zb"]))
    with pytest.raises(DataError, match=r"symbol 'z' \(U\+007A\) at line 2, column 1.*not occur in the training"):
        load_ptb_char(root=tiny_ptb, download=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b\n", r"line 1, column 4 \(character offset 3\): expected a space after the symbol 'b', found '\\n'"),
        ("a b  c ", r"line 1, column 4 \(character offset 3\): two spaces in a row"),
        (
            "x \n a b c d e fg h ",
            r"line 2, column 13 \(character offset 15\): expected a space after the symbol 'f', found 'g'",
        ),
    ],
)
def test_ptb_malformed_char_file_is_located(tiny_ptb: Path, text: str, expected: str) -> None:
    (tiny_ptb / "ptb.char.valid.txt").write_text(text)
    with pytest.raises(DataError, match=expected):
        load_ptb_char(root=tiny_ptb, download=False)


def test_ptb_missing_files_error_names_both_alternatives(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_ptb_char(root=tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "ptb" / "ptb.char.train.txt") in message
    assert "simple-examples.tgz" in message
    assert "ptb.train.txt" in message


# --- PTB on the real files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ptb(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Load the real PTB once per module, with its own cache folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MANNTK_CACHE", str(tmp_path_factory.mktemp("ptb_cache")))
        patch.delenv("MANNTK_DATA", raising=False)
        return load_ptb_char(root=PTB, download=False)


@needs_ptb
def test_real_ptb_vocabulary_and_counts(ptb: Corpus) -> None:
    assert ptb.vocab_size == 50
    assert ptb.vocab[0] == "\n"
    assert set(ptb.vocab) >= set("_<>N.'$-&#\\/*0123456789abcdefghijklmnopqrstuvwxyz")
    newline = ptb.vocab.index("\n")
    counts = {
        "train": (5_017_482, 42_068),
        "valid": (393_042, 3_370),
        "test": (442_423, 3_761),
    }
    for split, (symbols, lines) in counts.items():
        stream = getattr(ptb, split)
        assert stream.numel() == symbols
        assert int((stream == newline).sum()) == lines
    assert torch.unique(ptb.train).numel() == 50
    assert torch.unique(ptb.valid).numel() == 50
    assert torch.unique(ptb.test).numel() == 48
    assert ptb.decode(ptb.valid[:20]) == "consumers_may_want_t"


@needs_ptb
def test_real_ptb_from_word_files_equals_char_files(ptb: Corpus, tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        shutil.copy(PTB / f"ptb.{split}.txt", tmp_path)
    derived = load_ptb_char(root=tmp_path, download=False)
    assert derived.vocab == ptb.vocab
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(derived, split), getattr(ptb, split))


# --- enwik8 ---------------------------------------------------------------------------------


def test_enwik8_prefix_with_ratio_split(tmp_path: Path) -> None:
    path = tmp_path / "prefix"
    path.write_bytes(bytes(range(100)) * 10)
    corpus = load_enwik8(path=path, split=(0.9, 0.05, 0.05))
    assert corpus.vocab == BYTE_VOCAB
    assert [s.numel() for s in (corpus.train, corpus.valid, corpus.test)] == [900, 50, 50]
    assert torch.cat([corpus.train, corpus.valid, corpus.test]).tolist() == list(range(100)) * 10
    assert corpus.name == "prefix"


def test_enwik8_reads_the_zip_member(tmp_path: Path) -> None:
    path = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("enwik8", "héllo wörld")
    corpus = load_enwik8(path=path, split=(0.5, 0.25, 0.25))
    assert torch.cat([corpus.train, corpus.valid, corpus.test]).tolist() == list("héllo wörld".encode())


def test_enwik8_is_found_raw_first_then_zipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unverified(monkeypatch, "enwik8", "enwik8.zip")
    folder = tmp_path / "enwik8"
    folder.mkdir()
    with zipfile.ZipFile(folder / "enwik8.zip", "w") as archive:
        archive.writestr("enwik8", b"z" * 20)
    zipped = load_enwik8(root=tmp_path, download=False, split=(0.8, 0.1, 0.1))
    assert zipped.name == "enwik8"
    assert zipped.decode(zipped.train) == "z" * 16
    (folder / "enwik8").write_bytes(b"r" * 20)
    raw = load_enwik8(root=tmp_path, download=False, split=(16, 2, 2))
    assert raw.decode(raw.test) == "rr"


def test_enwik8_zip_without_member_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README", "x")
    with pytest.raises(DataError, match=r"without an 'enwik8' member \(it holds \['README'\]\)"):
        load_enwik8(path=path, split=(0.5, 0.25, 0.25))


def test_enwik8_standard_split_rejects_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "prefix"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(DataError, match=r"has 1,000 tokens but split .* counts 100,000,000.*split=\(0.9, 0.05, 0.05\)"):
        load_enwik8(path=path)


def test_enwik8_too_short_for_a_ratio_split(tmp_path: Path) -> None:
    path = tmp_path / "tiny"
    path.write_bytes(b"0123456789")
    expected = r"too short for split \(0.9, 0.05, 0.05\): its 10 tokens leave 1 for valid, which needs at least 2"
    with pytest.raises(DataError, match=expected):
        load_enwik8(path=path, split=(0.9, 0.05, 0.05))


@needs_enwik
def test_real_enwik8_prefix() -> None:
    corpus = load_enwik8(path=ENWIK6, split=(0.9, 0.05, 0.05))
    assert [s.numel() for s in (corpus.train, corpus.valid, corpus.test)] == [900_000, 50_000, 50_000]
    assert corpus.decode(corpus.train[:10]) == "<mediawiki"


def test_enwik8_missing_error_mentions_the_zip_url(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_enwik8(root=tmp_path, download=False)
    message = str(caught.value)
    assert "enwik8.zip" in message
    assert "http://mattmahoney.net/dc/enwik8.zip" in message
    assert str(tmp_path / "enwik8" / "enwik8.zip") in message


# --- plain text files -----------------------------------------------------------------------


def test_text_file_char_level_known_answer(tmp_path: Path) -> None:
    path = tmp_path / "poem.txt"
    path.write_text("ba\nab\ncab\nc", encoding="utf-8")
    corpus = load_text_file(path, split=(6, 2, 3))
    assert corpus.vocab == ("\n", "a", "b", "c")
    assert corpus.train.tolist() == [2, 1, 0, 1, 2, 0]
    assert corpus.valid.tolist() == [3, 1]
    assert corpus.test.tolist() == [2, 0, 3]
    assert corpus.name == "poem.txt"


def test_text_file_byte_level_keeps_multibyte_characters_as_bytes(tmp_path: Path) -> None:
    path = tmp_path / "u.txt"
    path.write_text("é" * 10, encoding="utf-8")
    corpus = load_text_file(path, split=(0.6, 0.2, 0.2), level="byte")
    assert corpus.vocab_size == 256
    assert corpus.train.tolist() == [0xC3, 0xA9] * 6
    assert corpus.decode(torch.cat([corpus.train, corpus.valid])) == "é" * 8


def test_text_file_decoding_error_gives_file_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError, match=rf"{path.name} is not valid UTF-8: byte offset 3 \(byte 0xe9\)"):
        load_text_file(path)


def test_invalid_split_and_level_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij")
    with pytest.raises(ValueError, match="summing to 1"):
        load_text_file(path, split=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="3 entries"):
        load_text_file(path, split=(0.5, 0.5))
    with pytest.raises(ValueError, match="level must be"):
        load_text_file(path, level="word")  # type: ignore[arg-type]


def test_corpus_validates_its_streams() -> None:
    ids = torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="outside"):
        Corpus(ids, ids, torch.tensor([0, 2]), vocab=("a", "b"), name="x")
    with pytest.raises(ValueError, match="1-D torch.long"):
        Corpus(ids.int(), ids, ids, vocab=("a", "b"), name="x")
    with pytest.raises(ValueError, match="at least 2"):
        Corpus(ids, ids[:1], ids, vocab=("a", "b"), name="x")


@needs_ptb
def test_real_ptb_symbol_counts_without_newlines(ptb: Corpus) -> None:
    newline = ptb.vocab.index("\n")
    without = {split: int((getattr(ptb, split) != newline).sum()) for split in ("train", "valid", "test")}
    assert without == {"train": 4_975_414, "valid": 389_672, "test": 438_662}
    top = Counter(ptb.decode(ptb.valid)).most_common(1)[0][0]
    assert top == "_"

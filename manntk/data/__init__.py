"""Datasets for manntk: locating files, text corpora, TBPTT streams and MNIST.

* [`files`][manntk.data.files]: find, verify (size, SHA-256) and download data files.
* [`text`][manntk.data.text]: PTB (character level), enwik8 and any text file as
  token streams with a vocabulary.
* [`streams`][manntk.data.streams]: truncated-BPTT batches for language modelling.
* [`mnist`][manntk.data.mnist]: IDX files and MNIST.

Data files are searched in ``root``, ``$MANNTK_DATA`` and the cache folder
(``$MANNTK_CACHE`` or ``~/.cache/manntk``); see [`locate`][manntk.data.files.locate].
"""

from manntk.data.files import (
    CACHE_ENV,
    DATA_ENV,
    KNOWN_FILES,
    DataError,
    DataFile,
    cache_dir,
    find,
    locate,
    search_dirs,
)
from manntk.data.mnist import MNIST, load_mnist, read_idx
from manntk.data.streams import Chunk, LMStream, bits_per_char
from manntk.data.text import BYTE_VOCAB, ENWIK8_SPLIT, Corpus, Split, load_enwik8, load_ptb_char, load_text_file

__all__ = [
    "BYTE_VOCAB",
    "CACHE_ENV",
    "DATA_ENV",
    "ENWIK8_SPLIT",
    "KNOWN_FILES",
    "MNIST",
    "Chunk",
    "Corpus",
    "DataError",
    "DataFile",
    "LMStream",
    "Split",
    "bits_per_char",
    "cache_dir",
    "find",
    "load_enwik8",
    "load_mnist",
    "load_ptb_char",
    "load_text_file",
    "locate",
    "read_idx",
    "search_dirs",
]

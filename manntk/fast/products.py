"""Which library runs the chunk kernels' large float32 matrix products: torch's BLAS or oneDNN.

torch's x86 wheels do their BLAS with MKL, which runs its AVX-512 single-precision kernels
on Intel's CPUs only. Elsewhere it takes a slower path: on a 2-core AMD EPYC (Zen 5, AVX-512)
MKL's sgemm ran at ~100 GFLOP/s on one thread and oneDNN's matmul, which picks its
kernels by instruction set, at ~205-220, while ``torch.nn.LSTM`` trains through oneDNN. So the
kernels (``products.h``) send their large float32 products to oneDNN on CPUs that are not
Intel's, where torch has both libraries and its oneDNN matmul takes float32 (AVX-512 CPUs,
in torch 2.13). On Intel's CPUs MKL stays: with it the kernels met the training target on
a Xeon (``benchmarks/results/INDEX.md``); oneDNN has not been measured there. Products
under about 2M multiply-adds (batch 1 on the algorithmic tasks) stay on the BLAS
everywhere: oneDNN costs ~10 us more per call. float64 always runs on the BLAS.

``MANNTK_PRODUCTS=blas`` or ``=onednn`` overrides the choice (for benchmarks and checks);
the numbers agree up to float32 rounding either way (``tests/test_products.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from manntk.fast.machine import cpu_info

ENVIRONMENT = "MANNTK_PRODUCTS"
"""The environment variable that overrides the choice: ``blas`` or ``onednn``."""

CHOICES = ("blas", "onednn")


def onednn_available(kernels: Any) -> bool:
    """Whether the loaded kernels (``torch.ops.manntk_armin_fused``) can reach oneDNN's matmul:
    torch built with oneDNN, its ``at::native::mkldnn_matmul`` found, and float32 taken on
    this CPU (torch 2.13 requires AVX-512 BW/VL/DQ or AVX-NE-CONVERT; ``products.h`` tries
    one small product)."""
    return torch.backends.mkldnn.is_available() and bool(kernels.onednn_matmul_available())


def chosen_library(onednn: bool) -> str:
    """``onednn`` or ``blas``: ``MANNTK_PRODUCTS`` when set, else oneDNN where torch's BLAS is
    MKL, the CPU is not Intel's (``vendor_id`` in ``/proc/cpuinfo``) and oneDNN can be
    reached (``onednn``).

    Raises:
        ValueError: ``MANNTK_PRODUCTS`` names neither library, or asks for oneDNN where it
            cannot be reached.
    """
    forced = os.environ.get(ENVIRONMENT)
    if forced:
        if forced not in CHOICES:
            raise ValueError(f"{ENVIRONMENT}={forced!r}: expected one of {', '.join(CHOICES)}")
        if forced == "onednn" and not onednn:
            raise ValueError(f"{ENVIRONMENT}=onednn, but this torch ({torch.__version__}) offers the kernels no oneDNN matmul")
        return forced
    mkl = torch.backends.mkl.is_available()
    vendor = cpu_info("vendor_id")
    return "onednn" if mkl and vendor is not None and vendor != "GenuineIntel" and onednn else "blas"


def apply(kernels: Any) -> None:
    """Tell the loaded kernels (``torch.ops.manntk_armin_fused``) the chosen library."""
    kernels.set_onednn_products(chosen_library(onednn_available(kernels)) == "onednn")


@contextmanager
def using(kernels: Any, library: str) -> Iterator[None]:
    """Run the block with the loaded kernels' (``torch.ops.manntk_armin_fused``) products on
    ``library`` (``blas`` or ``onednn``), then restore the choice before it: for tests and
    measurements that compare the two."""
    if library not in CHOICES:
        raise ValueError(f"library must be one of {', '.join(CHOICES)}, got {library!r}")
    if library == "onednn" and not onednn_available(kernels):
        raise ValueError(f"this torch ({torch.__version__}) offers the kernels no oneDNN matmul")
    before = kernels.onednn_products()
    kernels.set_onednn_products(library == "onednn")
    try:
        yield
    finally:
        kernels.set_onednn_products(before)

"""The chunk kernels' matrix products on either library (``manntk.fast.products``).

Each chunk kernel (ARMIN, AwTA and TARDIS's addressing, NTM-style) is run at sizes whose
products are large enough for oneDNN, once with its products on oneDNN and once on torch's
BLAS, and both are compared with the plain per-step path under the kernels' float32 bound
(``tests/kernel_checks.py``). The kernels count the products oneDNN ran, so a kernel that
ignored the choice would fail here.
"""

from __future__ import annotations

import pytest
import torch

import manntk
from manntk.fast import products
from tests.conftest import fused_kernels_error
from tests.kernel_checks import assert_kernel_matches, compositions

STEPS, BATCH, INPUT, HIDDEN, SLOTS, WIDTH = 6, 64, 40, 96, 8, 24
"""Sizes at which each kernel has a per-step product over 2M multiply-adds (ARMIN's W_go:
64 x 160 x 408 = 4.2M), so that oneDNN runs products into step slices and with transposed
weights, not only the weight gradients at the end."""

COMPOSITIONS = compositions(HIDDEN)


@pytest.fixture(scope="module")
def kernels():
    error = fused_kernels_error()
    if error is not None:
        pytest.skip(f"the C++ chunk kernels cannot be built here: {error}")
    from manntk.fast.armin_fused import extension

    return extension()


@pytest.fixture
def onednn(kernels):
    if not products.onednn_available(kernels):
        pytest.skip(f"this torch ({torch.__version__}) offers the kernels no oneDNN matmul")
    return kernels


def run(name: str, fast: bool, kernels=None) -> tuple[dict, int]:
    """One chunk of ``name``'s model: its output and every gradient of a loss on it, and the
    number of products oneDNN ran."""
    torch.manual_seed(0)
    model = manntk.build_model({"input_size": INPUT, "output_size": 5, "memory": {"slots": SLOTS, "width": WIDTH},
                                "fast": fast, **COMPOSITIONS[name]})
    assert (model.layers[0].chunk_kernel is not None) is fast
    x = torch.randn(BATCH, STEPS, INPUT, generator=torch.Generator().manual_seed(1), requires_grad=True)
    model.train(False)  # no Gumbel noise: the runs must see the same numbers
    before = kernels.onednn_product_count() if kernels is not None else 0
    y, _ = model(x)
    y.sin().sum().backward()
    values = {"y": y.detach(), "x.grad": x.grad}
    values.update({f"{key}.grad": p.grad for key, p in model.named_parameters()})
    return values, (kernels.onednn_product_count() - before if kernels is not None else 0)


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_each_kernel_gives_the_plain_paths_numbers_on_either_library(onednn, name):
    plain, _ = run(name, fast=False)
    for library in products.CHOICES:
        with products.using(onednn, library):
            kernel, on_onednn = run(name, fast=True, kernels=onednn)
        # on oneDNN: a product at every step forward and backward, besides the weight gradients
        assert (on_onednn > 2 * STEPS) if library == "onednn" else on_onednn == 0, f"{name} on {library}: {on_onednn} products on oneDNN"
        assert_kernel_matches(plain, kernel, torch.float32, STEPS, INPUT + 2 * HIDDEN + WIDTH)


def test_batch_one_and_float64_products_stay_on_the_blas(onednn):
    torch.manual_seed(0)
    model = manntk.build_model({"input_size": INPUT, "output_size": 5, "memory": {"slots": SLOTS, "width": WIDTH},
                                **COMPOSITIONS["armin"]})
    for batch, dtype in ((1, torch.float32), (BATCH, torch.float64)):
        x = torch.randn(batch, STEPS, INPUT, dtype=dtype)
        before = onednn.onednn_product_count()
        with products.using(onednn, "onednn"):
            model.to(dtype)(x)[0].sum().backward()
        assert onednn.onednn_product_count() == before, (batch, dtype)


@pytest.mark.parametrize(("vendor", "expected"), [("AuthenticAMD", "onednn"), ("GenuineIntel", "blas"), (None, "blas")])
def test_onednn_is_chosen_on_cpus_that_are_not_intels_where_torchs_blas_is_mkl(monkeypatch, vendor, expected):
    monkeypatch.delenv(products.ENVIRONMENT, raising=False)
    monkeypatch.setattr(products, "cpu_info", lambda field: vendor if field == "vendor_id" else None)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    assert products.chosen_library(onednn=True) == expected
    assert products.chosen_library(onednn=False) == "blas"
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    assert products.chosen_library(onednn=True) == "blas"


def test_the_environment_overrides_the_choice_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setattr(products, "cpu_info", lambda field: "AuthenticAMD")
    monkeypatch.setenv(products.ENVIRONMENT, "blas")
    assert products.chosen_library(onednn=True) == "blas"
    monkeypatch.setenv(products.ENVIRONMENT, "onednn")
    monkeypatch.setattr(products, "cpu_info", lambda field: "GenuineIntel")
    assert products.chosen_library(onednn=True) == "onednn"
    monkeypatch.setenv(products.ENVIRONMENT, "mkl")
    with pytest.raises(ValueError, match="MANNTK_PRODUCTS='mkl': expected one of blas, onednn"):
        products.chosen_library(onednn=True)
    monkeypatch.setenv(products.ENVIRONMENT, "onednn")
    with pytest.raises(ValueError, match="offers the kernels no oneDNN matmul"):
        products.chosen_library(onednn=False)


def test_using_restores_the_library_chosen_before(onednn):
    kernels = onednn
    before = kernels.onednn_products()
    with products.using(kernels, "onednn"):
        assert kernels.onednn_products()
        with products.using(kernels, "blas"):
            assert not kernels.onednn_products()
        assert kernels.onednn_products()
    assert kernels.onednn_products() == before
    with pytest.raises(ValueError, match="library must be one of"):
        with products.using(kernels, "mkl"):
            pass

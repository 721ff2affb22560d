"""The chunk kernels' matrix products on either library (``manntk.fast.products``).

Each chunk kernel (ARMIN, AwTA and TARDIS's addressing, NTM-style) is run at sizes whose
products are large enough for oneDNN, once with its products on oneDNN and once on torch's
BLAS, and both are compared with the plain per-step path under the kernels' float32 bound
(``tests/kernel_checks.py``). A profile of each run says which library did the products, so
a kernel that ignored the choice would fail here.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import manntk
from manntk.fast import products
from tests.conftest import fused_kernels_error
from tests.kernel_checks import assert_kernel_matches

STEPS, BATCH, INPUT, HIDDEN, SLOTS, WIDTH = 6, 32, 40, 96, 8, 24
ONEDNN_OP = "mkldnn::_linear_pointwise"

COMPOSITIONS = {
    "armin": {"cell": {"name": "armin", "hidden_size": HIDDEN}, "addressing": {"name": "auto"}, "write": {"name": "overwrite"}},
    "awta": {"cell": {"name": "armin", "hidden_size": HIDDEN}, "addressing": {"name": "tardis"}, "write": {"name": "overwrite"}},
    "tardis": {"cell": {"name": "tardis", "hidden_size": HIDDEN}, "addressing": {"name": "tardis"}, "write": {"name": "overwrite"}},
    "ntm": {"cell": {"name": "lstm", "hidden_size": HIDDEN}, "addressing": {"name": "ntm"}, "write": {"name": "erase_add"}},
}


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    error = fused_kernels_error()
    if error is not None:
        pytest.skip(f"the C++ chunk kernels cannot be built here: {error}")


def run(name: str, fast: bool) -> tuple[dict, list[str]]:
    """One chunk of ``name``'s model: its output and every gradient of a loss on it, and the
    operators the run called."""
    torch.manual_seed(0)
    model = manntk.build_model({"input_size": INPUT, "output_size": 5, "memory": {"slots": SLOTS, "width": WIDTH},
                                "fast": fast, **COMPOSITIONS[name]})
    assert (model.layers[0].chunk_kernel is not None) is fast
    x = torch.randn(BATCH, STEPS, INPUT, generator=torch.Generator().manual_seed(1), requires_grad=True)
    model.train(False)  # no Gumbel noise: the runs must see the same numbers
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        y, _ = model(x)
        y.sin().sum().backward()
    values = {"y": y.detach(), "x.grad": x.grad}
    values.update({f"{key}.grad": p.grad for key, p in model.named_parameters()})
    return values, [event.key for event in profiler.key_averages()]


@pytest.mark.skipif(not products.onednn_available(), reason="this torch has no oneDNN inner product")
@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_each_kernel_gives_the_plain_paths_numbers_on_either_library(name):
    plain, _ = run(name, fast=False)
    for library in products.CHOICES:
        with products.using(library):
            kernel, operators = run(name, fast=True)
        assert (ONEDNN_OP in operators) is (library == "onednn"), f"{name} on {library}: operators {operators}"
        assert_kernel_matches(plain, kernel, torch.float32, STEPS, INPUT + 2 * HIDDEN + WIDTH)


@pytest.mark.skipif(not products.onednn_available(), reason="this torch has no oneDNN inner product")
def test_batch_one_and_float64_products_stay_on_the_blas():
    torch.manual_seed(0)
    model = manntk.build_model({"input_size": INPUT, "output_size": 5, "memory": {"slots": SLOTS, "width": WIDTH},
                                **COMPOSITIONS["armin"]})
    for batch, dtype in ((1, torch.float32), (BATCH, torch.float64)):
        x = torch.randn(batch, STEPS, INPUT, dtype=dtype)
        with products.using("onednn"), profile(activities=[ProfilerActivity.CPU]) as profiler:
            model.to(dtype)(x)[0].sum().backward()
        assert ONEDNN_OP not in [event.key for event in profiler.key_averages()], (batch, dtype)


@pytest.mark.parametrize(("vendor", "expected"), [("AuthenticAMD", "onednn"), ("GenuineIntel", "blas"), (None, "blas")])
def test_onednn_is_chosen_on_cpus_that_are_not_intels_where_torchs_blas_is_mkl(monkeypatch, vendor, expected):
    monkeypatch.delenv(products.ENVIRONMENT, raising=False)
    monkeypatch.setattr(products, "cpu_info", lambda field: vendor if field == "vendor_id" else None)
    monkeypatch.setattr(products, "onednn_available", lambda: True)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    assert products.chosen_library() == expected
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    assert products.chosen_library() == "blas"


def test_the_environment_overrides_the_choice_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setattr(products, "cpu_info", lambda field: "AuthenticAMD")
    monkeypatch.setattr(products, "onednn_available", lambda: True)
    monkeypatch.setenv(products.ENVIRONMENT, "blas")
    assert products.chosen_library() == "blas"
    monkeypatch.setenv(products.ENVIRONMENT, "mkl")
    with pytest.raises(ValueError, match="MANNTK_PRODUCTS='mkl': expected one of blas, onednn"):
        products.chosen_library()
    monkeypatch.setattr(products, "onednn_available", lambda: False)
    monkeypatch.setenv(products.ENVIRONMENT, "onednn")
    with pytest.raises(ValueError, match="no oneDNN inner product"):
        products.chosen_library()


def test_using_restores_the_library_chosen_before():
    kernels = pytest.importorskip("manntk.fast.armin_fused").extension()
    before = kernels.onednn_products()
    with products.using("onednn"):
        assert kernels.onednn_products()
        with products.using("blas"):
            assert not kernels.onednn_products()
        assert kernels.onednn_products()
    assert kernels.onednn_products() == before
    with pytest.raises(ValueError, match="library must be one of"):
        with products.using("mkl"):
            pass

"""The fused ARMIN cell (``fused: true``) against the eager cell it replaces, and gradcheck."""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path

import pytest
import torch

import manntk
from manntk.cells.armin import ArminConfig
from manntk.fast.recurrent import _MKL_PACKING, RecurrentWeight
from manntk.trace import tracing
from tests.conftest import fused_kernels_error, model_mapping, soften

EPS = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    error = fused_kernels_error()
    if error is not None:
        pytest.skip(f"the fused ARMIN kernels cannot be built here: {error}")


def pair(cell_options: dict, width: int = 4, hard: bool = False):
    """The same ARMIN model, eager and fused, with equal weights (both on the per-step path:
    ``fast: false``, not the chunk kernel)."""
    mapping = model_mapping("armin", width=width, fast=False)
    mapping["cell"].update(cell_options)
    if not hard:
        mapping = soften(mapping)
    eager = manntk.build_model(mapping)
    fused = manntk.build_model({**mapping, "cell": {**mapping["cell"], "fused": True}})
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def run(model, x, seed=1):
    torch.manual_seed(seed)
    model.zero_grad()
    y, _ = model(x)
    y.square().sum().backward()
    return y.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "options, width, hard",
    [
        ({}, 4, False),
        ({"squash_state": True, "forget_bias": 1.0}, 4, False),
        ({"read_output": False}, 7, False),  # d_r > d_h, no o_r gate
        ({}, 3, True),  # straight-through hard reads
    ],
)
def test_fused_cell_gives_the_eager_outputs_and_gradients(options, width, hard):
    eager, fused = pair(options, width, hard)
    x = torch.randn(3, 9, 3)
    assert_same_numbers(run(fused, x), run(eager, x), x, eager)


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_same_numbers(fused: tuple, eager: tuple, x: torch.Tensor, model: torch.nn.Module) -> None:
    """``run``'s outputs and gradients of the fused model equal the eager model's, to float32
    rounding (the kernels' vectorised exp and tanh and both paths' summation orders differ
    between CPUs): a step's products sum ``terms`` terms, an output carries the roundings of
    T steps and a weight gradient sums B * T steps' contributions. Allow that many roundings
    (eps) of the largest magnitude: at least 99 eps for the outputs and 297 for the gradients
    here, where an AMD EPYC measured under 3 and 27 over 40 seeds (a bug is off by O(1))."""
    (y_fused, g_fused), (y_eager, g_eager) = fused, eager
    B, T = x.shape[:2]
    terms = max(w.shape[1] for w in model.parameters() if w.dim() == 2)
    torch.testing.assert_close(y_fused, y_eager, rtol=0, atol=T * terms * EPS * y_eager.abs().max().item())
    assert g_fused.keys() == g_eager.keys()
    for name in g_eager:
        bound = B * T * terms * EPS * g_eager[name].abs().max().item()
        torch.testing.assert_close(g_fused[name], g_eager[name], rtol=0, atol=bound, msg=lambda m, name=name: f"{name}: {m}")


def test_fused_cell_splits_a_batch_over_threads_like_the_eager_cell():
    """The kernels hand rows to threads in blocks of 16: a batch of 40 runs in three blocks."""
    eager, fused = pair({"squash_state": True}, width=5)
    x = torch.randn(40, 7, 3)
    with torch_threads(2):
        assert_same_numbers(run(fused, x), run(eager, x), x, eager)


@pytest.mark.skipif(not _MKL_PACKING, reason="this PyTorch has no MKL packed sgemm (torch.ops.mkl._mkl_linear)")
def test_fused_cell_on_columns_packed_for_mkl_gives_the_eager_numbers(monkeypatch):
    """Packing (forward, and the backward's columns with two threads) at toy sizes: the
    fused model runs with the thresholds lowered so that its small weights and batch take
    the packed path; the eager model, run first, takes the plain products."""
    import manntk.fast.recurrent as recurrent

    eager, fused = pair({"squash_state": True}, width=5)
    x = torch.randn(4, 6, 3)
    with torch_threads(2):
        expected = run(eager, x)
        monkeypatch.setattr(recurrent, "SUM_IN_PLACE_FROM", 1)
        monkeypatch.setattr(recurrent, "PACK_FROM_BATCH", 4)
        packed = []
        joined_product, gradient_product = recurrent.RecurrentWeight.joined_product, recurrent.RecurrentWeight.gradient_product

        def spy(product):
            def wrapped(self, *args, **kwargs):
                result = product(self, *args, **kwargs)
                packed.append((product.__name__, self._packed is not None, self._packed_columns is not None))
                return result
            return wrapped

        monkeypatch.setattr(recurrent.RecurrentWeight, "joined_product", spy(joined_product))
        monkeypatch.setattr(recurrent.RecurrentWeight, "gradient_product", spy(gradient_product))
        assert_same_numbers(run(fused, x), expected, x, eager)
    assert {call for call in packed if call[0] == "joined_product"} == {("joined_product", True, False)}
    assert ("gradient_product", True, True) in packed  # with two threads the backward packs the columns too


def test_fused_cell_in_evaluation_and_under_tracing_records_the_gates():
    eager, fused = pair({}, hard=True)
    eager.eval()
    fused.eval()
    x = torch.randn(2, 6, 3)
    with torch.no_grad(), tracing() as trace_eager:
        y_eager, _ = eager(x)
    with torch.no_grad(), tracing() as trace_fused:
        y_fused, _ = fused(x)
    torch.testing.assert_close(y_fused, y_eager)
    for name in ("layer0.g_h", "layer0.g_r", "layer0.o_r"):
        torch.testing.assert_close(trace_fused[name], trace_eager[name])


@pytest.mark.parametrize("sum_in_place", [False, True])
@pytest.mark.parametrize("squash, read_output", [(False, True), (True, False)])
def test_fused_step_gradcheck_float64(sum_in_place, squash, read_output):
    from manntk.fast.armin_fused import fused_step

    B, d_x, d_h, d_r = 2, 2, 3, 4
    gates = 4 * d_h + (d_r if read_output else 0)
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64, requires_grad=True)  # noqa: E731
    w_ig, w_go = make(d_h + d_r, d_x + d_h + d_r), make(gates, d_x + d_h + d_r)
    b_ig, b_go = make(d_h + d_r), make(gates)
    x, h, r = make(B, d_x), make(B, d_h), make(B, d_r)

    def two_steps(w_ig, w_go, b_ig, b_go, x, h, r):
        ig = RecurrentWeight(w_ig, 0, [d_x, d_h, d_r], sum_in_place=sum_in_place, steps=2)
        go = RecurrentWeight(w_go, 0, [d_x, d_h, d_r], sum_in_place=sum_in_place, steps=2)
        out, h1, _, _ = fused_step(ig, go, b_ig, b_go, 0, x, h, r, 0.5, squash, read_output)
        out2, h2, _, _ = fused_step(ig, go, b_ig, b_go, 1, x.flip(0), h1, r * 0.5, 0.5, squash, read_output)
        return out, out2, h2

    assert torch.autograd.gradcheck(two_steps, (w_ig, w_go, b_ig, b_go, x, h, r))


def test_fused_with_layer_norm_is_refused():
    with pytest.raises(ValueError, match="fused: true does not cover layer_norm"):
        ArminConfig(hidden_size=4, layer_norm=True, fused=True)


def test_a_missing_compiler_gives_a_clear_error(monkeypatch):
    import torch.utils.cpp_extension

    from manntk.fast import armin_fused

    def no_compiler(**_):
        raise OSError("g++: command not found")

    monkeypatch.setattr(armin_fused, "_extension", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    with pytest.raises(RuntimeError, match="could not be built: g\\+\\+: command not found.*fused: false"):
        armin_fused.extension()


def test_an_unwritable_build_folder_is_named_in_the_error(monkeypatch, tmp_path):
    from manntk.fast import armin_fused

    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(blocked))
    monkeypatch.setattr(armin_fused, "_extension", None)
    with pytest.raises(RuntimeError, match=f"could not be built: .*{re.escape(str(blocked))}.*must be writable; TORCH_EXTENSIONS_DIR moves it"):
        armin_fused.extension()


def test_the_kernels_are_built_in_a_folder_named_by_their_source(monkeypatch, tmp_path):
    """Two checkouts of the same source share one build (torch's per-name folder rebuilt at
    every switch); another source gets its own; torch's appended flags stay out of ours."""
    import torch.utils.cpp_extension

    from manntk.fast import armin_fused

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    builds = []

    def fake_load(**options):
        options["extra_ldflags"].append("-ltorch")  # as torch's load does
        builds.append(options)
        return object()

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    names = [path.name for path in armin_fused._SOURCES]
    for checkout, text in (("one", "// v1"), ("two", "// v1"), ("three", "// v2")):
        sources = []
        for name in names:
            source = tmp_path / checkout / name
            source.parent.mkdir(exist_ok=True)
            source.write_text(f"{text} {name}")
            sources.append(source)
        monkeypatch.setattr(armin_fused, "_SOURCES", tuple(sources))
        monkeypatch.setattr(armin_fused, "_extension", None)
        armin_fused.extension()
    first, second, third = builds
    assert first["sources"] == second["sources"] and first["build_directory"] == second["build_directory"]
    assert third["build_directory"] != first["build_directory"]
    for build, text in ((first, "// v1"), (third, "// v2")):
        folder = Path(build["build_directory"])
        assert folder.parent == tmp_path / "extensions" and folder.name.startswith("manntk_armin_fused_")
        assert build["sources"] == [str(folder / name) for name in names if name.endswith(".cpp")]
        assert all((folder / name).read_text() == f"{text} {name}" for name in names)  # the header beside the sources
    assert armin_fused._LDFLAGS == ["-lmvec", "-fopenmp"]
    assert armin_fused.build_directory({name: f"// v1 {name}".encode() for name in names}) == Path(first["build_directory"])


def test_fused_step_takes_broadcast_output_gradients():
    """``out.sum().backward()`` hands the step an expanded (stride 0) output gradient."""
    from manntk.fast.armin_fused import fused_step

    w_ig, w_go = torch.randn(5, 7, requires_grad=True), torch.randn(8, 7, requires_grad=True)
    b_ig, b_go, x, h, r = torch.randn(5), torch.randn(8), torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 3)
    grads = []
    for expanded in (True, False):
        ig, go = (RecurrentWeight(w, 0, [2, 2, 3]) for w in (w_ig, w_go))
        out = fused_step(ig, go, b_ig, b_go, 0, x, h, r, 0.0, False, False)[0]
        (out.sum() if expanded else (out * torch.ones_like(out)).sum()).backward()
        grads.append([w_ig.grad, w_go.grad])
        w_ig.grad = w_go.grad = None
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_fused_steps_in_groups_give_the_per_step_weight_gradients_twice_over_two_backward_passes(monkeypatch):
    import manntk.fast.recurrent
    from manntk.fast.armin_fused import fused_step

    B, d_x, d_h, d_r, T = 3, 2, 3, 4, 7
    monkeypatch.setattr(manntk.fast.recurrent, "GROUP_BYTES", 3 * B * (4 * d_h + d_r) * 8)  # W_go: 3 + 3 + 1 steps, W_ig: 6 + 1
    generator = torch.Generator().manual_seed(3)
    make = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)  # noqa: E731
    w_ig, w_go = make(d_h + d_r, d_x + d_h + d_r), make(4 * d_h + d_r, d_x + d_h + d_r)
    b_ig, b_go, xs, h0 = make(d_h + d_r), make(4 * d_h + d_r), make(T, B, d_x), make(B, d_h)
    reads = torch.randn(T, B, d_r, generator=generator, dtype=torch.float64)

    def loss(sum_in_place: bool):
        ig, go = (RecurrentWeight(w, 0, [d_x, d_h, d_r], sum_in_place=sum_in_place, steps=T) for w in (w_ig, w_go))
        h, total = h0, 0
        for t in range(T):
            out, h, _, _ = fused_step(ig, go, b_ig, b_go, t, xs[t], h, reads[t], 0.0, False, True)
            total = total + out.sin().sum()
        return total, (ig, go)

    expected = torch.autograd.grad(loss(False)[0], (w_ig, w_go, b_ig, b_go, xs, h0))
    total, (ig, go) = loss(True)
    assert [len(w._gradient.groups.inputs) for w in (ig, go)] == [2, 3]
    total.backward(retain_graph=True)
    first = [t.grad.clone() for t in (w_ig, w_go, b_ig, b_go, xs, h0)]
    total.backward()
    for name, e, a, b in zip(("w_ig", "w_go", "b_ig", "b_go", "x", "h0"), expected, first, (w_ig.grad, w_go.grad, b_ig.grad, b_go.grad, xs.grad, h0.grad), strict=True):
        torch.testing.assert_close(a, e, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(b, 2 * e, msg=lambda m, name=name: f"{name}, second pass: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_kernels_saturate_like_torch_for_large_pre_activations(dtype):
    """Gates far in saturation (pre-activations in the thousands: an unsquashed ARMIN state
    grows) give torch's numbers, not NaN (the kernels are built with -ffast-math; a PTB run
    without layer norm diverged at step 10 before the sigmoid's argument was clamped)."""
    torch.manual_seed(0)
    eager, fused = pair({}, width=4)
    with torch.no_grad():
        for model in (eager, fused):
            for p in model.parameters():
                p.mul_(200)
    exact, single, fused = eager.double(), copy.deepcopy(eager).float(), fused.to(dtype)
    x = torch.randn(3, 6, 3, dtype=dtype) * 50
    y_exact, g_exact = run(exact, x.double())
    y_single, g_single = run(single, x.float())
    y_fused, g_fused = run(fused, x)
    assert torch.isfinite(y_fused).all() and all(torch.isfinite(g).all() for g in g_fused.values())
    # Judged by the arithmetic, not by another CPU's last bits (the kernels are vectorised,
    # so their exp and tanh round differently on different CPUs):
    # - Outputs. With pre-activations near 1e4, one rounding of a pre-activation is ~1e4 eps;
    #   a gate that happens to sit in its linear range passes that on and the head amplifies
    #   it. How much depends on the inputs (the problem's condition), and torch's own float32
    #   path measures it: its distance from float64, in units of float32's eps. The fused
    #   kernels round elsewhere: an independent draw of the same size, whose largest error
    #   over the outputs can exceed torch's several times (up to 3.6x over seeds 0-59 on an
    #   AMD EPYC): allow eight times that, plus a few ulp of the outputs' magnitude where
    #   torch's float32 happens to be exact.
    # - Gradients, in addition: a saturated gate's derivative, s (1 - s) or 1 - tanh^2, is 0
    #   in exact arithmetic but anything in [0, eps] from a rounded s or tanh, and each
    #   rounding is scaled by the backward pass through one step's weights (at most their
    #   largest absolute row or column sum) and summed over the B * T steps a weight gradient
    #   gathers: eps * B * T * |W| relative to the gradients' magnitude.
    # In float64 the same sensitivities times float64's eps.
    steps = x.shape[0] * x.shape[1]
    largest_weight_sum = max(max(w.abs().sum(0).max().item(), w.abs().sum(1).max().item()) for w in exact.parameters() if w.dim() == 2)
    for what, exact_, single_, fused_, saturated in (
        ("outputs", {"y": y_exact}, {"y": y_single}, {"y": y_fused}, 0),
        ("gradients", g_exact, g_single, g_fused, steps * largest_weight_sum),
    ):
        assert fused_.keys() == exact_.keys()
        sensitivity = max((single_[k].double() - exact_[k]).abs().max().item() for k in exact_) / torch.finfo(torch.float32).eps
        magnitude = max(exact_[k].abs().max().item() for k in exact_)
        bound = (8 * sensitivity + (16 + saturated) * magnitude) * torch.finfo(dtype).eps
        for name in exact_:
            error = (fused_[name].double() - exact_[name]).abs().max().item()
            assert error <= bound, f"{what}, {name}: fused {error:.3g} from float64; bound {bound:.3g} (sensitivity {sensitivity:.3g})"

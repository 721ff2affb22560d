"""The ARMIN cell step as one autograd node with C++ elementwise kernels (CPU, ``fused: true``).

The eager cell (``manntk.cells.armin``) runs about 20 PyTorch operations per step forward
and twice as many autograd nodes backward; between its two matrix products everything is
elementwise. Here the step is two matrix products and two C++ passes forward, and two
products, two passes and the weight-gradient products backward, with a hand-written
backward (``armin_fused.cpp``). The numbers are those of the eager cell up to float
rounding; ``tests/test_armin_fused.py`` checks outputs and gradients against it and
gradchecks the node in float64.

The extension is compiled on first use with the system's C++ compiler
(``torch.utils.cpp_extension``; tens of seconds the first time, then cached under torch's
extensions folder, ``~/.cache/torch_extensions``, in a folder named by the source's
content: ``build_directory``), for the CPU it runs on (``-march=native``; ``-ffast-math`` and
glibc's ``libmvec`` vectorize ``exp`` and ``tanh``), with OpenMP so that the kernels'
``at::parallel_for`` spreads a batch over torch's threads (without ``-fopenmp`` it ran on
one). Layer norm is refused; under
autocast and on CUDA the cell takes its eager path.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from manntk.fast.machine import cpu_info
from manntk.fast.recurrent import RecurrentWeight
from manntk.trace import is_tracing

_SOURCES = tuple(Path(__file__).with_name(name) for name in (
    "armin_rows.h", "products.h", "workspace.h", "armin_fused.cpp", "armin_sequence.cpp", "ntm_sequence.cpp", "tardis_sequence.cpp"))
"""The extension's files: the row kernels, the matrix products and the reused buffers (headers), the four sets of operators (the
fused ARMIN step, the ARMIN chunk, the NTM-style chunk, the TARDIS-addressing chunk),
built into one library (``torch.ops.manntk_armin_fused``)."""
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
_LDFLAGS = ["-lmvec", "-fopenmp"]
_extension: Any = None  # torch.ops.manntk_armin_fused, once built and loaded


def build_directory(sources: dict[str, bytes]) -> Path:
    """The folder the kernels are built in: one per source text (``sources``: file name ->
    content), compiler flags, torch
    installation, Python version and CPU, under torch's extensions root
    (``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``).

    Named by content, not by the checkout: torch's own folder is one per extension name,
    and ninja rebuilds there whenever the source's path or torch's include paths change,
    ~30 s each time a user switches between clones or virtual environments. The source is
    copied into this folder and built from there, so every checkout of the same file with
    the same torch finds the same build. The CPU's feature flags are part of the key
    because the build targets the CPU it runs on (``-march=native``): a home folder shared
    by different machines gets one build per kind of CPU.
    """
    key = hashlib.sha256()
    for name, text in sorted(sources.items()):
        key.update(f"{name}\0".encode() + text + b"\0")
    for part in (" ".join(_CFLAGS + _LDFLAGS), torch.__version__, str(Path(torch.__file__).parent), sys.version, cpu_info("flags") or ""):
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    return _extensions_root() / f"manntk_armin_fused_{key.hexdigest()[:16]}"


def _extensions_root() -> Path:
    """torch's extensions root: ``$TORCH_EXTENSIONS_DIR``, else its default (``~/.cache/torch_extensions``)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def _sources_in(folder: Path, sources: dict[str, bytes]) -> list[Path]:
    """``sources`` (file name -> content) copied into ``folder``, each written to a temporary
    name and renamed, so that processes starting together never build from a half-written
    file; returns the copies of the ``.cpp`` files (the header is included by them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        copy = folder / name
        if not copy.exists() or copy.read_bytes() != text:
            partial = folder / f".{name}.{os.getpid()}.tmp"
            partial.write_bytes(text)
            partial.replace(copy)
    return [folder / name for name in sources if name.endswith(".cpp")]


def extension() -> Any:
    """The compiled kernels (``torch.ops.manntk_armin_fused``), built and loaded on the first
    call (in ``build_directory``).

    Raises:
        RuntimeError: when the extension cannot be built (no C++ compiler or ninja), with
            the compiler's message.
    """
    global _extension
    if _extension is None:
        from torch.utils.cpp_extension import load

        try:
            sources = {path.name: path.read_bytes() for path in _SOURCES}
            folder = build_directory(sources)
            load(
                name="manntk_armin_fused",
                sources=[str(path) for path in _sources_in(folder, sources)],
                extra_cflags=list(_CFLAGS),  # copies: torch appends its own flags to these lists
                extra_ldflags=list(_LDFLAGS),
                build_directory=str(folder),
                is_python_module=False,  # the library registers operators (torch.ops.manntk_armin_fused)
                verbose=False,
            )
            from manntk.fast import products

            products.apply(torch.ops.manntk_armin_fused)
            _extension = torch.ops.manntk_armin_fused
        except (OSError, RuntimeError, ImportError) as error:
            raise RuntimeError(
                f"model.cell.fused: the C++ kernels of the fused ARMIN cell ({', '.join(path.name for path in _SOURCES)}) could not be built: "
                f"{error}. Install a C++ compiler and ninja (the build folder, {_extensions_root()}, must be "
                "writable; TORCH_EXTENSIONS_DIR moves it), or set fused: false."
            ) from error
    return _extension


DTYPES = (torch.float32, torch.float64)
"""dtypes the kernels are built for."""

_built: bool | None = None


def kernels_available() -> bool:
    """Whether the kernels are built (on the first call: built now); when they cannot be
    (no C++ compiler), one warning says why and the plain path runs."""
    global _built
    if _built is None:
        try:
            extension()
            _built = True
        except RuntimeError as error:
            import warnings

            cause = error.__cause__ or error
            warnings.warn(f"model.fast: the C++ chunk kernels could not be built ({cause}); running the plain (slower) path. "
                          "Install a C++ compiler and ninja, or set model.fast: false to run the plain path without this warning.",
                          RuntimeWarning, stacklevel=3)
            _built = False
    return _built


def release_workspace() -> int:
    """Give back the memory of the chunk kernels' kept buffers that no chunk holds, and return
    its bytes (0 when the kernels were never loaded).

    The kernels keep their large intermediate buffers (1 MiB and up: the inputs and gate
    activations of every step, their gradients) from one chunk to the next instead of
    taking fresh pages each time (``workspace.h``), so the memory of the last chunk's
    buffers stays with the process after training: hundreds of MB for ARMIN 500 at batch
    128. Call this when a long-lived process is done training.
    """
    return int(_extension.release_workspace()) if _extension is not None else 0


def products_library() -> str | None:
    """The library the loaded kernels send their large float32 products to, ``onednn`` or
    ``blas`` (``manntk.fast.products``), or ``None`` when no kernel has been loaded."""
    if _extension is None:
        return None
    return "onednn" if _extension.onednn_products() else "blas"


def chunk_runs_on(x: Tensor) -> bool:
    """Whether a chunk kernel may run a chunk ``x``: a CPU float32/float64 input outside
    ``torch.compile``, autocast and tracing (manntk's, ``torch.jit``'s), which see or
    change every step. Each kernel adds what its parts need (``applies``)."""
    return (
        x.device.type == "cpu"
        and x.dtype in DTYPES
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
        and not is_tracing()
    )


def kernel_runs_on(x: Tensor) -> bool:
    """Whether a C++ chunk kernel may run a chunk ``x``: [`chunk_runs_on`][manntk.fast.armin_fused.chunk_runs_on],
    with the kernels built."""
    return chunk_runs_on(x) and kernels_available()


class _FusedStep(torch.autograd.Function):
    """``(x_t, h, r, b_ig, b_go, W_ig cols, W_go cols) -> (o_t, h_t, sigmoid(ig), activations)``.

    The weights are [`RecurrentWeight`][manntk.fast.recurrent.RecurrentWeight]s over all their
    columns, blocks ``[x, h, r]``: the input columns are applied at every step, in the same
    product as the recurrent ones, instead of once per chunk. The columns come in as inputs
    so that autograd routes their gradient to the weights; the products themselves use the
    ``RecurrentWeight`` layouts (``joined_product`` forward, ``gradient_product`` backward).
    """

    @staticmethod
    def forward(ctx: Any, weights: tuple[RecurrentWeight, RecurrentWeight], options: tuple[float, bool, bool], t: int,
                x: Tensor, h: Tensor, r: Tensor, ig_bias: Tensor, go_bias: Tensor, ig_cols: Tensor, go_cols: Tensor) -> tuple[Tensor, ...]:
        kernels = extension()
        forget_bias, squash, read_output = options
        ig_weight, go_weight = weights
        h, r = _row_major(h), _row_major(r)
        x_hr = _joined(ig_weight, t, (x, h, r))
        x_gated = go_weight.step_inputs(t, x)
        if x_gated is None:
            sg, gated = kernels.gates_in(ig_weight.joined_product(x_hr), ig_bias, h, r)
            x_gated = torch.cat([x, gated], dim=1)
        else:  # h^g, r^g written straight into the step's slot
            x_gated[:, : x.shape[1]] = x
            sg, _ = kernels.gates_in(ig_weight.joined_product(x_hr), ig_bias, h, r, x_gated[:, x.shape[1] :])
        act, h_new, out = kernels.cell_out(go_weight.joined_product(x_gated), go_bias, h, r, forget_bias, squash, read_output)
        ctx.weights, ctx.options, ctx.t = weights, options, t
        # the joined inputs may be slots of a group buffer that later steps write to (which
        # bumps the version counter they share): kept aside from save_for_backward's checks
        ctx.joined = x_hr, x_gated
        ctx.save_for_backward(sg, act, h, r, h_new)
        ctx.mark_non_differentiable(sg, act)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for sg and act at every step
        return out, h_new, sg, act

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor | None, d_h_new: Tensor | None, _sg: None, _act: None) -> tuple[Tensor | None, ...]:
        kernels = extension()
        sg, act, h, r, h_new = ctx.saved_tensors
        x_hr, x_gated = ctx.joined
        ig_weight, go_weight = ctx.weights
        _, squash, read_output = ctx.options
        d_x = x_hr.shape[1] - sg.shape[1]
        if d_out is None:
            d_out = act.new_zeros(act.shape[0], act.shape[1] - 3 * h.shape[1])
        if d_h_new is None:
            d_h_new = torch.zeros_like(h_new)
        # the gradient of [x, h, r]: the parts that skip W_ig written into its columns, then W_ig's added
        d_x_hr = x_hr.new_empty(x_hr.shape)
        d_go, d_hr = kernels.cell_out_backward(
            _row_major(d_out), _row_major(d_h_new), act, h, r, h_new, squash, read_output,
            go_weight.step_gradient(ctx.t, act), d_x_hr[:, d_x:],
        )
        d_x_gated = go_weight.gradient_product(d_go)
        d_x_hr[:, :d_x] = d_x_gated[:, :d_x]
        d_ig = kernels.gates_in_backward(d_x_gated[:, d_x:], sg, h, r, d_hr, ig_weight.step_gradient(ctx.t, sg))
        ig_weight.gradient_product(d_ig, into=d_x_hr)
        needs = ctx.needs_input_grad
        d_ig_bias = d_ig.sum(0) if needs[6] else None
        d_go_bias = d_go.sum(0) if needs[7] else None
        d_ig_cols = _weight_gradient(ig_weight, ctx.t, x_hr, d_ig, needs[8])
        d_go_cols = _weight_gradient(go_weight, ctx.t, x_gated, d_go, needs[9])
        return None, None, None, *d_x_hr.split([d_x, h.shape[1], r.shape[1]], dim=1), d_ig_bias, d_go_bias, d_ig_cols, d_go_cols


def _row_major(tensor: Tensor) -> Tensor:
    """``tensor`` if its rows are contiguous (the kernels take rows apart), else a contiguous copy."""
    return tensor if tensor.stride(1) == 1 else tensor.contiguous()


def _joined(weight: RecurrentWeight, t: int, parts: tuple[Tensor, ...]) -> Tensor:
    """The step's inputs to ``weight`` side by side, in the weight's ``step_inputs`` when it has them."""
    slot = weight.step_inputs(t, parts[0])
    return torch.cat(parts, dim=1) if slot is None else torch.cat(parts, dim=1, out=slot)


def _weight_gradient(weight: RecurrentWeight, t: int, inputs: Tensor, grad: Tensor, needed: bool) -> Tensor | None:
    """The step's gradient of the columns, or ``None`` once added to the chunk's in-place sum."""
    if not needed:
        return None
    if weight.sum_in_place:
        weight.add_step_gradient(grad, inputs, t)
        return None
    return inputs.t().mm(grad)


def fused_step(ig: RecurrentWeight, go: RecurrentWeight, ig_bias: Tensor, go_bias: Tensor, t: int, x: Tensor, h: Tensor,
               r: Tensor, forget_bias: float, squash: bool, read_output: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step ``t`` of ARMIN: ``(o_t, h_t, [g_h, g_r], [i, f, g, o_h(, o_r)] activations)``.

    ``ig`` and ``go`` are the chunk's columns of ``W_ig`` and ``W_go``, all of them, in
    blocks ``[x, h, r]`` (made with ``steps``: the chunk's length); ``ig_bias`` and
    ``go_bias`` their biases; ``x`` the step's input.
    """
    options = (float(forget_bias), squash, read_output)
    return _FusedStep.apply((ig, go), options, t, x, h, r, ig_bias, go_bias, ig.columns, go.columns)

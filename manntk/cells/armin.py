"""The ARMIN cell (paper, eq. 3-8).

```
[g_h, g_r]          = sigmoid(W_ig [x_t, h_{t-1}, r_t] + b_ig)               (3)
h^g = g_h * h_{t-1};  r^g = g_r * r_t                                        (4, 5)
[i, f, g, o_h, o_r] = W_go [x_t, h^g, r^g] + b_go                            (6)
h_t = sigmoid(f) * h_{t-1} + sigmoid(i) * tanh(g)                            (7)
o_t = [sigmoid(o_h) * tanh(h_t), sigmoid(o_r) * tanh(r_t)]                   (8)
```

The forget path uses the ungated ``h_{t-1}``, as in the paper and the authors' code.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import attrs
import torch
from torch import Tensor, nn

from manntk.cells.common import GateNorm, project_inputs, split_input_weight, zoneout
from manntk.config import positive, probability
from manntk.context import BuildContext
from manntk.fast.armin_fused import fused_step
from manntk.fast.recurrent import RecurrentWeight
from manntk.hookspecs import hookimpl
from manntk.parts import Cell
from manntk.trace import record


@attrs.define
class ArminConfig:
    """Options of the ARMIN cell.

    Attributes:
        hidden_size: ``d_h``, the width of ``h_t``.
        forget_bias: added to the forget gate's pre-activation (paper 0, the authors'
            code 1).
        squash_state: ``h_t = tanh(f h_{t-1} + i g)``, as the authors' code.
        layer_norm: normalise each gate block's pre-activation.
        zoneout: probability that a unit of ``h`` keeps its previous value (applied after
            the output is computed).
        read_output: keep the ``r`` part of ``o_t``; ``false`` is the paper's ablation.
        fused: on the CPU, run each step as one autograd node with C++ elementwise
            kernels (``manntk.fast.armin_fused``; compiled on first use). Same numbers up
            to float rounding; not with ``layer_norm``, and CUDA or autocast runs the
            eager cell.
        recurrent_init: ``default`` (torch's uniform) or ``orthogonal``: the ``h`` columns
            of ``W_ig`` and ``W_go`` start as (blocks of) an orthogonal matrix, as the
            authors' code initialises its recurrent weights.
        learned_state: ``h_0`` is a trained parameter (starting at zero) instead of zeros,
            as the authors' code.
    """

    hidden_size: int = attrs.field(validator=positive)
    forget_bias: float = 0.0
    squash_state: bool = False
    layer_norm: bool = False
    zoneout: float = attrs.field(default=0.0, validator=probability)
    read_output: bool = True
    fused: bool = False
    recurrent_init: Literal["default", "orthogonal"] = attrs.field(default="default", validator=attrs.validators.in_(("default", "orthogonal")))
    learned_state: bool = False

    def __attrs_post_init__(self) -> None:
        if self.fused and self.layer_norm:
            raise ValueError("fused: true does not cover layer_norm (set one of them to false)")


class _Prepared(NamedTuple):
    ig_x: tuple[Tensor, ...]  # per step [B, d_h + d_r]: W_ig's x columns applied to x_t, plus b_ig
    go_x: tuple[Tensor, ...]  # per step [B, 4 d_h (+ d_r)]
    ig_hr: RecurrentWeight  # W_ig's [h, r] columns
    go_hr: RecurrentWeight  # W_go's [h^g, r^g] columns


class _FusedPrepared(NamedTuple):
    x: tuple[Tensor, ...]  # per step [B, d_i]
    ig: RecurrentWeight  # all of W_ig's columns, blocks [x, h, r]
    go: RecurrentWeight  # all of W_go's columns, blocks [x, h^g, r^g]


class ArminCell(Cell):
    """The ARMIN cell; weights named as in the paper: ``W_ig`` and ``W_go``.

    ``W_ig`` is a Linear over ``[x, h, r]`` giving ``[g_h, g_r]``; ``W_go`` is a Linear
    over ``[x, h^g, r^g]`` giving ``[i, f, g, o_h, o_r]`` (``o_r`` only with
    ``read_output``). Any ``d_r`` works, ``d_r > d_h`` included.
    """

    def __init__(self, config: ArminConfig, context: BuildContext) -> None:
        super().__init__()
        self.compiles = not config.fused  # the fused step calls C++ kernels
        d_i, d_h, d_r = context.input_size, config.hidden_size, context.width
        self.config = config
        self.input_size, self.hidden_size, self.read_size = d_i, d_h, d_r
        self.output_size = d_h + (d_r if config.read_output else 0)
        self.gate_sizes = [d_h] * 4 + ([d_r] if config.read_output else [])
        self.W_ig = nn.Linear(d_i + d_h + d_r, d_h + d_r)
        self.W_go = nn.Linear(d_i + d_h + d_r, sum(self.gate_sizes))
        self.norm_ig = GateNorm([d_h, d_r]) if config.layer_norm else nn.Identity()
        self.norm_go = GateNorm(self.gate_sizes) if config.layer_norm else nn.Identity()
        if config.recurrent_init == "orthogonal":
            with torch.no_grad():
                for linear in (self.W_ig, self.W_go):
                    linear.weight[:, d_i : d_i + d_h] = nn.init.orthogonal_(torch.empty(linear.out_features, d_h))
        if config.learned_state:
            self.h_0 = nn.Parameter(torch.zeros(d_h))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        if self.config.learned_state:
            return {"h": self.h_0.to(device=device, dtype=dtype).expand(batch_size, -1).clone()}
        return {"h": torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)}

    def prepare(self, x: Tensor) -> _Prepared | _FusedPrepared:
        if self.config.fused and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            # the fused step applies the input columns itself, in its per-step products:
            # K = d_i + d_h + d_r runs as fast per FLOP as K = d_h + d_r, where the chunk's
            # input projection (K = d_i) ran 20-35% slower and its bias add, bias sum and
            # gradient stack cost another 20 ms per chunk (ARMIN 500, B 128, TBPTT 50)
            sizes, steps = [self.input_size, self.hidden_size, self.read_size], x.shape[1]
            ig, go = (RecurrentWeight(linear.weight, 0, sizes, steps=steps) for linear in (self.W_ig, self.W_go))
            return _FusedPrepared(x.unbind(1), ig, go)
        sizes = [self.hidden_size, self.read_size]
        ig_x, ig_hr = split_input_weight(self.W_ig, self.input_size, sizes)
        go_x, go_hr = split_input_weight(self.W_go, self.input_size, sizes)
        return _Prepared(project_inputs(x, ig_x, self.W_ig.bias), project_inputs(x, go_x, self.W_go.bias), ig_hr, go_hr)

    def step(self, prepared: _Prepared | _FusedPrepared, t: int, state: dict[str, Tensor], read: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = state["h"]
        if isinstance(prepared, _FusedPrepared):
            return self._fused_step(prepared, t, h, read)
        gates_ig = self.norm_ig(prepared.ig_hr(prepared.ig_x[t], h, read))
        g_h, g_r = torch.sigmoid(gates_ig).split([self.hidden_size, self.read_size], dim=1)
        gates_go = self.norm_go(prepared.go_hr(prepared.go_x[t], g_h * h, g_r * read))
        i, f, g, o_h, *o_r = gates_go.split(self.gate_sizes, dim=1)
        if self.config.forget_bias:
            f = f + self.config.forget_bias
        h_new = torch.sigmoid(f) * h + torch.sigmoid(i) * torch.tanh(g)
        if self.config.squash_state:
            h_new = torch.tanh(h_new)
        output = torch.sigmoid(o_h) * torch.tanh(h_new)
        record("g_h", g_h)
        record("g_r", g_r)
        if o_r:
            gate_r = torch.sigmoid(o_r[0])
            record("o_r", gate_r)
            output = torch.cat([output, gate_r * torch.tanh(read)], dim=1)
        return output, {"h": zoneout(h, h_new, self.config.zoneout, self.training)}

    def _fused_step(self, prepared: _FusedPrepared, t: int, h: Tensor, read: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        config, d_h = self.config, self.hidden_size
        output, h_new, gates_ig, gates_go = fused_step(
            prepared.ig, prepared.go, self.W_ig.bias, self.W_go.bias, t, prepared.x[t], h, read,
            config.forget_bias, config.squash_state, config.read_output,
        )
        record("g_h", lambda: gates_ig[:, :d_h])
        record("g_r", lambda: gates_ig[:, d_h:])
        if config.read_output:
            record("o_r", lambda: gates_go[:, 4 * d_h:])
        return output, {"h": zoneout(h, h_new, config.zoneout, self.training)}


@hookimpl
def register_cells(register):
    register("armin", ArminCell, ArminConfig)

"""The DNC's memory formulas (Graves et al., 2016, methods), as plain differentiable functions.

Shapes: ``B`` batch, ``N`` slots, ``W`` slot width. Weights are ``[B, N]``; the link
matrix is ``[B, N, N]`` with ``L[b, i, j]`` the degree to which slot ``i`` was written
right after slot ``j``.

```
usage       u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * prod_r (1 - f_r w^r_{r,t-1})
allocation  a[phi_j] = (1 - u[phi_j]) * prod_{l<j} u[phi_l]      phi: slots by ascending usage
content     c = softmax(beta * cos(k, M_i)),  beta = oneplus(.) = 1 + softplus(.)
write       w^w = g^w (g^a a + (1 - g^a) c^w)
memory      M_t = M_{t-1} * (1 - w^w e^T) + w^w v^T
precedence  p_t = (1 - sum_i w^w_i) p_{t-1} + w^w
link        L_t[i, j] = (1 - w^w_i - w^w_j) L_{t-1}[i, j] + w^w_i p_{t-1}[j],   L_t[i, i] = 0
reads       f = L_t w^r_{t-1} (forward),  b = L_t^T w^r_{t-1} (backward)
            w^r = pi_b b + pi_c c^r + pi_f f,   pi = softmax(.) over the three read modes
```

Gradient through the allocation: the sort is piecewise constant in the usage. Between
ties the permutation ``phi`` is fixed and ``a`` is a smooth product of usages, which is
the gradient autograd computes (``torch.sort`` passes gradients to the sorted values
along the permutation, the scatter back passes them to the slots). At a tie the
allocation itself is continuous (swapping two equal usages gives the same weights) but
its derivative jumps; no gradient flows into the choice of the permutation, as in the
paper.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from manntk.addressing.ntm import cosine_similarity


def oneplus(x: Tensor) -> Tensor:
    """``1 + softplus(x)``: a strength in ``[1, inf)``."""
    return 1 + F.softplus(x)


def content_weights(key: Tensor, strength: Tensor, memory: Tensor, eps: float = 1e-6) -> Tensor:
    """``softmax_i(beta * cos(k, M_i))``: key ``[B, W]``, strength ``[B, 1]``, memory ``[B, N, W]`` -> ``[B, N]``."""
    return torch.softmax(strength * cosine_similarity(key, memory, eps), dim=-1)


def usage(previous_usage: Tensor, previous_write: Tensor, free_gates: Tensor, read_weights: Tensor) -> Tensor:
    """The usage after freeing by the reads.

    Args:
        previous_usage: ``u_{t-1}`` ``[B, N]``.
        previous_write: ``w^w_{t-1}`` ``[B, N]``.
        free_gates: ``f`` ``[B, R]``, in ``[0, 1]``.
        read_weights: ``w^r_{t-1}`` ``[B, R, N]`` (or ``[B, N]`` for one read head).

    Returns:
        ``u_t`` ``[B, N]``.
    """
    if read_weights.dim() == 2:
        read_weights = read_weights.unsqueeze(1)
    retention = torch.prod(1 - free_gates.unsqueeze(-1) * read_weights, dim=1)  # psi_t [B, N]
    return (previous_usage + previous_write - previous_usage * previous_write) * retention


def allocation(usage: Tensor) -> Tensor:
    """The allocation weights: the least-used slots first.

    ``a[phi_j] = (1 - u[phi_j]) prod_{l<j} u[phi_l]`` with ``phi`` the slots sorted by
    ascending usage (a stable sort: among equal usages the lower slot comes first).
    See the module for the gradient.

    Args:
        usage: ``u_t`` ``[B, N]`` in ``[0, 1]``.

    Returns:
        ``a_t`` ``[B, N]``, non-negative, summing to at most one.
    """
    sorted_usage, order = torch.sort(usage, dim=-1, stable=True)
    before = torch.cumprod(torch.cat([torch.ones_like(sorted_usage[..., :1]), sorted_usage[..., :-1]], dim=-1), dim=-1)
    sorted_allocation = (1 - sorted_usage) * before
    return torch.zeros_like(usage).scatter(-1, order, sorted_allocation)


def write_weights(allocation: Tensor, content: Tensor, allocation_gate: Tensor, write_gate: Tensor) -> Tensor:
    """``w^w = g^w (g^a a + (1 - g^a) c^w)``; gates ``[B, 1]``, weights ``[B, N]``."""
    return write_gate * (allocation_gate * allocation + (1 - allocation_gate) * content)


def precedence(previous: Tensor, write: Tensor) -> Tensor:
    """``p_t = (1 - sum_i w^w_i) p_{t-1} + w^w``: how much each slot was the last one written."""
    return (1 - write.sum(-1, keepdim=True)) * previous + write


def link(previous_link: Tensor, write: Tensor, previous_precedence: Tensor) -> Tensor:
    """``L_t[i, j] = (1 - w_i - w_j) L_{t-1}[i, j] + w_i p_{t-1}[j]`` with a zero diagonal.

    Args:
        previous_link: ``L_{t-1}`` ``[B, N, N]``.
        write: ``w^w_t`` ``[B, N]``.
        previous_precedence: ``p_{t-1}`` ``[B, N]``.

    Returns:
        ``L_t`` ``[B, N, N]``.
    """
    w_i, w_j = write.unsqueeze(-1), write.unsqueeze(-2)
    kept = previous_link * ((1 - w_i) - w_j)
    updated = torch.baddbmm(kept, w_i, previous_precedence.unsqueeze(-2))  # + w_i p_j
    updated.diagonal(dim1=-2, dim2=-1).zero_()
    return updated


def forward_weights(link: Tensor, read_weights: Tensor) -> Tensor:
    """``f = L w^r``: the slots written right after the ones read, ``[B, N]``."""
    return torch.bmm(link, read_weights.unsqueeze(-1)).squeeze(-1)


def backward_weights(link: Tensor, read_weights: Tensor) -> Tensor:
    """``b = L^T w^r``: the slots written right before the ones read, ``[B, N]``."""
    return torch.bmm(link.transpose(1, 2), read_weights.unsqueeze(-1)).squeeze(-1)


def read_weights(backward: Tensor, content: Tensor, forward: Tensor, modes: Tensor, complete: bool = False) -> Tensor:
    """``w^r = pi_b b + pi_c c + pi_f f`` with ``modes`` ``pi`` ``[B, 3]`` (backward, content, forward).

    ``b`` and ``f`` sum to at most one (the link's rows and columns do), so the DNC's
    read weights sum to at most one. With ``complete``, the mass that ``b`` and ``f``
    miss (``1 - sum b``, ``1 - sum f``, e.g. forward from the last slot written) goes to
    the content weights, so the weights sum to one as manntk's addressing contract
    asks; where the link holds a full step the two forms agree.
    """
    pi_b, pi_c, pi_f = modes.unsqueeze(-1).unbind(1)
    weights = pi_b * backward + pi_c * content + pi_f * forward
    if complete:
        missing = pi_b * (1 - backward.sum(-1, keepdim=True)) + pi_f * (1 - forward.sum(-1, keepdim=True))
        weights = weights + missing * content
    return weights


def estimated_write_weights(memory: Tensor, previous_memory: Tensor, tolerance: float, eps: float = 1e-6) -> Tensor:
    """Where the last write went, seen from the memory alone: ``d_i / (sum_j d_j + tolerance)``.

    ``d_i = ||M_i - M'_i||`` is how much slot ``i`` changed (computed as
    ``sqrt(sum^2 + eps^2) - eps``: zero, with a zero gradient, for an unchanged slot).
    The DNC write changes slot ``i`` by ``w^w_i (v - e * M'_i)``, so this is the write
    weights exactly when the write is one-hot and ``||v - e * M'_i|| >> tolerance``; for
    soft writes each slot's share is scaled by its own ``||v - e * M'_i||``. Writes much
    weaker than ``tolerance`` barely count.

    Args:
        memory: ``M_t`` ``[B, N, W]``.
        previous_memory: ``M_{t-1}`` ``[B, N, W]``.
        tolerance: the change that counts as half a write.
        eps: smooths the norm at zero.

    Returns:
        ``[B, N]``, non-negative, summing to less than one.
    """
    change = (memory - previous_memory).square().sum(-1)
    distance = (change + eps * eps).sqrt() - eps
    return distance / (distance.sum(-1, keepdim=True) + tolerance)

"""Each DNC formula against a computation by hand (plain Python numbers, tiny sizes)."""

from __future__ import annotations

import math

import pytest
import torch

from manntk_dnc import functional as F


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_usage_by_hand():
    # u = (u' + w' - u' w') * (1 - f w^r)
    # slot 0: (0.5 + 0.5 - 0.25) * (1 - 0.5 * 1.0) = 0.375;  slot 1: (0 + 1 - 0) * (1 - 0.5 * 0) = 1
    usage = F.usage(t([[0.5, 0.0]]), t([[0.5, 1.0]]), t([[0.5]]), t([[1.0, 0.0]]))
    torch.testing.assert_close(usage, t([[0.375, 1.0]]))


def test_usage_with_two_read_heads_multiplies_the_retentions():
    # psi = (1 - 0.5 * 0.4) (1 - 1.0 * 0.5) = 0.8 * 0.5 = 0.4 for slot 0; slot 1: (1 - 0.5*0.6)(1 - 0.5) = 0.35
    usage = F.usage(t([[1.0, 1.0]]), t([[0.0, 0.0]]), t([[0.5, 1.0]]), t([[[0.4, 0.6], [0.5, 0.5]]]))
    torch.testing.assert_close(usage, t([[0.4, 0.35]]))


def test_allocation_with_a_hand_sorted_usage():
    # usage 0.4, 0.1, 0.9, 0.2 -> ascending order phi = slots 1, 3, 0, 2
    # a[1] = (1 - 0.1)                          = 0.9
    # a[3] = (1 - 0.2) * 0.1                    = 0.08
    # a[0] = (1 - 0.4) * 0.1 * 0.2              = 0.012
    # a[2] = (1 - 0.9) * 0.1 * 0.2 * 0.4        = 0.0008
    allocation = F.allocation(t([[0.4, 0.1, 0.9, 0.2]]))
    torch.testing.assert_close(allocation, t([[0.012, 0.9, 0.0008, 0.08]]))


def test_allocation_of_an_empty_memory_takes_the_first_slot_and_a_full_one_nothing():
    allocation = F.allocation(t([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(allocation, t([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_allocation_sums_to_one_minus_the_product_of_usages():
    usage = torch.rand(3, 7, dtype=torch.float64)
    # sum_j (1 - u_j) prod_{l<j} u_l telescopes to 1 - prod_j u_j
    torch.testing.assert_close(F.allocation(usage).sum(-1), 1 - usage.prod(-1))


def test_content_weights_by_hand():
    key = t([[1.0, 0.0]])
    memory = t([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])
    strength = t([[2.0]])
    cosines = [1.0, 0.0, 1 / math.sqrt(2)]
    exps = [math.exp(2.0 * c) for c in cosines]
    expected = [e / sum(exps) for e in exps]
    torch.testing.assert_close(F.content_weights(key, strength, memory, eps=1e-12), t([expected]))


def test_oneplus():
    torch.testing.assert_close(F.oneplus(t([0.0])), t([1 + math.log(2)]))


def test_write_weights_by_hand():
    # g^w (g^a a + (1 - g^a) c) = 0.5 * (0.25 * [1, 0] + 0.75 * [0.2, 0.8]) = [0.2, 0.3]
    weights = F.write_weights(t([[1.0, 0.0]]), t([[0.2, 0.8]]), t([[0.25]]), t([[0.5]]))
    torch.testing.assert_close(weights, t([[0.2, 0.3]]))


def test_precedence_by_hand():
    # sum w = 0.7: p = 0.3 * p' + w
    precedence = F.precedence(t([[0.2, 0.3, 0.5]]), t([[0.1, 0.6, 0.0]]))
    torch.testing.assert_close(precedence, t([[0.16, 0.69, 0.15]]))


def link_by_hand(previous, write, precedence):
    n = len(write)
    return [
        [0.0 if i == j else (1 - write[i] - write[j]) * previous[i][j] + write[i] * precedence[j] for j in range(n)]
        for i in range(n)
    ]


def test_link_update_by_hand_with_a_zero_diagonal():
    previous = [[0.0, 0.2, 0.1], [0.3, 0.0, 0.4], [0.5, 0.1, 0.0]]
    write, precedence = [0.1, 0.6, 0.2], [0.3, 0.2, 0.5]
    link = F.link(t([previous]), t([write]), t([precedence]))
    torch.testing.assert_close(link, t([link_by_hand(previous, write, precedence)]))
    assert torch.all(link.diagonal(dim1=1, dim2=2) == 0)
    # one entry written out: L[1, 0] = (1 - 0.6 - 0.1) * 0.3 + 0.6 * 0.3 = 0.09 + 0.18
    assert link[0, 1, 0].item() == pytest.approx(0.27)


def test_forward_and_backward_reads_by_hand():
    link = [[0.0, 0.2, 0.1], [0.7, 0.0, 0.4], [0.3, 0.8, 0.0]]
    read = [0.5, 0.25, 0.25]
    forward = [sum(link[i][j] * read[j] for j in range(3)) for i in range(3)]
    backward = [sum(link[j][i] * read[j] for j in range(3)) for i in range(3)]
    torch.testing.assert_close(F.forward_weights(t([link]), t([read])), t([forward]))
    torch.testing.assert_close(F.backward_weights(t([link]), t([read])), t([backward]))


def test_sharp_writes_link_slots_in_write_order():
    """Writes to slots 2, then 0, then 3: forward from 2 reaches 0, from 0 reaches 3; backward the other way."""
    n = 4
    link, precedence = torch.zeros(1, n, n, dtype=torch.float64), torch.zeros(1, n, dtype=torch.float64)
    for slot in (2, 0, 3):
        write = torch.nn.functional.one_hot(torch.tensor([slot]), n).double()
        link = F.link(link, write, precedence)
        precedence = F.precedence(precedence, write)
    expected = torch.zeros(n, n, dtype=torch.float64)
    expected[0, 2] = expected[3, 0] = 1.0  # slot 0 written right after 2; slot 3 right after 0
    torch.testing.assert_close(link[0], expected)
    torch.testing.assert_close(precedence, t([[0.0, 0.0, 0.0, 1.0]]))
    read_2 = t([[0.0, 0.0, 1.0, 0.0]])
    torch.testing.assert_close(F.forward_weights(link, read_2), t([[1.0, 0.0, 0.0, 0.0]]))
    read_3 = t([[0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(F.backward_weights(link, read_3), t([[1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(F.forward_weights(link, read_3), t([[0.0, 0.0, 0.0, 0.0]]))  # nothing after the last


def test_read_weights_by_hand_and_completion():
    backward, content, forward = t([[0.0, 1.0, 0.0]]), t([[0.2, 0.3, 0.5]]), t([[0.0, 0.0, 0.0]])
    modes = t([[0.2, 0.3, 0.5]])
    # DNC: 0.2 b + 0.3 c + 0.5 f = [0.06, 0.2 + 0.09, 0.15], summing to 0.5
    plain = F.read_weights(backward, content, forward, modes)
    torch.testing.assert_close(plain, t([[0.06, 0.29, 0.15]]))
    # completed: the forward mode found nothing (1 - sum f = 1), so 0.5 more of the content weights
    completed = F.read_weights(backward, content, forward, modes, complete=True)
    torch.testing.assert_close(completed, t([[0.06 + 0.1, 0.29 + 0.15, 0.15 + 0.25]]))
    torch.testing.assert_close(completed.sum(-1), t([1.0]))


def test_estimated_write_weights_by_hand():
    previous = torch.zeros(1, 3, 2, dtype=torch.float64)
    memory = t([[[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]])  # slot 1 moved by 5, slot 2 by 1
    estimate = F.estimated_write_weights(memory, previous, tolerance=4.0, eps=1e-9)
    torch.testing.assert_close(estimate, t([[0.0, 5 / 10, 1 / 10]]))
    # one full one-hot write of a large vector into empty memory is seen almost exactly
    memory = torch.zeros(1, 3, 2, dtype=torch.float64)
    memory[0, 2] = 1000.0
    torch.testing.assert_close(F.estimated_write_weights(memory, previous, 0.1), t([[0.0, 0.0, 1.0]]), atol=1e-4, rtol=0)

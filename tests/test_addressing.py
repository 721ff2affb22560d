"""Addressing mechanisms against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from manntk.addressing.auto import AutoAddressing, AutoConfig
from manntk.addressing.ntm import NtmAddressing, NtmConfig, circular_shift, cosine_similarity
from manntk.addressing.tardis import TardisAddressing, TardisAddressingConfig
from manntk.context import BuildContext
from manntk.plugins import default_plugins
from manntk.sampling import TemperatureSchedule, gumbel_noise, straight_through

D_I, D_H, N, W, B = 3, 4, 5, 6, 2


def context(slots=N):
    return BuildContext(input_size=D_I, hidden_size=D_H, slots=slots, width=W, registry=default_plugins().registry)


def address_once(part, x, h, memory, state=None):
    state = part.init_state(B, "cpu", torch.float32) if state is None else state
    return part.step(part.prepare(x.unsqueeze(1)), 0, h, memory, state)


def test_auto_addressing_eval_is_argmax_of_eq_9_logits():
    part = AutoAddressing(AutoConfig(), context()).eval()
    x, h, memory = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, N, W)
    address, _ = address_once(part, x, h, memory)
    logits = torch.cat([x, h], 1) @ part.W_s.weight.t() + part.W_s.bias
    assert address.weights is None
    assert torch.equal(address.index, logits.argmax(1))


def test_auto_addressing_soft_read_is_softmax_over_temperature():
    schedule = TemperatureSchedule(start=2.0, end=2.0)
    part = AutoAddressing(AutoConfig(hard=False, temperature=schedule), context())
    x, h, memory = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, N, W)
    address, _ = address_once(part, x, h, memory)
    logits = F.linear(torch.cat([x, h], 1), part.W_s.weight, part.W_s.bias)
    torch.testing.assert_close(address.weights, torch.softmax(logits / 2.0, 1))


def test_straight_through_is_one_hot_forward_and_softmax_backward():
    logits = torch.randn(B, N, requires_grad=True)
    noise = gumbel_noise((B, N), logits)
    address = straight_through(logits, 0.7, noise)
    assert torch.equal(address.weights.detach(), F.one_hot((logits + noise).argmax(1), N).float())
    assert torch.equal(address.index, (logits + noise).argmax(1))
    upstream = torch.randn(B, N)
    (address.weights * upstream).sum().backward()
    reference = logits.detach().clone().requires_grad_()
    (torch.softmax((reference + noise) / 0.7, 1) * upstream).sum().backward()
    torch.testing.assert_close(logits.grad, reference.grad)


def test_straight_through_passes_gradient_to_W_s():
    part = AutoAddressing(AutoConfig(), context()).train()
    x, h, memory = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, N, W)
    address, _ = address_once(part, x, h, memory)
    read = torch.einsum("bn,bnw->bw", address.weights, memory)
    read.square().sum().backward()
    assert part.W_s.weight.grad is not None and part.W_s.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [0.0, 0.25, 3.0])
def test_the_noise_option_scales_the_gumbel_noise_of_a_training_read(scale):
    """``addressing.noise``: the training read is the argmax of ``logits + scale * g`` for the
    Gumbel sample ``g`` drawn from the same seed (0: the argmax of the logits)."""
    part = AutoAddressing(AutoConfig(noise=scale), context()).train()
    x, h, memory = torch.randn(64, D_I), torch.randn(64, D_H), torch.randn(64, N, W)
    state = part.init_state(64, "cpu", torch.float32)
    torch.manual_seed(3)
    address, _ = part.step(part.prepare(x.unsqueeze(1)), 0, h, memory, state)
    torch.manual_seed(3)
    g = gumbel_noise((1, 64, N), x)[0]
    logits = F.linear(torch.cat([x, h], 1), part.W_s.weight, part.W_s.bias)
    assert torch.equal(address.index, (logits + scale * g).argmax(1))
    assert torch.equal(address.index, logits.argmax(1)) is (scale == 0.0)


def test_gumbel_noise_has_the_gumbel_mean():
    samples = gumbel_noise((200_000,), torch.empty(0))
    assert torch.isfinite(samples).all()
    assert abs(samples.mean().item() - 0.5772) < 0.02  # Euler-Mascheroni constant


@pytest.mark.parametrize("kind", ["exponential", "linear", "inverse"])
def test_temperature_schedule(kind):
    schedule = TemperatureSchedule(start=4.0, end=1.0, steps=100, kind=kind)
    assert schedule(0) == 4.0 and schedule(100) == 1.0 and schedule(10_000) == 1.0
    expected = {"exponential": 2.0, "linear": 2.5, "inverse": 1 / 0.625}[kind]  # 1/tau: 0.25 -> 1, halfway 0.625
    assert math.isclose(schedule(50), expected)


def test_schedule_step_drives_the_temperature():
    import manntk

    model = manntk.build_model({"input_size": 2, "cell": {"name": "armin", "hidden_size": 3},
                                "addressing": {"name": "auto", "temperature": {"start": 4.0, "end": 1.0, "steps": 100}},
                                "write": {"name": "overwrite"}, "memory": {"slots": 2}})
    addressing = model.layers[0].addressing
    assert addressing.tau() == 4.0
    model.set_schedule_step(100)
    assert addressing.tau() == 1.0
    assert "layers.0.addressing.schedule_step" in model.state_dict()


def naive_tardis_logits(part, x, h, memory, usage, previous, penalty, feature=None):
    """``feature``: the usage the scores see, by hand (default: the share of the reads); with
    ``usage_scope: all`` every slot's pre-activation gets ``W_u`` times the whole row of it."""
    logits = torch.zeros(B, N)
    normalised = usage / usage.sum(-1, keepdim=True).clamp_min(1.0) if feature is None else feature
    for b in range(B):
        for i in range(N):
            slot = torch.cat([part.A[i], memory[b, i]]) if part.config.content else part.A[i]
            pre = part.W_h.weight @ h[b] + part.W_x.weight @ x[b] + part.W_x.bias + part.W_m.weight @ slot
            if part.config.usage_scope == "all":
                pre = pre + sum(part.w_u[:, j] * normalised[b, j] for j in range(N))
            else:
                pre = pre + part.w_u * normalised[b, i]
            logits[b, i] = part.a @ torch.tanh(pre) - penalty * previous[b, i]
    return logits


#: The usage each ``usage_feature`` makes of the read counts [[3, 0, 1, 0, 0], [0, 0, 0, 2, 2]], by hand.
USAGE_FEATURES = {
    "share": [[0.75, 0, 0.25, 0, 0], [0, 0, 0, 0.5, 0.5]],
    "count": [[3.0, 0, 1, 0, 0], [0, 0, 0, 2, 2]],
    "seen": [[1.0, 0, 1, 0, 0], [0, 0, 0, 1, 1]],
    "l2": [[3 / 10**0.5, 0, 1 / 10**0.5, 0, 0], [0, 0, 0, 0.5**0.5, 0.5**0.5]],
}


@pytest.mark.parametrize("scope", ["slot", "all"])
@pytest.mark.parametrize("feature", USAGE_FEATURES)
def test_tardis_addressing_matches_a_per_slot_loop(feature, scope):
    config = TardisAddressingConfig(hard=False, key_size=3, reread_penalty=100.0, usage_feature=feature, usage_scope=scope)
    part = TardisAddressing(config, context())
    with torch.no_grad():
        part.w_u.normal_()
    x, h, memory = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, N, W)
    usage = torch.tensor([[3.0, 0, 1, 0, 0], [0, 0, 0, 2, 2]])
    previous = F.one_hot(torch.tensor([0, 3]), N).float()
    address, state = address_once(part, x, h, memory, {"usage": usage, "previous": previous})
    expected = naive_tardis_logits(part, x, h, memory, usage, previous, 100.0, torch.tensor(USAGE_FEATURES[feature]))
    torch.testing.assert_close(address.weights, torch.softmax(expected, 1))
    torch.testing.assert_close(state["usage"], usage + address.weights)
    assert address.weights[0, 0] < 1e-6 and address.weights[1, 3] < 1e-6  # the penalty forbids re-reading


def test_tardis_addressing_without_content_scores_the_address_vectors_alone():
    """``content: false``: ``W_m`` has the address vectors' columns only, and the scores are
    the per-slot loop's without ``C_i``, whatever the memory holds."""
    part = TardisAddressing(TardisAddressingConfig(hard=False, key_size=3, content=False), context())
    assert part.W_m.weight.shape == (W, 3)
    x, h = torch.randn(B, D_I), torch.randn(B, D_H)
    state = {"usage": torch.zeros(B, N), "previous": torch.zeros(B, N)}
    reads = [address_once(part, x, h, memory, state)[0].weights for memory in (torch.randn(B, N, W), torch.randn(B, N, W))]
    expected = naive_tardis_logits(part, x, h, None, state["usage"], state["previous"], 0.0)
    for weights in reads:
        torch.testing.assert_close(weights, torch.softmax(expected, 1))
    with_content = TardisAddressing(TardisAddressingConfig(hard=False, key_size=3), context())
    assert not torch.allclose(*(address_once(with_content, x, h, memory, state)[0].weights
                                for memory in (torch.randn(B, N, W), torch.randn(B, N, W))))


def test_tardis_ordered_keys_start_as_cosines_over_the_slots():
    """``key_init: ordered``: A[i, k] = sqrt(2/K) cos(pi f_k (i + 1/2) / N), f = 1, 3, 7,
    19, 49 for N = 50, K = 5 (geometric from 1 to N - 1, rounded), by hand; the first
    column falls with the slot index. ``normal`` keys are drawn, not ordered."""
    part = TardisAddressing(TardisAddressingConfig(key_size=5, key_init="ordered"), context(slots=50))
    for i, k, f in ((0, 0, 1), (7, 1, 3), (20, 2, 7), (33, 3, 19), (49, 4, 49)):
        assert float(part.A.detach()[i, k]) == pytest.approx(math.sqrt(2 / 5) * math.cos(math.pi * f * (i + 0.5) / 50), abs=1e-6)
    assert bool((part.A[1:, 0] < part.A[:-1, 0]).all())
    drawn = TardisAddressing(TardisAddressingConfig(key_size=5), context(slots=50))
    assert not bool((drawn.A[1:, 0] < drawn.A[:-1, 0]).all())
    with pytest.raises(ValueError, match="key_init"):
        TardisAddressingConfig(key_init="sorted")
    # rounding the geometric frequencies would repeat some at key_size 16 (1, 1, 2, 2, ...):
    # each column has its own; more columns than frequencies are refused
    wide = TardisAddressing(TardisAddressingConfig(key_size=16, key_init="ordered"), context(slots=50)).A.detach()
    assert len({tuple(column) for column in wide.T.round(decimals=5).tolist()}) == 16
    with pytest.raises(ValueError, match=r"key_size \(5\) columns its own frequency of 1..slots - 1 \(4\)"):
        TardisAddressing(TardisAddressingConfig(key_size=5, key_init="ordered"), context(slots=5))


def test_tardis_hard_eval_returns_index_and_tracks_usage():
    part = TardisAddressing(TardisAddressingConfig(key_size=3), context()).eval()
    x, h, memory = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, N, W)
    state = part.init_state(B, "cpu", torch.float32)
    address, state = address_once(part, x, h, memory, state)
    expected = naive_tardis_logits(part, x, h, memory, torch.zeros(B, N), torch.zeros(B, N), 0.0).argmax(1)
    assert torch.equal(address.index, expected)
    assert torch.equal(state["usage"], F.one_hot(expected, N).float())


def test_cosine_similarity_matches_torch():
    key, memory = torch.randn(B, W), torch.randn(B, N, W)
    expected = F.cosine_similarity(key.unsqueeze(1), memory, dim=-1)
    torch.testing.assert_close(cosine_similarity(key, memory, 1e-12), expected)


def test_circular_shift_by_hand():
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    # all mass on shift +1: every weight moves one slot forward, the last wraps to the front
    torch.testing.assert_close(circular_shift(weights, torch.tensor([[0.0, 0.0, 1.0]])), torch.tensor([[0.4, 0.1, 0.2, 0.3]]))
    torch.testing.assert_close(circular_shift(weights, torch.tensor([[1.0, 0.0, 0.0]])), torch.tensor([[0.2, 0.3, 0.4, 0.1]]))
    mixed = circular_shift(weights, torch.tensor([[0.5, 0.5, 0.0]]))
    torch.testing.assert_close(mixed, torch.tensor([[0.15, 0.25, 0.35, 0.25]]))


def test_ntm_addressing_matches_the_ntm_equations():
    part = NtmAddressing(NtmConfig(shift=1), context())
    x, h, memory = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, N, W)
    previous = torch.softmax(torch.randn(B, N), 1)
    address, state = address_once(part, x, h, memory, {"weights": previous})
    head = F.linear(torch.cat([x, h], 1), part.W_head.weight, part.W_head.bias)
    key, beta, g, s, gamma = head.split([W, 1, 1, 3, 1], 1)
    content = torch.softmax(F.softplus(beta) * F.cosine_similarity(key.unsqueeze(1), memory, dim=-1), 1)
    gated = torch.sigmoid(g) * content + (1 - torch.sigmoid(g)) * previous
    s = torch.softmax(s, 1)
    shifted = torch.stack([sum(s[b, d + 1] * gated[b, (i - d) % N] for d in (-1, 0, 1)) for b in range(B) for i in range(N)]).view(B, N)
    sharp = (shifted + 1e-6) ** (1 + F.softplus(gamma))
    expected = sharp / sharp.sum(1, keepdim=True)
    torch.testing.assert_close(address.weights, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(address.weights.sum(1), torch.ones(B))
    assert torch.equal(state["weights"], address.weights)


def test_ntm_sharpening_with_a_large_exponent_gives_the_largest_slot_not_nan():
    """gamma ~ 1e4: every (w~_i + eps)^gamma underflows float32 to 0, so the power form is
    0 / 0; the weights are the limit, all on each row's largest shifted weight."""
    torch.manual_seed(0)
    part = NtmAddressing(NtmConfig(shift=1), context())
    with torch.no_grad():
        part.W_head.weight[-1].zero_()
        part.W_head.bias[-1] = 1e4  # gamma = 1 + softplus(1e4)
    x, h, memory = torch.randn(B, D_I), torch.randn(B, D_H), torch.randn(B, N, W)
    previous = torch.softmax(torch.randn(B, N), 1)
    address, _ = address_once(part, x, h, memory, {"weights": previous})
    unsharpened = NtmAddressing(NtmConfig(shift=1, sharpen=False), context())
    with torch.no_grad():
        unsharpened.W_head.weight.copy_(part.W_head.weight[:-1])
        unsharpened.W_head.bias.copy_(part.W_head.bias[:-1])
    shifted, _ = address_once(unsharpened, x, h, memory, {"weights": previous})
    power = (shifted.weights + 1e-6) ** 1e4
    assert torch.isnan(power / power.sum(1, keepdim=True)).all()  # what the power form gives
    expected = F.one_hot(shifted.weights.argmax(1), N).float()
    torch.testing.assert_close(address.weights, expected)


def test_ntm_addressing_is_finite_on_an_all_zero_memory():
    part = NtmAddressing(NtmConfig(), context())
    x, h = torch.randn(B, D_I), torch.randn(B, D_H)
    memory = torch.zeros(B, N, W, requires_grad=True)
    address, _ = address_once(part, x, h, memory)
    assert torch.isfinite(address.weights).all()
    torch.testing.assert_close(address.weights.sum(1), torch.ones(B))
    address.weights.square().sum().backward()
    assert torch.isfinite(memory.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in part.parameters())

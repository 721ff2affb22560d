"""Which chunk kernel a layer gets (``manntk.fast.chunks``), and what every C++ kernel does
when the kernels cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch

from manntk.build import build_experiment
from manntk.fast import armin_fused
from manntk.fast.armin_sequence import ArminSequence
from manntk.fast.lstm_sequence import LstmSequence
from manntk.fast.ntm_sequence import NtmSequence
from manntk.fast.tardis_sequence import TardisSequence
from manntk.recipe import load_recipe

KERNELS = {"armin": ArminSequence, "awta": TardisSequence, "tardis": TardisSequence, "ntm": NtmSequence,
           "ntm_pytorch_ntm": NtmSequence, "lstm": LstmSequence}
"""The chunk path each shipped copy recipe's layer gets."""


def copy_model(name: str, *overrides: str):
    return build_experiment(load_recipe(f"recipes/algorithmic/copy/{name}.yaml", ["train.device=cpu", *overrides]))


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_every_shipped_copy_recipe_gets_its_kernel_and_fast_false_none(name):
    assert type(copy_model(name)[1].layers[0].chunk_kernel) is KERNELS[name]
    assert copy_model(name, "model.fast=false")[1].layers[0].chunk_kernel is None


def test_only_the_ntm_style_kernel_runs_the_read_after_order():
    assert type(copy_model("ntm", "model.read=after")[1].layers[0].chunk_kernel) is NtmSequence
    assert copy_model("armin", "model.read=after")[1].layers[0].chunk_kernel is None


@pytest.mark.parametrize("name", ["armin", "awta", "tardis", "ntm"])
def test_without_a_compiler_every_c_kernel_steps_aside_with_one_warning(name, monkeypatch):
    def no_compiler():
        raise RuntimeError("model.cell.fused: the C++ kernels could not be built: no compiler.")

    monkeypatch.setattr(armin_fused, "extension", no_compiler)
    monkeypatch.setattr(armin_fused, "_built", None)
    task, model = copy_model(name)
    model.eval()
    x = torch.rand(2, 7, model.layers[0].cell.input_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y, _ = model(x)
        model(x)
    messages = [str(warning.message) for warning in caught if warning.category is RuntimeWarning]
    assert len(messages) == 1 and "no compiler" in messages[0] and "plain" in messages[0]
    _, reference = copy_model(name, "model.fast=false")
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(y, reference.eval()(x)[0])

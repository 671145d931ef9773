"""The pruning baseline: models pruned within the params budget that still run, count as
profiling says, and export; budgets and networks the pruner cannot handle are named."""

import pytest
import torch

import search_spaces
import supernets
from nat.data import load_dataset
from nat.io.deploy import export_onnx, sample_images
from nat.profile import profile
from nat.pruning import PruningError, params_of, prune_to_budget


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 12, seed=0, subset=400)


def _largest(name: str) -> torch.nn.Module:
    # Up to two blocks a stage: every kind of block, at a fraction of full depth's cost.
    depths = [range(1, min(d, 2) + 1) for d in search_spaces.get(name).max_depths]
    space = search_spaces.get(name, resolutions=(12,), width_mults=(0.25,), depths=depths)
    torch.manual_seed(0)
    return supernets.build_static(space.largest(), 10)


@pytest.mark.parametrize(("name", "importance"), [("mbv2", "taylor"), ("resnet", "l1")])
def test_pruned_models_fit_the_budget_run_and_export(name, importance, digits, tmp_path):
    model = _largest(name)
    before = params_of(model)
    budget = before / 3
    prune_to_budget(model, digits, 12, budget, importance, epochs=2)
    params, macs = profile(model, 12)
    assert params == params_of(model) and budget * 0.8 < params <= budget
    assert macs < profile(_largest(name), 12)[1]
    assert model.classifier.out_features == 10  # the classes stay
    images = sample_images(digits.test, 4)
    assert model(images).shape == (4, 10)
    assert export_onnx(model, images, tmp_path / "model.onnx") <= 1e-4


def test_within_the_budget_it_only_fine_tunes(digits):
    model = _largest("resnet")
    before = params_of(model)
    prune_to_budget(model, digits, 12, before + 1, "l1", epochs=1)
    assert params_of(model) == before


def test_what_cannot_be_pruned_is_named(digits):
    with pytest.raises(PruningError, match="keeps at least .* over the 1,000 budget"):
        prune_to_budget(_largest("resnet"), digits, 12, 1000, "l1", epochs=1)
    with pytest.raises(PruningError, match="cannot trace .* ShuffleNetV2's channel shuffle"):
        prune_to_budget(_largest("shufflenetv2"), digits, 12, 1e4, "l1", epochs=1)
    with pytest.raises(ValueError, match="unknown importance 'hessian'"):
        prune_to_budget(_largest("resnet"), digits, 12, 1e4, "hessian", epochs=1)
    with pytest.raises(ValueError, match="at least 1 epoch"):
        prune_to_budget(_largest("resnet"), digits, 12, 1e4, "l1", epochs=0)

"""The pruning baseline: models pruned within the params budget that still run, count as
profiling says, and export; budgets and networks the pruner cannot handle are named."""

import json

import pytest
import torch

import search_spaces
import supernets
from nat.data import load_dataset
from nat.io.deploy import export_onnx, sample_images
from nat.profile import profile
from nat.pruning import (
    NEW_TASK_LR,
    SAME_TASK_LR,
    PruningError,
    params_of,
    prune_to_budget,
    transfer_lr,
)


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


def test_the_default_lr_is_higher_for_a_new_task(digits):
    model = _largest("mbv2")
    assert model.classifier.out_features == digits.num_classes
    assert transfer_lr(model, digits, new_classifier=False) == SAME_TASK_LR
    assert transfer_lr(model, digits, new_classifier=True) == NEW_TASK_LR > SAME_TASK_LR
    five = digits.restricted(range(5))  # its own classifier does not fit five classes
    assert transfer_lr(model, five, new_classifier=False) == NEW_TASK_LR


def test_nat_prune_moves_a_subnet_to_new_classes_prunes_it_and_it_reloads(tmp_path, capsys):
    from nat.cli import main
    from nat.io.checkpoint import export_subnet, load_subnet
    from nat.io.deploy import onnx_session

    # The source task: digits 0-4; the target: digits 5-9, a budget a third of the source's.
    space = search_spaces.get("mbv2", resolutions=(12,), width_mults=(0.25,), depths=[[1]] * 6)
    torch.manual_seed(0)
    source = supernets.build_static(space.largest(), 5)
    export_subnet(source, space.largest(), tmp_path / "source",
                  {"num_classes": 5, "class_names": list("01234")})  # fmt: skip
    budget = params_of(source) // 3
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(tmp_path / "source"), "--data", "digits", "--subset", "400",
            "--classes", "5,6,7,8,9", "--max-params", str(budget), "--epochs", "1",
            "--compare-unpruned", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "fine-tuned, unpruned" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["pruned"] and config["class_names"] == list("56789")
    assert config["lr"] == NEW_TASK_LR  # new classes, a new classifier: the higher default
    assert config["params"] <= budget < config["unpruned"]["params"] == params_of(source)
    assert {"prune.md", "model.onnx", "weights.pt"} <= {p.name for p in out.iterdir()}

    # weights.pt is a plain state_dict: the architecture's layers are resized to it.
    model, _ = load_subnet(out)
    assert profile(model, 12) == (config["params"], config["macs"])
    data = load_dataset("digits", 12, seed=0, subset=400, classes=list("56789"))
    images = sample_images(data.test, 8)
    (logits,) = onnx_session((out / "model.onnx").read_bytes()).run(
        None, {"images": images.numpy()}
    )
    assert torch.allclose(model(images), torch.from_numpy(logits), atol=1e-4)
    assert main(["multi-exit", "--config", str(out), "--no-onnx"]) == 2
    assert "is a pruned model" in capsys.readouterr().err

    bad = ["prune", "--model", str(tmp_path / "source"), "--data", "digits", "--subset", "400",
           "--max-params", "100", "--epochs", "1", "--no-onnx", "--no-progress"]  # fmt: skip
    assert main(bad) == 2
    assert "over the 100 budget" in capsys.readouterr().err
    assert main(["prune", "--model", str(tmp_path), "--data", "digits", "--max-params", "1k"]) == 2
    assert "is not an exported subnet's folder" in capsys.readouterr().err

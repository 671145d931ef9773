import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import small_space

import search_spaces
import supernets
from nat.cli import main
from nat.data import load_dataset
from nat.incremental import protocol
from nat.incremental.protocol import (
    CILConfig,
    CosineClassifier,
    IncrementalNet,
    Scenario,
    distill_weight,
    imprint,
    run_protocol,
)

FAST = CILConfig(first_epochs=1, later_epochs=1, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=8, seed=0)


def _backbone(seed: int = 0) -> supernets.StaticNet:
    torch.manual_seed(seed)
    return supernets.build_static(small_space("resnet", resolutions=(8,)).smallest(), 10)


def test_imprinted_weights_point_along_the_mean_normalised_feature_with_the_old_mean_norm():
    model = IncrementalNet(_backbone(), 2).eval()
    images = torch.randn(12, 3, 8, 8)
    labels = torch.tensor([2] * 5 + [3] * 7)
    new = imprint(model, images, labels, [2, 3])
    features = F.normalize(model.features(images).detach(), dim=1)
    old_norm = model.classifier.weight.norm(dim=1).mean()
    for row, c in zip(new, (2, 3), strict=True):
        direction = F.normalize(features[labels == c].mean(0), dim=0)
        assert torch.allclose(F.normalize(row, dim=0), direction, atol=1e-6)
        assert torch.isclose(row.norm(), old_norm, rtol=1e-5)


def test_cosine_logits_are_sigma_times_the_cosine_and_sigma_starts_at_1():
    head = CosineClassifier(5, 3)
    f = torch.randn(4, 5)
    cosine = F.cosine_similarity(f[:, None, :], head.weight[None, :, :], dim=2)
    assert head.sigma.item() == 1.0 and head.sigma.requires_grad
    assert torch.allclose(head(f), cosine, atol=1e-6)
    with torch.no_grad():
        head.sigma.fill_(2.5)
    assert torch.allclose(head(f), 2.5 * cosine, atol=1e-6)


def test_lambda_follows_the_formula_and_reaches_the_loss_of_each_later_state(digits, monkeypatch):
    assert distill_weight(5.0, 8, 2) == pytest.approx(10.0)
    assert distill_weight(5.0, 2, 2) == pytest.approx(5.0)
    used = []  # (lambda, whether there is a teacher) as the training of each state gets them
    train_state = protocol._train_state

    def spy(model, teacher, *args):
        used.append((args[3], teacher is not None))
        return train_state(model, teacher, *args)

    monkeypatch.setattr(protocol, "_train_state", spy)
    scenario = Scenario(10, initial=4, increment=2, states=3)
    result = run_protocol(_backbone(), digits, scenario, FAST)
    expected = [0.0, 5 * math.sqrt(4 / 2), 5 * math.sqrt(6 / 2)]
    assert [s["lambda"] for s in result["states"]] == pytest.approx(expected)
    assert [u[0] for u in used] == pytest.approx(expected)
    assert [u[1] for u in used] == [False, True, True]


def test_later_states_train_only_on_their_classes_and_score_only_the_classes_seen(
    digits, monkeypatch
):
    trained, scored = [], []
    make_loader, predict = protocol.make_loader, protocol._predict

    original = digits.train.labels.new_full((int(digits.train.indices.max()) + 1,), -1)
    original[digits.train.indices] = digits.train.labels  # row -> the data's own label
    raw = []

    def recording_loader(dataset, batch_size, shuffle, seed=0, drop_last=False):
        if shuffle:  # the training loader
            trained.append(set(dataset.labels.tolist()))
            raw.append(set(original[dataset.indices].tolist()))
        return make_loader(dataset, batch_size, shuffle, seed, drop_last)

    def recording_predict(model, dataset, resolution, device):
        scored.append(set(dataset.labels.tolist()))
        return predict(model, dataset, resolution, device)

    monkeypatch.setattr(protocol, "make_loader", recording_loader)
    monkeypatch.setattr(protocol, "_predict", recording_predict)
    scenario = Scenario(10, initial=2, increment=3, states=3, order_seed=4)
    result = run_protocol(_backbone(), digits, scenario, FAST)
    assert trained == [{0, 1}, {2, 3, 4}, {5, 6, 7}]  # positions in the scenario's order
    order = scenario.order
    assert raw == [set(order[:2]), set(order[2:5]), set(order[5:8])]  # the images' classes
    assert scored == [{0, 1}, set(range(5)), set(range(8))]
    assert [len(s["per_state"]) for s in result["states"]] == [1, 2, 3]
    assert [s["classes"] for s in result["states"]] == [2, 5, 8]
    # The data's labels are the scenario's order: position 0 is class order[0].
    ordered = digits.restricted(scenario.order)
    assert ordered.class_names[:2] == [digits.class_names[c] for c in scenario.order[:2]]


def test_old_class_weights_are_bit_identical_after_a_later_state(digits):
    snapshots = []

    def snapshot(state, model):
        snapshots.append([c.detach().clone() for c in model.classifier.chunks])

    run_protocol(_backbone(), digits, Scenario(10, 2, 2, 3), FAST, on_state=snapshot)
    assert len(snapshots[2]) == 3
    assert torch.equal(snapshots[0][0], snapshots[1][0])
    assert torch.equal(snapshots[0][0], snapshots[2][0])
    assert torch.equal(snapshots[1][1], snapshots[2][1])
    assert not torch.equal(snapshots[1][0], torch.zeros_like(snapshots[1][0]))


def test_one_state_is_plain_training_with_a_cosine_classifier(digits):
    """With one state there is no teacher, no imprinting: the protocol's model equals a
    cosine-classifier network trained on the first classes with the same recipe."""
    scenario = Scenario(10, initial=4, states=1)
    kept = []
    result = run_protocol(_backbone(), digits, scenario, FAST, on_state=lambda t, m: kept.append(m))
    backbone = _backbone()
    torch.manual_seed(FAST.seed)
    plain = IncrementalNet(backbone, 4)
    train = digits.restricted(scenario.order).train.restricted(range(4))
    loader = protocol.make_loader(train, FAST.batch_size, True, FAST.seed)
    optimizer = torch.optim.SGD(
        plain.parameters(), lr=FAST.lr, momentum=0.9, weight_decay=FAST.weight_decay
    )
    steps = len(loader)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [round(steps * 4 / 7), round(steps * 6 / 7)], 0.1
    )
    plain.train()
    for images, labels in loader:
        loss = F.cross_entropy(plain(protocol.input_batch(images, 8)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    for (name, a), b in zip(kept[0].state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert result["mean_incremental"] == result["states"][0]["accuracy"]
    assert result["forgetting"] == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(initial=4, increment=2, states=5), "needs 4 \\+ 2 x 4 = 12 classes"),
        (dict(initial=2, increment=0, states=3), "increment must be at least 1"),
        (dict(initial=0), "initial must be at least 1"),
    ],
)
def test_bad_scenarios_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scenario(10, **kwargs)


def test_nat_cil_rejects_an_unknown_class_and_an_impossible_scenario(tmp_path, capsys):
    assert main(["cil", "--budgets", "20k", "--order", "3,cat", "--out", str(tmp_path)]) == 2
    assert "unknown class 'cat'" in capsys.readouterr().err
    assert main(["cil", "--budgets", "20k", "--states", "6", "--out", str(tmp_path)]) == 2
    assert "needs 2 + 2 x 5 = 12 classes" in capsys.readouterr().err
    assert main(["cil", "--out", str(tmp_path)]) == 2
    assert "nothing to judge" in capsys.readouterr().err
    assert not (tmp_path / "cil.json").exists()


def test_nat_cil_on_digits_with_the_defaults_writes_every_output(tmp_path, capsys):
    assert main(["cil", "--budgets", "50k", "--out", str(tmp_path), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "cil.json").read_text())
    methods = [r["method"] for r in doc["rows"]]
    assert methods == ["feillet 50k"]  # full width or full depth cannot fit 50k
    out = capsys.readouterr().out
    assert "skipped depth-only 50k" in out and "skipped width-only 50k" in out
    for row in doc["rows"]:
        assert row["params"] <= 50_000 and row["seeds"] == [0, 1, 2]
        assert len(row["per_state"]) == 5 and row["per_state"][0][0] > 0.9  # 2 classes
        assert 0 <= row["mean_incremental"][0] <= 1
    assert doc["scenario"]["initial"] == 2 and len(doc["scenario"]["order"]) == 10
    assert "feillet 50k" in (tmp_path / "cil.md").read_text()
    assert (tmp_path / "cil.png").stat().st_size > 0


def test_nat_cil_judges_an_exported_subnet_from_its_weights(tmp_path):
    arch = small_space("shufflenetv2", resolutions=(8,)).smallest()
    folder = tmp_path / "subnet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"arch": arch.to_dict()}))
    torch.save(supernets.build_static(arch, 10).state_dict(), folder / "weights.pt")
    args = ["cil", "--config", str(folder), "--inherit", "--image-size", "8", "--seeds", "0"]
    args += ["--states", "2", "--first-epochs", "1", "--later-epochs", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    (row,) = json.loads((tmp_path / "out" / "cil.json").read_text())["rows"]
    assert row["method"] == "subnet" and row["inherited"] and len(row["per_state"]) == 2
    wrong = supernets.build_static(small_space("mbv2", resolutions=(8,)).smallest(), 10)
    torch.save(wrong.state_dict(), folder / "weights.pt")
    assert main([*args, "--out", str(tmp_path / "bad")]) == 2  # weights of another net


def test_a_runs_front_becomes_candidates_in_front_order(tmp_path):
    from nat.incremental.judge import from_run

    archs = [small_space("mbv2", resolutions=(8,)).smallest(), small_space("mbv2").largest()]
    for rank, arch in enumerate(archs):
        folder = tmp_path / "front" / f"{rank:02d}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"arch": arch.to_dict()}))
        (folder / "weights.pt").write_bytes(b"")
    scratch, inherited = from_run(tmp_path, inherit=False), from_run(tmp_path, inherit=True)
    assert [c.method for c in scratch] == ["searched 00", "searched 01"]
    assert [c.arch for c in scratch] == archs and all(c.weights is None for c in scratch)
    assert [c.weights.parent.name for c in inherited] == ["00", "01"]
    with pytest.raises(ValueError, match="no front"):
        from_run(tmp_path / "front", inherit=False)


def test_rules_pick_which_scalings_are_judged(tmp_path, capsys):
    from nat.incremental.judge import from_budgets

    space = search_spaces.get("mbv2")
    every, _ = from_budgets([3e6], space, 32, 10)
    assert [c.method for c in every] == ["feillet 3,000k", "width-only 3,000k", "depth-only 3,000k"]
    (one,), _ = from_budgets([3e6], space, 32, 10, ["depth-only"])
    assert one == every[2]
    with pytest.raises(ValueError, match="unknown rule"):
        from_budgets([3e6], space, 32, 10, ["depth"])
    assert main(["cil", "--budgets", "50k", "--rules", "depth", "--out", str(tmp_path)]) == 2
    assert "unknown rule(s) ['depth']" in capsys.readouterr().err

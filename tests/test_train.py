import stat

import numpy as np
import pytest
import torch
from conftest import SPACES, small_space

import search_spaces
import supernets
from nat.data import load_dataset, make_loader
from nat.io.checkpoint import load_supernet, save_supernet
from nat.io.files import atomic_write
from nat.training.train import TrainConfig, evaluate_subnet, train_supernet


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=16, seed=0)


def _accuracies(net, data):
    bn = make_loader(data.train_eval, 64, shuffle=True, seed=0)
    val = make_loader(data.val, 256, shuffle=False)
    space = net.space
    return [evaluate_subnet(net, a, bn, val, 10)[0] for a in (space.largest(), space.smallest())]


@pytest.mark.parametrize("name", SPACES)
def test_short_training_lifts_largest_and_smallest_well_above_chance(name, digits, tmp_path):
    torch.manual_seed(0)
    # At most two blocks a stage: every kind of block trains, in half the time of full depth.
    depths = [range(1, min(d, 2) + 1) for d in search_spaces.get(name).max_depths]
    space = small_space(name, resolutions=(8, 12), depths=depths)
    net = supernets.build_supernet(space, digits.num_classes)
    before = _accuracies(net, digits)
    config = TrainConfig(epochs=3, batch_size=64, lr=0.1, random_subnets=1)
    history = train_supernet(net, digits, config, checkpoint=tmp_path / "sn.pt", progress=False)
    after = _accuracies(net, digits)
    assert len(history) == 3 and all(h["seconds"] > 0 for h in history)
    assert max(before) < 0.3  # chance is 0.1
    assert after[0] > 0.6 and after[1] > 0.4, (before, after)
    reloaded, metadata = load_supernet(tmp_path / "sn.pt")
    assert len(metadata["history"]) == 3
    assert _accuracies(reloaded, digits) == pytest.approx(after)


def test_checkpoint_round_trip_and_transfer(tmp_path):
    space = small_space("shufflenetv2")
    net = supernets.build_supernet(space, 10).eval()
    path = save_supernet(tmp_path / "a.pt", net, note="hello")
    loaded, metadata = load_supernet(path, space="shufflenetv2")
    assert metadata == {"note": "hello"} and loaded.space == space
    images = torch.randn(2, 3, 20, 20)
    arch = space.decode(space.sample(1, __import__("numpy").random.default_rng(0))[0])
    for m in (net, loaded.eval()):
        m.set_active(arch)
    torch.testing.assert_close(loaded(images), net(images))

    transferred, _ = load_supernet(path, num_classes=3)
    assert transferred.num_classes == 3
    assert transferred.extract(arch).classifier.out_features == 3
    kept = {k: v for k, v in transferred.state_dict().items() if not k.startswith("classifier")}
    for k, v in kept.items():
        assert torch.equal(v, net.state_dict()[k]), k


def test_bad_checkpoints_are_clear_errors(tmp_path):
    net = supernets.build_supernet(small_space("mbv2"), 10)
    path = save_supernet(tmp_path / "a.pt", net)
    with pytest.raises(ValueError, match="space 'mbv2', not 'resnet'"):
        load_supernet(path, space="resnet")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt"):
        load_supernet(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a supernet checkpoint"):
        load_supernet(other)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_supernet(tmp_path / "missing.pt")


def test_checkpointed_epochs_reads_headers_and_skips_a_checkpoint_cut_short(tmp_path):
    """What `nat train-supernet --resume` reports it continues from: the furthest whole
    checkpoint in Ray Train's storage, read from headers whose weights are only mapped."""
    from nat.backends.ray_train import checkpointed_epochs
    from nat.io.checkpoint import read_supernet_header

    net = supernets.build_supernet(small_space("mbv2"), 10)
    folder = tmp_path / "pretrain"
    for epochs in (1, 2):
        path = folder / f"checkpoint_00000{epochs - 1}" / "supernet.pt"
        save_supernet(path, net, history=[{"epoch": e + 1} for e in range(epochs)])
    whole = (folder / "checkpoint_000001" / "supernet.pt").read_bytes()
    cut = folder / "checkpoint_000002" / "supernet.pt"  # the kill came while it was copied
    cut.parent.mkdir()
    cut.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(ValueError, match="corrupt"):
        read_supernet_header(cut)
    assert checkpointed_epochs(tmp_path) == 2
    assert checkpointed_epochs(tmp_path / "empty") == 0


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # no temporary left behind


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    written = atomic_write(tmp_path / "atomic", lambda f: f.write(b"x"))
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_students_learn_from_labels_as_much_as_distill_weight_says(digits):
    """distill_weight 1 is OFA's pure distillation, 0 pure label loss for the students: the
    option reaches the loss, so the same seed trains other weights."""
    weights = []
    for distill_weight in (1.0, 0.0):
        torch.manual_seed(0)
        net = supernets.build_supernet(small_space("resnet", resolutions=(12,)), 10)
        config = TrainConfig(epochs=1, batch_size=256, distill_weight=distill_weight)
        history = train_supernet(net, digits, config, progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
        assert np.isfinite(history[0]["loss"])
    assert not torch.allclose(weights[0], weights[1])
    with pytest.raises(ValueError, match="distill_weight: must be in"):
        TrainConfig(distill_weight=1.5)


@pytest.mark.parametrize(
    ("name", "shrinking"),
    # mbv2 with progressive shrinking: its channels are sorted at step 8, after the kill.
    [("shufflenetv2", False), ("mbv2", True)],
)
def test_killed_training_resumes_to_the_uninterrupted_weights(name, shrinking, digits, tmp_path):
    space = small_space(name, resolutions=(12,), depths=[(1, 2)] * search_spaces.get(name).n_stages)
    config = TrainConfig(
        epochs=2,
        batch_size=256,
        random_subnets=1,
        warmup_epochs=0.5,
        progressive_shrinking=shrinking,
    )

    def trained(net, checkpoint, **kwargs):
        train_supernet(net, digits, config, checkpoint=checkpoint, progress=False, **kwargs)
        return torch.cat([t.detach().flatten().float() for t in net.state_dict().values()])

    torch.manual_seed(0)
    reference = trained(supernets.build_supernet(space, 10), tmp_path / "a.pt")

    steps = []

    def killed_in_the_second_epoch(net):
        steps.append(1)
        if len(steps) == 8:  # one epoch is 5 steps: 1,437 training images in batches of 256
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        trained(
            supernets.build_supernet(space, 10),
            tmp_path / "b.pt",
            before_step=killed_in_the_second_epoch,
        )
    _, metadata = load_supernet(tmp_path / "b.pt")
    assert len(metadata["history"]) == 1  # the first epoch was saved
    torch.manual_seed(1)  # other initial weights: the checkpoint's must be loaded
    resumed = trained(supernets.build_supernet(space, 10), tmp_path / "b.pt", resume=True)
    assert torch.equal(resumed, reference)


def test_a_checkpoint_whose_optimiser_state_does_not_fit_trains_from_the_start(digits, tmp_path):
    """A pre-training checkpoint saved before the kernel rings holds optimiser state for
    fewer parameters: resuming from it warns and trains afresh instead of failing."""
    space = small_space("resnet", resolutions=(12,), depths=[(1, 2)] * 4)
    config = TrainConfig(epochs=1, batch_size=256, random_subnets=1)

    def trained(path, **kwargs):
        torch.manual_seed(0)
        net = supernets.build_supernet(space, 10)
        train_supernet(net, digits, config, checkpoint=path, progress=False, **kwargs)
        return torch.cat([t.detach().flatten().float() for t in net.state_dict().values()])

    reference = trained(tmp_path / "a.pt")
    payload = torch.load(tmp_path / "a.pt", weights_only=True)
    payload["training_state"]["optimizer"]["param_groups"][0]["params"].pop()
    torch.save(payload, tmp_path / "a.pt")
    with pytest.warns(UserWarning, match="starts from the beginning"):
        again = trained(tmp_path / "a.pt", resume=True)
    assert torch.equal(again, reference)


def test_progressive_shrinking_opens_kernel_then_depth_then_width(digits, monkeypatch):
    """OFA's phases in one schedule of 10 steps: the teacher alone (steps 0-1), then subnets
    elastic in kernel (2-4), in depth too (5-7), in width and expand ratio too (8-9)."""
    space = small_space("mbv2", resolutions=(12,))
    net = supernets.build_supernet(space, 10)
    active, ends = [], []
    set_active = type(net).set_active

    def recording(self, arch):
        active.append(arch)
        set_active(self, arch)

    monkeypatch.setattr(type(net), "set_active", recording)
    config = TrainConfig(epochs=2, batch_size=256, random_subnets=2, progressive_shrinking=True)
    train_supernet(
        net, digits, config, progress=False, before_step=lambda _: ends.append(len(active))
    )
    teacher = space.largest()
    assert len(ends) == 10
    students = [
        [a for a in active[start:end] if a != teacher]
        for start, end in zip([0, *ends[:-1]], ends, strict=True)
    ]

    def shape(arch, depth=True):
        return [(s.channels, s.depth if depth else 0) for s in arch.stages]

    assert students[0] == students[1] == []
    assert all(shape(a) == shape(teacher) for step in students[2:5] for a in step)
    assert any(step for step in students[2:5])
    for step in students[5:8]:
        assert all(shape(a, depth=False) == shape(teacher, depth=False) for a in step)
    assert any(shape(a) != shape(teacher) for step in students[5:8] for a in step)
    assert any(shape(a, depth=False) != shape(teacher, depth=False) for a in students[8])


def _shared_batch_worker(rank: int, world: int, init: str, out: str, synced: bool) -> None:
    """One of ``world`` processes training on its share of every batch (data parallel)."""
    import torch.distributed as dist

    from nat.backends.ray_train import _gradient_average

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    net, data, config = _shared_batch_setup()
    net.sync_batch_norm(synced)
    train_supernet(
        net,
        data,
        config,
        progress=False,
        device=torch.device("cpu"),
        before_step=_gradient_average(world),
        shard=(rank, world),
    )
    if rank == 0:
        torch.save(net.state_dict(), out)
    dist.destroy_process_group()


def _shared_batch_setup():
    # ResNet at 16 px and a small rate: the narrow MBConv and ShuffleNetV2 subnets at 12-16
    # px have channels of near-zero variance whose BatchNorm gradients are float32 noise,
    # and in a few steps one process's training no longer matches itself on another thread
    # count.
    data = load_dataset("digits", 16, 0, subset=200)
    torch.manual_seed(0)
    net = supernets.build_supernet(small_space("resnet", resolutions=(16,)), 10)
    return net, data, TrainConfig(epochs=1, batch_size=64, lr=0.01, random_subnets=1)


def _spawned(world: int, folder, synced: bool = True) -> dict:
    out = folder / f"trained-{world}-{synced}.pt"
    init = f"file://{folder / f'rendezvous-{world}-{synced}'}"
    torch.multiprocessing.spawn(
        _shared_batch_worker, args=(world, init, str(out), synced), nprocs=world
    )
    return torch.load(out, weights_only=True)


def _relative_gap(a: dict, b: dict, start: dict, statistics: bool) -> float:
    """Relative distance between two trainings from ``start``: of the weight updates, or of
    the BatchNorm running statistics."""
    keys = [k for k, v in start.items() if v.is_floating_point() and ("running" in k) == statistics]
    base = {k: 0 if statistics else start[k] for k in keys}
    da = torch.cat([(a[k] - base[k]).flatten() for k in keys])
    db = torch.cat([(b[k] - base[k]).flatten() for k in keys])
    return float((da - db).norm() / da.norm())


def test_two_processes_sharing_each_batch_train_what_one_process_trains(tmp_path):
    """Data parallelism as Ray Train runs it, without Ray: two gloo processes, each on half
    of every batch, gradients averaged and BatchNorm statistics pooled over both, against
    one process on whole batches, for two steps. What is left is float rounding, amplified
    by training (1.8 % of the weight updates here); BatchNorm kept per worker is 50 % off."""
    start = _shared_batch_setup()[0].state_dict()
    one, two = _spawned(1, tmp_path), _spawned(2, tmp_path)
    per_worker = _spawned(2, tmp_path, synced=False)
    assert _relative_gap(one, two, start, statistics=False) < 0.1
    assert _relative_gap(one, two, start, statistics=True) < 1e-4
    assert _relative_gap(one, per_worker, start, statistics=False) > 0.25
    assert _relative_gap(one, per_worker, start, statistics=True) > 1e-3
    net, data, _ = _shared_batch_setup()
    with pytest.raises(ValueError, match="multiple of the worker count"):
        train_supernet(net, data, TrainConfig(epochs=1, batch_size=33), shard=(0, 2))

import json
import subprocess
import sys

import pytest
import torch

from nat.cli import build_parser, main
from nat.cli.options import spec_from_args
from nat.data import load_dataset, resize_batch
from nat.io.checkpoint import load_subnet
from nat.io.deploy import onnx_session, sample_images

TINY = [
    "--space",
    "shufflenetv2",
    "--resolutions",
    "12,16",
    "--width-mults",
    "0.25,0.5",
    "--epochs",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "sn.pt"
    assert main(["train-supernet", *TINY, "--out", str(path)]) == 0
    return path


def test_sample_exports_a_working_subnet(checkpoint, tmp_path, capsys):
    out = tmp_path / "smallest"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoint),
                "--smallest",
                "--export",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "val accuracy" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert set(config) >= {"arch", "params", "macs", "val_accuracy", "test_accuracy"}
    resolution = config["arch"]["resolution"]
    assert resolution == 12
    model, loaded = load_subnet(out)
    assert loaded == config
    weights = model.state_dict()
    assert (
        sum(v.numel() for k, v in weights.items() if "running" not in k and "num_batches" not in k)
        == config["params"]
    )
    # model.onnx: real digits at the subnet's resolution, the logits torch computes
    data = load_dataset("digits", 16, seed=0)
    images = resize_batch(sample_images(data.test, 8), resolution)
    (logits,) = onnx_session(out / "model.onnx").run(None, {"images": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(images), atol=1e-4, rtol=0)
    assert 0 <= config["onnx_max_abs_diff"] <= 1e-4

    again = tmp_path / "again"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoint),
                "--config",
                str(out / "config.json"),
                "--export",
                str(again),
                "--no-onnx",
                "--quiet",
            ]
        )
        == 0
    )
    assert not (again / "model.onnx").exists()
    del config["onnx_max_abs_diff"]
    assert json.loads((again / "config.json").read_text()) == config  # same BN batches


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train-supernet", "--data", "no/such/dir", *TINY], "not found"),
        (["train-supernet", *TINY, "--space-options", '{"stem": "tiny"}'], "unknown stem"),
        (["train-supernet", *TINY, "--resolutions", "4,16"], "--resolutions: must be 8"),
        (["sample", "--checkpoint", "no/such.pt", "--largest", "--export", "x"], "not found"),
        (["sample", "--checkpoint", "x.pt", "--largest", "--export", __file__], "--export: "),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_config_outside_the_space_is_a_clear_error(checkpoint, tmp_path, capsys):
    arch = json.loads(
        json.dumps(__import__("search_spaces").get("shufflenetv2").largest().to_dict())
    )
    path = tmp_path / "big.json"
    path.write_text(json.dumps(arch))
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoint),
                "--config",
                str(path),
                "--export",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "not one of the space's choices" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_help_documents_units():
    result = subprocess.run(
        [sys.executable, "-m", "nat.cli", "train-supernet", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "px" in result.stdout and "--epochs" in result.stdout
    assert (
        subprocess.run(
            [sys.executable, "-m", "nat.cli", "--space", "x"], capture_output=True
        ).returncode
        == 2
    )


def test_help_keeps_the_recipe_detail_behind_help_all(capsys):
    for flag, shown in (("--help", False), ("--help-all", True)):
        with pytest.raises(SystemExit):
            main(["search", flag])
        text = capsys.readouterr().out
        assert ("--momentum" in text) is shown and "--pretrain-epochs" in text
        assert ("recipe flags more: --help-all" in text) is not shown
    spec = spec_from_args(build_parser().parse_args(["search", "--momentum", "0.8"]))
    assert spec.pretrain.momentum == 0.8  # hidden, still accepted

import pytest
import torch
import torchvision

from nat.profile import profile

# torchvision's published figures: parameters and GFLOPS (multiply-accumulates) at 224x224.
PUBLISHED = {
    "resnet18": (11_689_512, 1.814),
    "mobilenet_v2": (3_504_872, 0.301),
    "shufflenet_v2_x1_0": (2_278_604, 0.145),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_profile_agrees_with_torchvision(name):
    params, gmacs = PUBLISHED[name]
    measured_params, measured_macs = profile(torchvision.models.get_model(name), 224)
    assert abs(measured_params - params) <= 0.01 * params
    assert abs(measured_macs / 1e9 - gmacs) <= 0.01 * gmacs


def test_profile_counts_one_image_and_restores_mode():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 10, 4)
    )
    model.train()
    params, macs = profile(model, 10)
    assert params == 8 * 27 + 8 + 800 * 4 + 4
    assert macs == 8 * 27 * 100 + 800 * 4
    assert model.training
    with pytest.raises(ValueError, match="input_size"):
        profile(model, (3, 10))

"""Every backbone builds, runs and trains on 1-channel input; weights load from local files only."""

from urllib.error import URLError

import pytest
import torch
from torch import nn
from torchvision.models import get_model
from torchvision.models._api import WeightsEnum

from models.backbones import (
    BACKBONES,
    UnknownBackboneError,
    WeightsError,
    build_backbone,
    fold_input_conv,
)


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"test tried to download {self.url}")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_forward_backward(name, num_classes):
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=num_classes, in_chans=1, dropout=0.1).train()
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("size", [32, (48, 80)], ids=["32x32", "48x80"])
def test_small_and_non_square_input(size):
    h, w = (size, size) if isinstance(size, int) else size
    model = build_backbone("efficientnet_b0", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, h, w)).shape == (1, 3)


def test_dropout_is_the_only_dropout_before_the_head():
    model = build_backbone("mobilenet_v3_large", num_classes=3, dropout=0.0)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.0]


def test_the_registry_holds_the_architectures():
    assert {"resnet18", "densenet121", "efficientnet_b3", "convnext_tiny", "regnet_y_800mf"} <= set(BACKBONES)


def test_unknown_name_lists_names_and_suggests():
    with pytest.raises(UnknownBackboneError) as info:
        build_backbone("resnet51", num_classes=3)
    msg = str(info.value)
    assert "Did you mean 'resnet50'" in msg
    assert all(name in msg for name in BACKBONES)
    assert isinstance(info.value, ValueError)


@pytest.fixture
def imagenet_resnet18(tmp_path):
    """A random state dict shaped exactly like torchvision's downloaded resnet18 file."""
    torch.manual_seed(1)
    state = get_model("resnet18").state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    return path, state


def test_local_imagenet_file_folds_stem_and_keeps_body(imagenet_resnet18):
    path, state = imagenet_resnet18
    model = build_backbone("resnet18", num_classes=3, in_chans=1, weights=str(path))
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(model.bn1.running_var, state["bn1.running_var"])
    assert model.fc[1].weight.shape == (3, 512)  # the 1000-class ImageNet head is replaced, not loaded


def test_grey_input_matches_rgb_model_on_replicated_image(imagenet_resnet18):
    path, _ = imagenet_resnet18
    grey = build_backbone("resnet18", num_classes=1000, in_chans=1, weights=str(path)).eval()
    rgb = build_backbone("resnet18", num_classes=1000, in_chans=3, weights=str(path)).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_lightning_checkpoint_with_backbone_prefix_loads(tmp_path):
    trained = build_backbone("resnet18", num_classes=3, in_chans=1)
    state = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)  # other LightningModule state is ignored
    path = tmp_path / "epoch=3-step=40.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 40}, path)

    loaded = build_backbone("resnet18", num_classes=3, in_chans=1, weights=str(path)).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained.eval()(x))


def test_densenet_file_with_legacy_keys_loads(tmp_path):
    # torchvision's densenet .pth file predates BatchNorm's num_batches_tracked and uses 'norm.1'-style
    # keys, which torchvision renames on load.
    state = get_model("densenet121").state_dict()
    legacy = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    assert legacy != state
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(legacy, path)
    model = build_backbone("densenet121", num_classes=2, weights=str(path))
    key = "features.denseblock1.denselayer1.conv2.weight"
    torch.testing.assert_close(model.state_dict()[key], state[key])


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(WeightsError, match="nowhere") as info:
        build_backbone("resnet18", num_classes=3, weights=str(path))
    assert "state dict" in str(info.value)


def test_mismatched_keys_are_listed(imagenet_resnet18):
    path, _ = imagenet_resnet18
    with pytest.raises(WeightsError, match=r"missing keys.*unexpected keys") as info:
        build_backbone("regnet_y_800mf", num_classes=3, weights=str(path))
    assert "stem.0.weight" in str(info.value) and "conv1.weight" in str(info.value)


def test_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="garbage.pth"):
        build_backbone("resnet18", num_classes=3, weights=str(path))


@pytest.mark.parametrize("error", [URLError("no route to host"), OSError("Network is unreachable")])
def test_default_weights_offline_suggests_local_file(monkeypatch, error):
    def offline(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError, match="offline") as info:
        build_backbone("resnet18", num_classes=3, weights="default")
    msg = str(info.value)
    assert "local file" in msg and "resnet18-f37072fd.pth" in msg


def test_default_weights_load_when_download_works(monkeypatch):
    state = get_model("resnet18").state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: dict(state))
    model = build_backbone("resnet18", num_classes=3, weights="default")
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_fold_input_conv_repeats_and_rescales_for_more_channels():
    weight = torch.randn(8, 3, 3, 3)
    folded = fold_input_conv(weight, 4)
    assert folded.shape == (8, 4, 3, 3)
    torch.testing.assert_close(folded[:, 3], weight[:, 0] * 0.75)
    torch.testing.assert_close(folded, torch.cat([weight, weight[:, :1]], dim=1) * 0.75)


def test_a_seeded_build_leaves_the_generator_where_earlier_versions_left_it():
    """The 1-channel stem is a new conv (its initialisation draws from the seeded generator, as a
    fresh torchvision model plus that conv do), so the random stream after the model is built, and
    with it the data order and dropout of a seeded run, is the one earlier versions had. A
    shrink folded the kernels into the old conv in place and shifted every seeded run."""
    torch.manual_seed(0)
    get_model("resnet18", weights=None, num_classes=2)
    nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    expected = torch.rand(4)
    torch.manual_seed(0)
    build_backbone("resnet18", num_classes=2, in_chans=1, weights="none")
    assert torch.equal(torch.rand(4), expected)

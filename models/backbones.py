"""Torchvision classification backbones by name, adapted to X-rays (1-channel input, N classes):
one factory, `build_backbone` (as `timm.create_model`), the same generic steps for every
architecture: torchvision's own head init, the first Conv2d's kernels folded to `in_chans` (the
random init too, fold_input_conv), the last Linear behind the only Dropout. Pretrained weights
are folded the same way; an ImageNet head of another `num_classes` is dropped."""

from __future__ import annotations

import difflib
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import get_model, get_model_builder, get_model_weights

# The supported architectures: a Literal, so that --help lists them and sweeps can check values.
BackboneName = Literal[
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "convnext_tiny",
    "mobilenet_v3_large",
    "regnet_y_800mf"
]
BACKBONES: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {n: get_model_builder(n) for n in get_args(BackboneName)}
)

# Prefixes a wrapped state dict may carry: our LightningModule's attribute, DDP's wrapper.
_STRIP_PREFIXES = ("backbone.", "module.")
# torchvision's densenet .pth files still use 'norm.1'-style keys; torchvision renames them on load.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class UnknownBackboneError(ValueError):
    """A backbone name that is not in `BACKBONES`."""


class WeightsError(ValueError):
    """Pretrained weights that cannot be downloaded, read or matched to the architecture."""


def build_backbone(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 1,
    weights: str = "none",
    dropout: float = 0.0,
) -> nn.Module:
    """A torchvision classifier for `in_chans`-channel images of any size >= 32x32. `weights`:
    "none", "default" (torchvision's ImageNet weights, downloaded) or a local .pth/.pt state dict
    (torchvision's file, one adapted to in_chans/num_classes, or a Lightning checkpoint)."""
    if name not in BACKBONES:
        close = difflib.get_close_matches(str(name).lower(), list(BACKBONES), n=1, cutoff=0.6)
        hint = f". Did you mean {close[0]!r}?" if close else ""
        choices = ", ".join(sorted(BACKBONES))
        raise UnknownBackboneError(f"unknown backbone {name!r}; choose one of: {choices}{hint}")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")

    model = get_model(name, weights=None, num_classes=num_classes)
    stem_name = _replace_stem(model, in_chans)
    head_name = _replace_head(model, dropout)

    key = str(weights).strip()
    if key.lower() == "none":
        return model
    state = _download_default(name) if key.lower() == "default" else _read_file(Path(weights).expanduser())
    _load(model, state, stem_name=stem_name, head_name=head_name, source=key)
    return model


def fold_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A (out, 3, kh, kw) kernel for `in_chans` inputs, as timm's `adapt_input_conv`: summed for
    one (a grey image gets the response of its copy in R, G and B), else tiled and rescaled by
    3/in_chans to keep the activation scale."""
    if weight.shape[1] == in_chans:
        return weight
    if weight.shape[1] != 3:
        raise WeightsError(
            f"cannot adapt a {weight.shape[1]}-channel stem to {in_chans} channels; only 3 folds"
        )
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_chans // 3)
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3 / in_chans)


def _replace_stem(model: nn.Module, in_chans: int) -> str:
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels != in_chans:
        # A new conv, not the old one with folded kernels: its initialisation draws from the seeded
        # global generator, so a seed gives the data order and dropout it gave in earlier versions.
        new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                        padding_mode=conv.padding_mode)
        with torch.no_grad():
            new.weight.copy_(fold_input_conv(conv.weight, in_chans))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)
    return name


def _replace_head(model: nn.Module, dropout: float) -> str:
    name, linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    before = int(attr) - 1 if isinstance(parent, nn.Sequential) and attr.isdigit() else -1
    if before >= 0 and isinstance(parent[before], nn.Dropout):
        parent[before] = nn.Identity()  # the architecture's own (efficientnet, mobilenet_v3)
    setattr(parent, attr, nn.Sequential(nn.Dropout(dropout), linear))
    return name


def _download_default(name: str) -> dict[str, torch.Tensor]:
    enum = get_model_weights(name).DEFAULT
    filename = enum.url.rsplit("/", 1)[-1]
    try:
        return enum.get_state_dict(progress=True, check_hash=True)
    except (URLError, OSError) as e:
        raise WeightsError(
            f"could not download the default weights for {name} from {enum.url} ({e}); this machine seems "
            f"offline. Copy {filename} from a machine with internet access and pass its local file path "
            f"as weights=/path/to/{filename}, or put it in {Path(torch.hub.get_dir()) / 'checkpoints'}."
        ) from e


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    expected = (
        "a .pth/.pt state dict of the torchvision architecture (the ImageNet file as torchvision "
        "downloads it, or one adapted to in_chans/num_classes), or a checkpoint with a 'state_dict' key"
    )
    if not path.is_file():
        raise WeightsError(
            f"weights file {str(path)!r} not found; weights must be 'none', 'default' or {expected}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise WeightsError(f"cannot read weights file {str(path)!r} ({e}); expected {expected}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {str(path)!r} holds no state dict of tensors; expected {expected}")
    return dict(obj)


def _load(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, stem_name: str, head_name: str, source: str
) -> None:
    for prefix in _STRIP_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    renamed = {}
    for key, value in state.items():
        if m := _DENSENET_OLD_KEY.match(key):
            key = m.group(1) + m.group(2)
        if key in (f"{head_name}.weight", f"{head_name}.bias"):  # torchvision's bare Linear head
            key = f"{head_name}.1.{key.rpartition('.')[2]}"
        renamed[key] = value
    state = renamed
    target = model.state_dict()
    stem_key, head_keys = f"{stem_name}.weight", {f"{head_name}.1.weight", f"{head_name}.1.bias"}

    # Files saved before PyTorch 0.4.1 (torchvision's densenet) lack BatchNorm's num_batches_tracked.
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]  # both in module order: the stem comes first
    if missing or unexpected:
        raise WeightsError(
            f"weights {source!r} do not match {type(model).__name__}: "
            f"{len(missing)} missing keys (e.g. {missing[:5]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:5]}). Is the file for a different architecture?"
        )
    if stem_key in state:
        state[stem_key] = fold_input_conv(state[stem_key], target[stem_key].shape[1])
    if any(state[k].shape != target[k].shape for k in head_keys):
        state = {k: v for k, v in state.items() if k not in head_keys}  # other num_classes: keep fresh head
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state.items()
        if v.shape != target[k].shape
    ]
    if wrong:
        raise WeightsError(
            f"weights {source!r} have {len(wrong)} tensors of the wrong shape, e.g. {wrong[:3]}"
        )
    model.load_state_dict(state, strict=False)

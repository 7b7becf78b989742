"""Backbones: torchvision ResNets with n input channels, feature taps, torchvision-loadable export.

The encoder *is* a torchvision ResNet (only `conv1` widened to n channels and `fc` removed), so
its state_dict loads into `torchvision.models.resnet50()` after the same two changes:

    model = torchvision.models.resnet50()
    model.conv1 = torch.nn.Conv2d(n, 64, 7, 2, 3, bias=False)
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load("backbone.pt"))
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

ARCHS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}
STAGES = ("layer1", "layer2", "layer3", "layer4")


def resnet(arch: str, in_channels: int) -> torchvision.models.ResNet:
    """A randomly initialised torchvision ResNet taking `in_channels` bands, without `fc`."""
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; expected one of {sorted(ARCHS)}")
    model = ARCHS[arch](weights=None)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.fc = nn.Identity()
    return model


def feature_dim(arch: str) -> int:
    return 512 if arch == "resnet18" else 2048


def residual_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision residual block's output before its last ReLU (relu of it is the output)."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, torchvision.models.resnet.Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        return block.bn3(block.conv3(out)) + identity
    return block.bn2(block.conv2(out)) + identity


class Encoder(nn.Module):
    """A ResNet returning the outputs of the requested stages (and the pooled last one).

    `signed_taps`: a tapped stage gives its last block's residual sum before the final ReLU,
    signed like the block outputs of a pre-activation ResNet (the Keras ResNet50V2 that CSF's
    code taps), instead of the non-negative ReLU output. The network computes the same either
    way; only what the taps return differs.
    """

    def __init__(
        self,
        arch: str,
        in_channels: int,
        taps: tuple[str, ...] = STAGES[-2:],
        signed_taps: bool = False,
    ) -> None:
        super().__init__()
        unknown = set(taps) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown feature taps {sorted(unknown)}; expected {STAGES}")
        self.arch, self.in_channels, self.taps = arch, in_channels, tuple(taps)
        self.signed_taps = signed_taps
        self.backbone = resnet(arch, in_channels)
        self.dim = feature_dim(arch)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        out = {}
        for name in STAGES:
            stage = getattr(b, name)
            if name in self.taps and self.signed_taps:
                for block in list(stage)[:-1]:
                    x = block(x)
                out[name] = residual_sum(stage[-1], x)
                x = torch.relu(out[name])
            else:
                x = stage(x)
                if name in self.taps:
                    out[name] = x
        out["pool"] = torch.flatten(b.avgpool(x), 1)
        return out

    def export_state(self) -> dict[str, torch.Tensor]:
        """The torchvision ResNet's state_dict (no fc), tensors detached on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}


def load_backbone(arch: str, state: dict[str, torch.Tensor]) -> torchvision.models.ResNet:
    """A torchvision ResNet with `state` loaded (the number of input bands read from it)."""
    model = resnet(arch, state["conv1.weight"].shape[1])
    model.load_state_dict(state)
    return model

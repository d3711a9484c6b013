"""DRNET networks: encoders, decoders, scene discriminator, pose LSTM, and their registry.

Every encoder maps frames (B, C, S, S) in [0, 1] to `(h, skips)`: a vector h of shape (B, dim) and
the list of its intermediate feature maps (finest first) that the skip decoder concatenates.
Every decoder maps `(h_c, h_p, skips)` back to frames (B, C, S, S) in [0, 1].
`ENCODERS` and `DECODERS` name the architectures; `datasets.DATASETS` says which one each dataset uses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from utils import DRNetError

SUPPORTED_SIZES = (64, 128)


def check_image_size(image_size: int) -> int:
    """Return the number of stride-2 stages that bring `image_size` down to 4 px, or raise."""
    if image_size not in SUPPORTED_SIZES:
        raise DRNetError(f"unsupported image size {image_size}: the networks are built for "
                         f"{' or '.join(map(str, SUPPORTED_SIZES))} px")
    return image_size.bit_length() - 3  # 64 -> 4 stages, 128 -> 5 stages


def stage_channels(num_stages: int, base: int = 64, cap: int = 512) -> list[int]:
    """Feature channels per stride-2 stage, finest first: 64, 128, 256, 512, then 512 again."""
    return [min(base * 2**i, cap) for i in range(num_stages)]


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """4x4 stride-2 convolution halving the resolution, BatchNorm, LeakyReLU(0.2)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True))


def upconv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """4x4 stride-2 transposed convolution doubling the resolution, BatchNorm, LeakyReLU(0.2)."""
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True))


class Encoder(nn.Module):
    """DCGAN encoder used for both content and pose: stride-2 stages down to 4 px, then a 4x4 valid conv."""

    def __init__(self, channels: int, dim: int, image_size: int = 64):
        super().__init__()
        widths = stage_channels(check_image_size(image_size))
        self.stages = nn.ModuleList(
            conv_block(c_in, c_out) for c_in, c_out in zip([channels] + widths[:-1], widths, strict=True))
        self.head = nn.Sequential(nn.Conv2d(widths[-1], dim, 4, 1, 0, bias=False),
                                  nn.BatchNorm2d(dim), nn.Tanh())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return self.head(x).flatten(1), skips


class Decoder(nn.Module):
    """DCGAN decoder: (h_c, h_p) -> 4x4 map -> stride-2 stages -> frame; optionally U-Net skips."""

    def __init__(self, channels: int, content_dim: int, pose_dim: int, image_size: int = 64,
                 use_skip: bool = False):
        super().__init__()
        widths = stage_channels(check_image_size(image_size))[::-1]  # coarsest first: 512, ..., 64
        self.use_skip = use_skip
        grow = 2 if use_skip else 1  # each stage's input doubles when the content map is concatenated
        self.head = nn.Sequential(nn.ConvTranspose2d(content_dim + pose_dim, widths[0], 4, 1, 0, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.LeakyReLU(0.2, inplace=True))
        self.stages = nn.ModuleList(
            upconv_block(grow * c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:], strict=True))
        self.out = nn.Sequential(nn.ConvTranspose2d(grow * widths[-1], channels, 4, 2, 1), nn.Sigmoid())

    def forward(self, h_c: torch.Tensor, h_p: torch.Tensor, skips: list[torch.Tensor] | None = None
                ) -> torch.Tensor:
        if self.use_skip and not skips:
            raise ValueError("this decoder uses skip connections: pass the content encoder's skips")
        x = self.head(torch.cat([h_c, h_p], dim=1)[:, :, None, None])
        layers = [*self.stages, self.out]
        for i, layer in enumerate(layers):
            if self.use_skip:
                x = torch.cat([x, skips[-1 - i]], dim=1)
            x = layer(x)
        return x


class SceneDiscriminator(nn.Module):
    """MLP guessing whether two pose vectors come from the same clip; returns logits (B,)."""

    def __init__(self, pose_dim: int, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * pose_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, h_p1: torch.Tensor, h_p2: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([h_p1, h_p2], dim=1)).squeeze(1)


ENCODERS = {"dcgan": Encoder}
DECODERS = {"dcgan": Decoder}


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv/linear weights N(0, 0.02), biases 0; BatchNorm weights N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Content(NamedTuple):
    """The content of a frame: its vector `h` (B, content_dim) and the feature maps the skip decoder uses."""

    h: torch.Tensor
    skips: list[torch.Tensor]


class DRNet(nn.Module):
    """The four DRNET networks built from a resolved config, with the encode/decode API."""

    def __init__(self, config: dict):
        super().__init__()
        size, channels = config["image_width"], config["channels"]
        content_dim, pose_dim = config["content_dim"], config["pose_dim"]
        self.use_skip = bool(config["use_skip"])
        self.content_encoder = ENCODERS[config["content_encoder"]](channels, content_dim, size)
        self.pose_encoder = ENCODERS[config["pose_encoder"]](channels, pose_dim, size)
        self.decoder = DECODERS[config["decoder"]](channels, content_dim, pose_dim, size, self.use_skip)
        self.scene_discriminator = SceneDiscriminator(pose_dim)
        self.apply(init_weights)

    def encode_content(self, x: torch.Tensor) -> Content:
        """Content of frames (B, C, H, W): `Content(h, skips)`; `skips` is empty without skip connections."""
        h, skips = self.content_encoder(x)
        return Content(h, skips if self.use_skip else [])

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        """Pose vectors (B, pose_dim) of frames (B, C, H, W)."""
        return self.pose_encoder(x)[0]

    def decode(self, h_c: Content, h_p: torch.Tensor) -> torch.Tensor:
        """Render frames (B, C, H, W) from a content (as returned by `encode_content`) and pose vectors."""
        return self.decoder(h_c.h, h_p, h_c.skips)

    def forward(self, x_content: torch.Tensor, x_pose: torch.Tensor) -> torch.Tensor:
        """Render the content of `x_content` in the pose of `x_pose`."""
        return self.decode(self.encode_content(x_content), self.encode_pose(x_pose))


def architecture_keys() -> tuple[str, ...]:
    """Config keys that fix the shapes of the networks; two checkpoints agree on them or are incompatible."""
    return ("content_encoder", "pose_encoder", "decoder", "image_width", "channels", "content_dim",
            "pose_dim", "use_skip")


def load_model(path: str, device: str | torch.device = "cpu") -> DRNet:
    """Rebuild the trained model from a checkpoint file alone; returned on `device`, in eval mode."""
    from utils import load_checkpoint

    checkpoint = load_checkpoint(path, map_location=device)
    model = DRNet(checkpoint["config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()

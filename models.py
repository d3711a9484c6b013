"""DRNET networks: encoders, decoders, scene discriminator, their registry, and the pose LSTM of the second stage.

Every encoder maps frames (B, C, S, S) in [0, 1] to `(h, skips)`: a vector h of shape (B, dim) and
the list of its intermediate feature maps (finest first) that the skip decoder concatenates. The skips of
every encoder have the same shapes: 64, 128, 256, 512 (, 512) channels at S/2, S/4, ..., 4 px, each taken
after its stage's downsampling, so any content encoder pairs with any decoder, with or without skips.
Every decoder maps `(h_c, h_p, skips)` back to frames (B, C, S, S) in [0, 1].
`ENCODERS` and `DECODERS` name the architectures; `datasets.registry.DATASETS` says which one each dataset uses,
and `Architecture` holds the fields of a configuration that fix the networks' shapes. Nothing here reads
or writes files. `DRNetPredictor` is a `DRNet` with its `PoseLSTM` and `predict`, which generates future
frames (the paper's forward prediction).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

SUPPORTED_SIZES = (64, 128)
# Options of the encoders' code heads, at the authors' values: a learnable BatchNorm scale on the content
# head, no projection onto the unit sphere. `normalize` puts both codes on the sphere (the Lua code's
# -normalize, edenton/drnet models/dcgan_64.lua), `normalize_pose` the pose only (drnet-py's --normalize,
# edenton/drnet-py models/dcgan_64.py, whose content encoder has no such option).
HEAD_DEFAULTS = {"content_affine": True, "normalize": False, "normalize_pose": False}


def check_image_size(image_size: int) -> int:
    """Return the number of stride-2 stages that bring `image_size` down to 4 px, or raise a ValueError."""
    if image_size not in SUPPORTED_SIZES:  # main.py refuses such a --image_width before any network is built
        raise ValueError(f"unsupported image size {image_size}: the networks are built for "
                         f"{' or '.join(map(str, SUPPORTED_SIZES))} px")
    return image_size.bit_length() - 3  # 64 -> 4 stages, 128 -> 5 stages


def stage_channels(num_stages: int, base: int = 64, cap: int = 512) -> list[int]:
    """Feature channels per stride-2 stage, finest first: 64, 128, 256, 512, then 512 again."""
    return [min(base * 2**i, cap) for i in range(num_stages)]


def conv_block(in_channels: int, out_channels: int, kernel_size: int = 4, stride: int = 2) -> nn.Sequential:
    """Convolution padded by 1 (stride 2 halves the resolution, 3x3 stride 1 keeps it), BatchNorm, LeakyReLU(0.2)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True))


def upconv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """4x4 stride-2 transposed convolution doubling the resolution, BatchNorm, LeakyReLU(0.2)."""
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True))


class StagedEncoder(nn.Module):
    """Encoder skeleton: stages down to 4 px (their outputs are the skips), then conv 4x4 valid -> dim, BN, Tanh.

    `affine=False` gives the head's BatchNorm no learnable scale and offset: with a learnable scale the
    similarity loss can shrink a code towards a constant while the decoder scales its weights up, a
    symmetry that costs reconstruction almost nothing. `normalize=True` then puts the code on the unit
    sphere, as the authors' Lua code does with its `-normalize` option (drnet/models/*.lua).
    """

    def __init__(self, stages: Iterable[nn.Module], width: int, dim: int, affine: bool = True,
                 normalize: bool = False):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.Conv2d(width, dim, 4, 1, 0, bias=False), nn.BatchNorm2d(dim, affine=affine),
                                  nn.Tanh())
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        h = self.head(x).flatten(1)
        return (F.normalize(h, dim=1) if self.normalize else h), skips


class Encoder(StagedEncoder):
    """DCGAN encoder used for both content and pose: stride-2 stages down to 4 px, then a 4x4 valid conv."""

    def __init__(self, channels: int, dim: int, image_size: int = 64, **head: bool):
        widths = stage_channels(check_image_size(image_size))
        stages = [conv_block(c_in, c_out) for c_in, c_out in zip([channels] + widths[:-1], widths, strict=True)]
        super().__init__(stages, widths[-1], dim, **head)


class StagedDecoder(nn.Module):
    """Decoder skeleton: convT 4x4 valid (h_c, h_p) -> width @ 4 px; each stage (`out` last) first takes its skip."""

    def __init__(self, content_dim: int, pose_dim: int, width: int, stages: Iterable[nn.Module], out: nn.Module,
                 use_skip: bool):
        super().__init__()
        self.use_skip = use_skip
        self.head = nn.Sequential(nn.ConvTranspose2d(content_dim + pose_dim, width, 4, 1, 0, bias=False),
                                  nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True))
        self.stages = nn.ModuleList(stages)
        self.out = out

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


class Decoder(StagedDecoder):
    """DCGAN decoder: (h_c, h_p) -> 4x4 map -> stride-2 stages -> frame; optionally U-Net skips."""

    def __init__(self, channels: int, content_dim: int, pose_dim: int, image_size: int = 64,
                 use_skip: bool = False):
        widths = stage_channels(check_image_size(image_size))[::-1]  # coarsest first: 512, ..., 64
        grow = 2 if use_skip else 1  # each stage's input doubles when the content map is concatenated
        stages = [upconv_block(grow * c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)]
        out = nn.Sequential(nn.ConvTranspose2d(grow * widths[-1], channels, 4, 2, 1), nn.Sigmoid())
        super().__init__(content_dim, pose_dim, widths[0], stages, out, use_skip)


# VGG16 and ResNet-18, the encoders the paper uses beyond Moving MNIST, built on the same skeletons, hence
# with the same skip shapes as DCGAN.
# The 3x3 convolutions keep the DCGAN defaults (BatchNorm, LeakyReLU(0.2)); nothing is pretrained.

VGG_BLOCK_DEPTHS = (2, 2, 3, 3, 3)  # 3x3 convs per VGG16 block, finest first; 128 px repeats the 512 block


class VGG16Encoder(StagedEncoder):
    """VGG16 encoder: blocks of 3x3 convs, each ending in a 2x2 max-pool whose output is its skip."""

    def __init__(self, channels: int, dim: int, image_size: int = 64, **head: bool):
        widths = stage_channels(check_image_size(image_size))  # 64 px: convs at 64, 32, 16, 8 px, pooled to 4
        depths = VGG_BLOCK_DEPTHS[:len(widths)]
        stages = [nn.Sequential(*(conv_block(c_in if i == 0 else width, width, 3, 1) for i in range(depth)),
                                nn.MaxPool2d(2))
                  for c_in, width, depth in zip([channels] + widths[:-1], widths, depths, strict=True)]
        super().__init__(stages, widths[-1], dim, **head)


class VGG16Decoder(StagedDecoder):
    """Mirror of `VGG16Encoder`: per block, nearest 2x upsampling, then 3x3 convs at that block's resolution.

    Layout at 64 px (g = 2 with skips, else 1): head 512 @4 -> [512g] up, 512, 512, 256 @8 -> [256g] up, 256,
    256, 128 @16 -> [128g] up, 128, 64 @32 -> [64g] up, 64, conv 3x3 -> channels, Sigmoid @64. At 128 px one more
    block, [512g] up, 512, 512, 512 @8, comes first and the later ones run at twice the resolution. [Cg] is the
    block input, with the skip concatenated before the upsampling (the same as upsampling both, 4x cheaper).
    """

    def __init__(self, channels: int, content_dim: int, pose_dim: int, image_size: int = 64,
                 use_skip: bool = False):
        widths = stage_channels(check_image_size(image_size))
        grow = 2 if use_skip else 1
        blocks = []
        for i in reversed(range(len(widths))):
            width = widths[i]
            convs = [conv_block(grow * width if j == 0 else width, width, 3, 1) for j in range(VGG_BLOCK_DEPTHS[i] - 1)]
            # The last conv hands the next finer block its width, as the encoder's first conv did the other way.
            last = ([conv_block(width, widths[i - 1], 3, 1)] if i
                    else [nn.Conv2d(width, channels, 3, 1, 1), nn.Sigmoid()])
            blocks.append(nn.Sequential(nn.Upsample(scale_factor=2), *convs, *last))
        super().__init__(content_dim, pose_dim, widths[-1], blocks[:-1], blocks[-1], use_skip)


class ResidualBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 convs with BatchNorm, plus the input (1x1 conv + BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_block(in_channels, out_channels, 3, stride),
                                  nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(out_channels))
        reshapes = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                       nn.BatchNorm2d(out_channels)) if reshapes else nn.Identity())
        self.activation = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class ResNet18Encoder(StagedEncoder):
    """ResNet-18 encoder for small frames: a 3x3 stem, then stages of two BasicBlocks, each halving the size."""

    def __init__(self, channels: int, dim: int, image_size: int = 64, **head: bool):
        widths = stage_channels(check_image_size(image_size))
        # ImageNet's 7x7 stride-2 stem and max-pool would end at 2 px from 64 px input; a stride-1 stem lets every
        # stage halve the resolution, so the skips take the DCGAN shapes (64 px: 64 @32 ... 512 @4).
        stages = [nn.Sequential(ResidualBlock(c_in, c_out, 2), ResidualBlock(c_out, c_out))
                  for c_in, c_out in zip(widths[:1] + widths[:-1], widths, strict=True)]
        stages[0].insert(0, conv_block(channels, widths[0], 3, 1))  # the first skip includes the stem
        super().__init__(stages, widths[-1], dim, **head)


class SceneDiscriminator(nn.Module):
    """MLP guessing whether two pose vectors come from the same clip; returns logits (B,)."""

    def __init__(self, pose_dim: int, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * pose_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, h_p1: torch.Tensor, h_p2: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([h_p1, h_p2], dim=1)).squeeze(1)


def discriminator_pairs(h_p1: torch.Tensor, h_p2: torch.Tensor, generator: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs for the scene discriminator: first half same clip (label 1), second half different clips (0).

    The second half pairs each row with another clip's vector through a random cyclic permutation,
    which has no fixed point, so no row is ever paired with itself.
    """
    batch = h_p1.shape[0]
    order = torch.randperm(batch, generator=generator).to(h_p1.device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)  # each clip's partner is the next clip on a random cycle
    half = batch // 2
    second = torch.cat([h_p2[:half], h_p2[partner[half:]]])
    labels = torch.cat([torch.ones(half), torch.zeros(batch - half)]).to(h_p1.device)
    return h_p1, second, labels


ENCODERS = {"dcgan": Encoder, "vgg16": VGG16Encoder, "resnet18": ResNet18Encoder}
DECODERS = {"dcgan": Decoder, "vgg16": VGG16Decoder}


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv/linear weights N(0, 0.02), biases 0; BatchNorm weights N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Content(NamedTuple):
    """The content of a frame: its vector `h` (B, content_dim) and the feature maps the skip decoder uses."""

    h: torch.Tensor
    skips: list[torch.Tensor]

    def row(self, i: int) -> Content:
        """The content of frame i alone, shaped as a batch of one."""
        return Content(self.h[i:i + 1], [s[i:i + 1] for s in self.skips])

    def expand(self, batch: int) -> Content:
        """A content of one frame (batch of 1) repeated for a batch, without copying."""
        return Content(self.h.expand(batch, -1), [s.expand(batch, -1, -1, -1) for s in self.skips])


@dataclass(frozen=True)
class Architecture:
    """The configuration fields that fix the networks; two checkpoints agree on all of them or are incompatible.

    The code-head options default to the authors' values, which checkpoints older than the options imply.
    """

    content_encoder: str
    pose_encoder: str
    decoder: str
    image_width: int
    channels: int
    content_dim: int
    pose_dim: int
    use_skip: bool
    content_affine: bool = HEAD_DEFAULTS["content_affine"]
    normalize: bool = HEAD_DEFAULTS["normalize"]
    normalize_pose: bool = HEAD_DEFAULTS["normalize_pose"]

    @classmethod
    def of(cls, config: dict) -> Architecture:
        """The architecture a configuration names (other keys are ignored)."""
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})


class DRNet(nn.Module):
    """The four DRNET networks built from a resolved config, with the encode/decode API."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)  # what it was built from: a loaded model says what it is
        shape = Architecture.of(config)
        self.use_skip = bool(shape.use_skip)
        self.content_encoder = ENCODERS[shape.content_encoder](
            shape.channels, shape.content_dim, shape.image_width, affine=shape.content_affine,
            normalize=shape.normalize)
        self.pose_encoder = ENCODERS[shape.pose_encoder](shape.channels, shape.pose_dim, shape.image_width,
                                                         normalize=shape.normalize or shape.normalize_pose)
        self.decoder = DECODERS[shape.decoder](shape.channels, shape.content_dim, shape.pose_dim, shape.image_width,
                                               self.use_skip)
        self.scene_discriminator = SceneDiscriminator(shape.pose_dim)
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


# ---- The second stage: a pose LSTM on top of a trained, frozen DRNET ----

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (hidden, cell), each (layers, B, hidden)
DECODE_CHUNK = 256  # frames per decoder call when a predicted sequence is rendered


class PoseLSTM(nn.Module):
    """Predicts the next pose: Linear(content+pose -> hidden), stacked LSTM layers, Linear(hidden -> pose), Tanh.

    It keeps no state between calls: every call starts from zeros sized by its own input's batch.
    The stacked layers are one `nn.LSTM`, so a run of true poses goes through them in one fused call
    (cuDNN, oneDNN): the same equations as a loop of `nn.LSTMCell`s (edenton/drnet-py models/lstm.py), summed in
    another order. State dicts written with those cells (`cells.{k}.weight_ih`, ...) still load.
    """

    def __init__(self, content_dim: int, pose_dim: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.content_dim, self.pose_dim, self.hidden = content_dim, pose_dim, hidden
        self.embed = nn.Linear(pose_dim + content_dim, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.out = nn.Sequential(nn.Linear(hidden, pose_dim), nn.Tanh())
        self._register_load_state_dict_pre_hook(_rename_cell_keys)

    def initial_state(self, like: torch.Tensor) -> LSTMState:
        """Zero hidden and cell states for the batch, device and dtype of `like` (B, ...)."""
        zeros = like.new_zeros(self.lstm.num_layers, like.shape[0], self.hidden)
        return zeros, zeros

    def _check(self, content: torch.Tensor, poses: torch.Tensor) -> None:
        batch = content.shape[0]
        # Exact shapes: a (B, pose_dim, 1, 1) pose would broadcast silently in the loss (the reference's bug).
        if content.shape != (batch, self.content_dim) or poses.shape[0] != batch or poses.shape[-1] != self.pose_dim:
            raise ValueError(f"expected content ({batch}, {self.content_dim}) and pose ({batch}, {self.pose_dim}), "
                             f"got {tuple(content.shape)} and {tuple(poses.shape)}")

    def _steps(self, content: torch.Tensor, poses: torch.Tensor, state: LSTMState | None
               ) -> tuple[torch.Tensor, LSTMState]:
        """Transitions reading poses (B, T, pose_dim) in turn, in one call of the stacked layers."""
        content = content.unsqueeze(1).expand(-1, poses.shape[1], -1)
        hidden, state = self.lstm(self.embed(torch.cat([poses, content], dim=2)), state or self.initial_state(poses))
        return self.out(hidden), state

    def step(self, content: torch.Tensor, pose: torch.Tensor, state: LSTMState | None = None
             ) -> tuple[torch.Tensor, LSTMState]:
        """One transition: content (B, content_dim) and pose (B, pose_dim) at t-1 -> pose (B, pose_dim) at t."""
        if pose.dim() != 2:
            raise ValueError(f"expected pose ({content.shape[0]}, {self.pose_dim}), got {tuple(pose.shape)}")
        self._check(content, pose)
        predicted, state = self._steps(content, pose.unsqueeze(1), state)
        return predicted.squeeze(1), state

    def forward(self, content: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: content (B, content_dim), poses (B, T, pose_dim) -> next poses (B, T, pose_dim)."""
        return self.unroll(content, poses, [False] * poses.shape[1])

    def rollout(self, content: torch.Tensor, observed: torch.Tensor, steps: int) -> torch.Tensor:
        """Generation: read the observed poses (B, n, pose_dim), then its own predictions for `steps` - 1 more.

        Returns every prediction, (B, n - 1 + steps, pose_dim): the poses of frames 1 to n - 1 + steps, the last
        `steps` of them generated.
        """
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        return self.unroll(content, observed, [False] * observed.shape[1] + [True] * (steps - 1))

    def unroll(self, content: torch.Tensor, poses: torch.Tensor, read_back: list[bool]) -> torch.Tensor:
        """The prediction after each step, (B, len(read_back), pose_dim): step t reads poses[:, t] (B, T, pose_dim),
        or with read_back[t] the prediction of step t - 1, detached.

        Detached as scheduled sampling (Bengio et al., 2015) treats the tokens it feeds back: a gradient through
        tens of read-back poses explodes (norms of 8 to 290 against 0.04 to 0.17 detached, measured on the
        shipped LSTM), and Adam at lr 2e-4 then raised the loss of a fixed batch from 0.075 to 0.16 in 15 steps.
        Each run of steps that read true poses is one fused call; each read-back step is a call of its own.
        """
        if poses.dim() != 3 or not read_back or read_back[0] or not all(read_back[poses.shape[1]:]):
            raise ValueError(f"expected poses (B, T, {self.pose_dim}) and read-back flags, the first False and "
                             f"every one from step T on True; got {tuple(poses.shape)} and {len(read_back)} flags, "
                             f"{sum(read_back)} True")
        self._check(content, poses)
        state, predicted, t = None, [], 0
        while t < len(read_back):
            end = t + 1
            while end < len(read_back) and read_back[end] == read_back[t]:
                end += 1
            if read_back[t]:
                for _ in range(t, end):
                    pose, state = self._steps(content, predicted[-1][:, -1:].detach(), state)
                    predicted.append(pose)
            else:
                pose, state = self._steps(content, poses[:, t:end], state)
                predicted.append(pose)
            t = end
        return torch.cat(predicted, dim=1)


def _rename_cell_keys(state_dict: dict, prefix: str, *_: object) -> None:
    """Load hook: name the weights of a state dict written by the LSTM-cell loop as `nn.LSTM` names them."""
    for key in [k for k in state_dict if k.startswith(prefix + "cells.")]:
        layer, name = key[len(prefix + "cells."):].split(".", 1)
        state_dict[f"{prefix}lstm.{name}_l{layer}"] = state_dict.pop(key)


class DRNetPredictor(DRNet):
    """A trained DRNET with its pose LSTM: the DRNet API plus `predict`, which generates future frames."""

    def __init__(self, config: dict, lstm_config: dict):
        super().__init__(config)
        self.lstm = PoseLSTM(config["content_dim"], config["pose_dim"], lstm_config["rnn_size"],
                             lstm_config["rnn_layers"])
        self.lstm.apply(init_weights)

    def drnet_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights of the DRNET networks alone, loadable into a plain `DRNet`."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("lstm.")}

    def load_weights(self, drnet_state: dict, lstm_state: dict) -> None:
        """Load DRNET weights (a `DRNet` state dict) and LSTM weights; every key must match."""
        self.load_state_dict({**drnet_state, **{f"lstm.{k}": v for k, v in lstm_state.items()}})

    def encode_pose_sequence(self, clips: torch.Tensor) -> torch.Tensor:
        """Pose vectors (B, T, pose_dim) of clips (B, T, C, H, W)."""
        return self.encode_pose(clips.flatten(0, 1)).unflatten(0, clips.shape[:2])

    @torch.no_grad()
    def predict(self, past: torch.Tensor, n_future: int) -> torch.Tensor:
        """Frames (B, n_future, C, H, W) that follow `past` (B, T, C, H, W) in [0, 1], T >= 1.

        Content comes from the last observed frame; the LSTM reads the observed poses, then its own
        predictions. Call it in eval mode (as `load_model` returns the model) for deterministic frames.
        """
        if past.dim() != 5 or past.shape[1] < 1:
            raise ValueError(f"expected past frames (B, T>=1, C, H, W), got {tuple(past.shape)}")
        if n_future < 1:
            raise ValueError(f"n_future must be at least 1, got {n_future}")
        content = self.encode_content(past[:, -1])
        poses = self.lstm.rollout(content.h, self.encode_pose_sequence(past), n_future)
        return self.decode_sequence(content, poses[:, -n_future:])

    def decode_sequence(self, content: Content, poses: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, C, H, W) of one content per clip in poses (B, T, pose_dim), in large batches.

        The pose LSTM runs first and the decoder afterwards, DECODE_CHUNK frames per call: one call per
        frame would leave the decoder with batches of a few frames, far slower on any device.
        """
        batch, steps = poses.shape[:2]
        flat_poses = poses.flatten(0, 1)

        def repeated(x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B * T, ...), clip-major like the poses
            return x[:, None].expand(batch, steps, *x.shape[1:]).flatten(0, 1)

        frames = []
        for start in range(0, batch * steps, DECODE_CHUNK):
            chunk = slice(start, start + DECODE_CHUNK)
            chunk_content = Content(repeated(content.h)[chunk], [repeated(s)[chunk] for s in content.skips])
            frames.append(self.decode(chunk_content, flat_poses[chunk]))
        return torch.cat(frames).unflatten(0, (batch, steps))

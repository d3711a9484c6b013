"""The LSTM stage's networks (the paper's forward prediction): a pose LSTM on top of a trained, frozen DRNET.

`DRNetPredictor` is a `DRNet` with its `PoseLSTM` and `predict`, which generates future frames.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models import Content, DRNet, init_weights

LSTMState = list[tuple[torch.Tensor, torch.Tensor]]  # (hidden, cell) per stacked LSTM cell
DECODE_CHUNK = 256  # frames per decoder call when a predicted sequence is rendered


class PoseLSTM(nn.Module):
    """Predicts the next pose: Linear(content+pose -> hidden), stacked LSTM cells, Linear(hidden -> pose), Tanh.

    It keeps no state between calls: every call starts from zeros sized by its own input's batch.
    """

    def __init__(self, content_dim: int, pose_dim: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.content_dim, self.pose_dim, self.hidden = content_dim, pose_dim, hidden
        self.embed = nn.Linear(pose_dim + content_dim, hidden)
        self.cells = nn.ModuleList(nn.LSTMCell(hidden, hidden) for _ in range(layers))
        self.out = nn.Sequential(nn.Linear(hidden, pose_dim), nn.Tanh())

    def initial_state(self, like: torch.Tensor) -> LSTMState:
        """Zero hidden and cell states for the batch, device and dtype of `like` (B, ...)."""
        zeros = like.new_zeros(like.shape[0], self.hidden)
        return [(zeros, zeros) for _ in self.cells]

    def step(self, content: torch.Tensor, pose: torch.Tensor, state: LSTMState | None = None
             ) -> tuple[torch.Tensor, LSTMState]:
        """One transition: content (B, content_dim) and pose (B, pose_dim) at t-1 -> pose (B, pose_dim) at t."""
        batch = content.shape[0]
        # Exact shapes: a (B, pose_dim, 1, 1) pose would broadcast silently in the loss (the reference's bug).
        if content.shape != (batch, self.content_dim) or pose.shape != (batch, self.pose_dim):
            raise ValueError(f"expected content ({batch}, {self.content_dim}) and pose ({batch}, {self.pose_dim}), "
                             f"got {tuple(content.shape)} and {tuple(pose.shape)}")
        x = self.embed(torch.cat([pose, content], dim=1))
        new_state = []
        for cell, (hidden, memory) in zip(self.cells, state or self.initial_state(content), strict=True):
            hidden, memory = cell(x, (hidden, memory))
            new_state.append((hidden, memory))
            x = hidden
        return self.out(x), new_state

    def forward(self, content: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: content (B, content_dim), poses (B, T, pose_dim) -> next poses (B, T, pose_dim)."""
        if poses.dim() != 3:
            raise ValueError(f"expected poses (B, T, {self.pose_dim}), got {tuple(poses.shape)}")
        state, predicted = None, []
        for t in range(poses.shape[1]):
            pose, state = self.step(content, poses[:, t], state)
            predicted.append(pose)
        return torch.stack(predicted, dim=1)


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
        observed = self.encode_pose_sequence(past)
        state = None
        for t in range(observed.shape[1]):
            pose, state = self.lstm.step(content.h, observed[:, t], state)
        poses = [pose]
        for _ in range(n_future - 1):
            pose, state = self.lstm.step(content.h, pose, state)
            poses.append(pose)
        return self.decode_sequence(content, torch.stack(poses, dim=1))

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

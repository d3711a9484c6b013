"""Stand-in models for the evaluation: predictors whose scores are known without training one."""

import torch

from models import Content


class CopyLastPredictor:
    """A stand-in pose LSTM that predicts the last observed frame.

    Its pose is the frame itself and its decoder draws the pose frame with full ink in the third channel.
    """

    def predict(self, past: torch.Tensor, n_future: int) -> torch.Tensor:
        return past[:, -1:].expand(-1, n_future, -1, -1, -1)

    def encode_content(self, x: torch.Tensor) -> Content:
        return Content(x.flatten(1), [])

    def encode_pose(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def decode(self, content: Content, pose: torch.Tensor) -> torch.Tensor:
        frames = pose.reshape(-1, 3, 64, 64).clone()
        frames[:, 2] = 1
        return frames


class BlankPredictor(CopyLastPredictor):
    """A stand-in pose LSTM that predicts black frames: its summed squared error is the targets' summed squared ink."""

    def predict(self, past: torch.Tensor, n_future: int) -> torch.Tensor:
        return torch.zeros(past.shape[0], n_future, *past.shape[2:])

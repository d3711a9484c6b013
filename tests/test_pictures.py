"""engine/pictures.py: a roll-out as strip, GIF and MP4, whose frames carry the row labels in the row's colour
(green while observed, then red), and the GIF alone, with one warning, where ffmpeg is missing."""

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image, ImageFont

from engine.pictures import label_strip_width, save_rollout


class NoisePredictor:
    """Stands in for a trained predictor: random future frames of the past frames' shape."""

    def predict(self, past: torch.Tensor, steps: int) -> torch.Tensor:
        """`steps` random frames per clip."""
        return torch.rand(past.shape[0], steps, *past.shape[2:], generator=torch.Generator().manual_seed(0))


def label_strip(frame: np.ndarray) -> np.ndarray:
    """The columns of an animation frame left of the first cell, where the row labels are."""
    return frame[:, :label_strip_width(ImageFont.load_default())]


def test_rollout_mp4_has_the_gifs_labelled_frames(tmp_path):
    clips = torch.rand(2, 5, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    strip, gif, mp4 = save_rollout(NoisePredictor(), clips, 3, 4, tmp_path, "rollout")
    assert strip.is_file() and mp4 == tmp_path / "rollout.mp4"
    with Image.open(gif) as animation:
        gif_frames = []
        for index in range(animation.n_frames):
            animation.seek(index)
            gif_frames.append(np.asarray(animation.convert("RGB")))
    video = imageio.get_reader(mp4)
    assert video.count_frames() == len(gif_frames) == 3 + 4
    mp4_frames = list(video.iter_data())
    assert mp4_frames[0].shape == gif_frames[0].shape  # no resizing to macro blocks
    for frames in (gif_frames, mp4_frames):
        # Dark text on the white strip, in the row's colour: green while observed, then red.
        labels = label_strip(frames[0]).astype(int)
        assert (labels.min(axis=2) < 128).any()
        assert ((labels[..., 1] - labels[..., 0]) > 100).any()
        later = label_strip(frames[-1]).astype(int)
        assert ((later[..., 0] - later[..., 1]) > 100).any()
    # Lossy H.264 stays close to the GIF's frames, labels included.
    assert np.abs(mp4_frames[0].astype(int) - gif_frames[0].astype(int)).mean() < 20


def test_rollout_without_ffmpeg_warns_once_and_keeps_the_gif(tmp_path, monkeypatch, caplog):
    import imageio_ffmpeg._io

    def no_ffmpeg() -> str:
        raise RuntimeError("No ffmpeg exe could be found")

    monkeypatch.setattr(imageio_ffmpeg._io, "get_ffmpeg_exe", no_ffmpeg)  # what the writer calls
    clips = torch.rand(2, 4, 3, 64, 64)
    with caplog.at_level("WARNING", logger="drnet"):
        _, gif, mp4 = save_rollout(NoisePredictor(), clips, 2, 2, tmp_path, "rollout")
    assert mp4 is None and not (tmp_path / "rollout.mp4").exists()
    assert Image.open(gif).n_frames == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "rollout.mp4 not written" in warnings[0] and "ffmpeg" in warnings[0]

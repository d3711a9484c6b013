"""datasets/moving_mnist.py's frame sampling of a DRNET training example (--sampling) and the code normalisation
of models.py (--normalize, --normalize_pose): which frames each of the authors' regimes takes, and the norms of
the codes."""

import pytest
import torch

import main
from datasets.moving_mnist import MovingMNIST
from datasets.registry import DATASETS, build_dataset
from engine.checkpoints import check_architecture
from models import DRNet


def clips_data(sampling: str, max_step: int = 12) -> MovingMNIST:
    """Two random-texture digits: every frame of a short clip differs from every other one."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (6, 28, 28), dtype=torch.uint8, generator=generator)
    return MovingMNIST(images, torch.arange(6), image_size=64, channels=3, max_step=max_step, num_digits=2,
                       sampling=sampling)


def drawn_frame_indices(data: MovingMNIST, batch: int, seed: int) -> torch.Tensor:
    """(B, 4): which frame of its clip each of x_c1, x_c2, x_p1, x_p2 is, found by comparing pixels with the clip."""
    frames = data.drnet_batch(batch, torch.Generator().manual_seed(seed))
    clips = data.sequence_batch(batch, 12, torch.Generator().manual_seed(seed))  # the same clips: drawn first
    indices = torch.full((batch, 4), -1)
    for b in range(batch):
        for k in range(4):
            matches = [t for t in range(12) if torch.equal(frames[k, b], clips[b, t])]
            assert len(matches) == 1, f"clip {b}, frame {k}: matches {matches}"
            indices[b, k] = matches[0]
    return indices


def test_the_default_sampling_is_the_independent_draws_of_before():
    assert MovingMNIST(torch.zeros(1, 28, 28, dtype=torch.uint8), torch.zeros(1)).sampling == "independent"
    data = clips_data("independent", max_step=20)
    generator = torch.Generator().manual_seed(4)
    clips = data.sample_clips(3, generator)
    times = torch.randint(20, (3, 4), generator=generator)  # what drnet_batch drew before the option existed
    expected = data.render_clips(clips, times).transpose(0, 1)
    assert torch.equal(data.drnet_batch(3, torch.Generator().manual_seed(4)), expected)


def test_py_sampling_takes_frames_0_to_3_of_every_clip():
    assert drawn_frame_indices(clips_data("py"), 5, seed=1).tolist() == [[0, 1, 2, 3]] * 5


def test_lua_sampling_takes_frame_0_a_target_1_to_10_frames_later_its_neighbour_and_any_partner():
    data = clips_data("lua", max_step=12)
    indices = drawn_frame_indices(data, 4, seed=2)
    content, similar, target, partner = indices.T
    assert (content == 0).all() and (similar == target + 1).all()
    assert 1 <= target[0] <= 10 and 0 <= partner[0] <= 11
    assert (indices == indices[0]).all()  # the Lua draws one offset per batch (math.random), not per clip
    times = torch.stack([data.drnet_times(2, torch.Generator().manual_seed(seed))[0] for seed in range(400)])
    assert set(times[:, 2].tolist()) == set(range(1, 11))  # every gap from 1 to 10 frames, no other
    assert set(times[:, 3].tolist()) == set(range(12))
    assert (times[:, 1] - times[:, 2] == 1).all() and (times[:, 0] == 0).all()


def test_lua_sampling_needs_three_frames_and_unknown_regimes_are_refused():
    with pytest.raises(main.DRNetError, match="--max_step of at least 3"):
        clips_data("lua", max_step=2)
    with pytest.raises(main.DRNetError, match="--sampling must be one of independent, lua, py"):
        clips_data("random")


def test_the_training_split_alone_takes_the_sampling(tmp_path):
    config = {**DATASETS["mnist"], "dataset": "mnist", "data_root": str(tmp_path), "max_step": 12, "num_digits": 2,
              "sampling": "py"}
    assert build_dataset(config, "train").sampling == "py"
    assert build_dataset(config, "test").sampling == "independent"  # test metrics comparable across regimes
    del config["sampling"]  # the config of a run older than the flag
    assert build_dataset(config, "train").sampling == "independent"


@pytest.mark.e2e
@pytest.mark.parametrize(("flags", "message"), [
    (["--dataset", "frames", "--sampling", "lua"], "--sampling lua follows the authors' Moving MNIST code"),
    (["--sampling", "lua", "--max_step", "2"], "--sampling lua needs --max_step of at least 3, got 2"),
])
def test_sampling_that_cannot_apply_is_one_line(tiny_args, tmp_path, fails_with_one_line, flags, message):
    fails_with_one_line(tiny_args(*flags), message, alone=True)
    assert not (tmp_path / "run").exists()


def code_norms(**head: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Norms of the content and pose vectors of a fresh Moving MNIST DRNET with the given head options."""
    torch.manual_seed(0)
    model = DRNet({**DATASETS["mnist"], **head}).eval()
    frames = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.encode_content(frames).h.norm(dim=1), model.encode_pose(frames).norm(dim=1)


def test_normalize_puts_both_codes_on_the_unit_sphere_and_normalize_pose_the_pose_only():
    content, pose = code_norms(normalize=True)  # the Lua -normalize
    assert torch.allclose(content, torch.ones(3)) and torch.allclose(pose, torch.ones(3))
    content, pose = code_norms(normalize_pose=True)  # drnet-py's --normalize
    assert torch.allclose(pose, torch.ones(3)) and not torch.allclose(content, torch.ones(3), atol=0.1)
    content, pose = code_norms()
    assert not torch.allclose(pose, torch.ones(3), atol=0.1) and not torch.allclose(content, torch.ones(3), atol=0.1)


def test_a_checkpoint_older_than_normalize_pose_loads_and_matches_its_default(tmp_path):
    old = {**DATASETS["mnist"], "dataset": "mnist", "normalize": True}
    old.pop("loader")
    model = DRNet(old)  # built from a config without the key: the pose is normalised by `normalize` alone
    assert model.pose_encoder.normalize and model.content_encoder.normalize
    check_architecture({"config": old}, {**old, "normalize_pose": False}, tmp_path / "old.pt")
    with pytest.raises(main.DRNetError, match="normalize_pose=False \\(asked: True\\)"):
        check_architecture({"config": old}, {**old, "normalize_pose": True}, tmp_path / "old.pt")

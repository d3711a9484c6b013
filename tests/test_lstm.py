"""train_lstm.py and the pose LSTM of models.py: the LSTM, its loss, the frozen DRNET, the code pool, `predict`,
half-precision exports, and `main.py --use_lstm True` runs.

One two-iteration DRNET run (conftest's module fixture `drnet_dir`) feeds the end-to-end tests (marked e2e);
settings are tiny.
"""

import hashlib
import math
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch
import torch.nn as nn
from fakes.runs import small_mnist_config
from PIL import Image, ImageFont

import main
from engine.checkpoints import export_lstm, export_weights, load_model
from engine.config import LSTM_DEFAULTS, resolve_run
from engine.pictures import label_strip_width
from models import DRNet, DRNetPredictor, PoseLSTM
from train_lstm import (
    CodePool,
    encode_clips,
    freeze_drnet,
    input_noise,
    lstm_step,
    lstm_update,
    pose_loss,
    read_back_pattern,
)
from utils import DRNetError, read_metrics


@pytest.fixture(scope="module")
def lstm_dir(drnet_dir, tiny) -> tuple[Path, dict[str, str]]:
    """The LSTM run of two iterations on top of `drnet_dir`, and digests of the DRNET files before it ran."""
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in drnet_dir.iterdir() if p.is_file()}
    main.main(["--use_lstm", "True", "--save_dir", str(drnet_dir), "--max_iter", "2", "--save_iters", "1",
               "--rollout_len", "12", *tiny])
    return drnet_dir / "lstm", before


def test_pose_lstm_state_is_per_call_and_batch_size_independent():
    torch.manual_seed(0)
    lstm = PoseLSTM(content_dim=6, pose_dim=3, hidden=8, layers=2)
    content, poses = torch.randn(5, 6), torch.rand(5, 7, 3) * 2 - 1
    together = lstm(content, poses)
    one_by_one = torch.cat([lstm(content[i:i + 1], poses[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, one_by_one, rtol=0, atol=1e-6)
    torch.testing.assert_close(lstm(content, poses), together, rtol=0, atol=0)  # nothing carried over
    assert lstm(content[:2], poses[:2, :4]).shape == (2, 4, 3)
    assert list(lstm.buffers()) == []
    first, (hidden, memory) = lstm.step(content, poses[:, 0])
    assert hidden.shape == memory.shape == (2, 5, 8)  # (layers, B, hidden)
    # One step alone and the first of seven in one fused call: the same sums, up to their order.
    torch.testing.assert_close(first, together[:, 0], rtol=0, atol=1e-6)


def test_teacher_forced_loss_equals_hand_computed_value():
    lstm = PoseLSTM(content_dim=1, pose_dim=2, hidden=2, layers=1)
    with torch.no_grad():
        for parameter in lstm.parameters():
            parameter.zero_()
        lstm.out[0].bias.copy_(torch.atanh(torch.tensor([0.5, -0.5])))  # every prediction is (0.5, -0.5)
    poses = torch.tensor([[[0.9, 0.9], [0.5, -0.5], [0.1, -0.1]],
                          [[0.0, 0.0], [0.7, -0.5], [0.5, 0.5]]])
    # Targets are poses 1 and 2 of each clip: squared errors 0, 0, .16, .16 and .04, 0, 0, 1 over 8 values.
    loss = pose_loss(lstm, torch.zeros(2, 1), poses)
    assert loss.item() == pytest.approx(1.36 / 8, abs=1e-6)


def test_teacher_forced_loss_follows_the_lstm_equations():
    torch.manual_seed(1)
    lstm = PoseLSTM(content_dim=2, pose_dim=3, hidden=4, layers=1)
    content, poses = torch.randn(2, 2), torch.rand(2, 4, 3) * 2 - 1
    layer = lstm.lstm
    hidden = memory = torch.zeros(2, 4)
    squared_errors = []
    for t in range(1, 4):  # input [h_p(t-1), h_c], target h_p(t)
        x = lstm.embed(torch.cat([poses[:, t - 1], content], dim=1))
        gates = x @ layer.weight_ih_l0.T + layer.bias_ih_l0 + hidden @ layer.weight_hh_l0.T + layer.bias_hh_l0
        i, f, g, o = gates.chunk(4, dim=1)
        memory = torch.sigmoid(f) * memory + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(memory)
        predicted = torch.tanh(lstm.out[0](hidden))
        squared_errors.append((predicted - poses[:, t]) ** 2)
    expected = torch.stack(squared_errors).mean()
    torch.testing.assert_close(pose_loss(lstm, content, poses), expected)


def test_weights_saved_by_the_lstm_cell_loop_load_and_predict_as_that_loop():
    torch.manual_seed(7)
    embed, cells, out = nn.Linear(5, 4), nn.ModuleList(nn.LSTMCell(4, 4) for _ in range(2)), nn.Linear(4, 3)
    old = {"embed": embed, "cells": cells, "out": nn.Sequential(out, nn.Tanh())}  # the layout of earlier checkpoints
    state = {f"lstm.{name}": value for name, value in nn.ModuleDict(old).state_dict().items()}
    parent = nn.ModuleDict({"lstm": PoseLSTM(content_dim=2, pose_dim=3, hidden=4, layers=2)})
    parent.load_state_dict(state)  # strict: every old key is mapped, every new one filled
    content, poses = torch.randn(2, 2), torch.rand(2, 5, 3) * 2 - 1
    layers, expected = [(torch.zeros(2, 4), torch.zeros(2, 4))] * 2, []
    for t in range(5):
        x = embed(torch.cat([poses[:, t], content], dim=1))
        for k, cell in enumerate(cells):
            layers[k] = cell(x, layers[k])
            x = layers[k][0]
        expected.append(torch.tanh(out(x)))
    torch.testing.assert_close(parent["lstm"](content, poses), torch.stack(expected, dim=1), rtol=0, atol=1e-6)


def test_pose_noise_is_added_to_the_poses_read_and_not_to_the_targets():
    torch.manual_seed(2)
    lstm = PoseLSTM(content_dim=2, pose_dim=3, hidden=4, layers=2)
    content, poses, noise = torch.randn(2, 2), torch.rand(2, 5, 3) * 2 - 1, torch.randn(2, 4, 3) * 0.1
    expected = ((lstm(content, poses[:, :-1] + noise) - poses[:, 1:]) ** 2).mean()
    torch.testing.assert_close(pose_loss(lstm, content, poses, noise=noise), expected)
    assert pose_loss(lstm, content, poses, noise=torch.zeros(2, 4, 3)).item() == pose_loss(lstm, content, poses).item()
    assert pose_loss(lstm, content, poses, noise=noise).item() != pose_loss(lstm, content, poses).item()


def test_input_noise_depends_on_the_seed_and_iteration_alone():
    shape, cpu = torch.Size([200, 99, 5]), torch.device("cpu")
    assert input_noise(shape, 0.0, 1, 7, cpu) is None
    noise = input_noise(shape, 0.05, 1, 7, cpu)
    assert noise.shape == shape and noise.std().item() == pytest.approx(0.05, rel=0.02)
    assert torch.equal(noise, input_noise(shape, 0.05, 1, 7, cpu))  # a resumed run draws it again
    assert not torch.equal(noise, input_noise(shape, 0.05, 1, 8, cpu))
    assert not torch.equal(noise, input_noise(shape, 0.05, 2, 7, cpu))  # another seed (or rank)
    observed_clean = input_noise(shape, 0.05, 1, 7, cpu, clean=10)  # --noise_observed False, --n_past 10
    assert torch.equal(observed_clean[:, :10], torch.zeros(200, 10, 5))
    assert torch.equal(observed_clean[:, 10:], noise[:, 10:])  # the same draws on the poses after them


def test_read_back_pattern_follows_the_observed_poses_with_runs_of_own_predictions():
    as_text = lambda flags: "".join("p" if own else "t" for own in flags)  # noqa: E731
    assert as_text(read_back_pattern(12, 3, 2)) == "tttpptpptppt"
    assert as_text(read_back_pattern(6, 2, 0)) == "tttttt"  # teacher forcing
    assert as_text(read_back_pattern(6, 2, 9)) == "ttpppp"  # reads back all of them, as a roll-out does


def test_a_loss_that_reads_back_its_predictions_equals_the_hand_rolled_steps():
    torch.manual_seed(4)
    lstm = PoseLSTM(content_dim=2, pose_dim=3, hidden=4, layers=2)
    content, poses = torch.randn(2, 2), torch.rand(2, 7, 3) * 2 - 1
    read_back = read_back_pattern(6, 2, 2)  # inputs: true 0, 1, own 2, 3, true 4, own 5
    state, pose, squared_errors = None, None, []
    for t in range(6):
        pose, state = lstm.step(content, pose if t in (2, 3, 5) else poses[:, t], state)
        squared_errors.append((pose - poses[:, t + 1]) ** 2)
    loss = pose_loss(lstm, content, poses, read_back)
    torch.testing.assert_close(loss, torch.stack(squared_errors).mean())
    assert loss.item() != pose_loss(lstm, content, poses).item()  # teacher forcing reads the true poses
    # Poses read back in place of the true ones are targets alone: changing them changes only those terms.
    changed = poses.clone()
    changed[:, [2, 3, 5]] = 0.0
    predicted = lstm.unroll(content, poses[:, :-1], read_back)
    torch.testing.assert_close(pose_loss(lstm, content, changed, read_back), ((predicted - changed[:, 1:]) ** 2).mean())


def test_no_gradient_flows_through_the_predictions_read_back():
    torch.manual_seed(5)
    lstm = PoseLSTM(content_dim=2, pose_dim=3, hidden=4, layers=1)
    content, poses = torch.randn(2, 2), torch.rand(2, 5, 3) * 2 - 1
    pose_loss(lstm, content, poses, read_back_pattern(4, 1, 4)).backward()
    loss_gradient = lstm.embed.weight.grad.clone()

    def hand_rolled(detach: bool) -> torch.Tensor:
        lstm.zero_grad()
        state, pose, squared_errors = None, poses[:, 0], []
        for t in range(1, 5):
            pose, state = lstm.step(content, pose.detach() if detach else pose, state)
            squared_errors.append((pose - poses[:, t]) ** 2)
        torch.stack(squared_errors).mean().backward()
        return lstm.embed.weight.grad.clone()

    torch.testing.assert_close(loss_gradient, hand_rolled(detach=True))
    assert not torch.allclose(loss_gradient, hand_rolled(detach=False))  # the gradient the detach leaves out


def test_rollout_continues_the_teacher_forced_steps():
    torch.manual_seed(6)
    lstm = PoseLSTM(content_dim=2, pose_dim=3, hidden=4, layers=2)
    content, observed = torch.randn(3, 2), torch.rand(3, 4, 3) * 2 - 1
    generated = lstm.rollout(content, observed, 5)
    assert generated.shape == (3, 4 - 1 + 5, 3)
    torch.testing.assert_close(generated[:, :4], lstm(content, observed), rtol=0, atol=0)
    state = None  # after the observed poses, each generated pose is read back as the next input
    for t in range(4):
        pose, state = lstm.step(content, observed[:, t], state)
    for t in range(4, 8):
        pose, state = lstm.step(content, pose, state)
        torch.testing.assert_close(generated[:, t], pose, rtol=0, atol=0)
    with pytest.raises(ValueError):
        lstm.rollout(content, observed, 0)
    with pytest.raises(ValueError):  # a true pose asked for beyond the poses given
        lstm.unroll(content, observed, [False] * 5)


def test_broadcasting_pose_shapes_are_rejected():
    lstm = PoseLSTM(content_dim=2, pose_dim=3, hidden=4, layers=1)
    content = torch.randn(2, 2)
    with pytest.raises(ValueError):  # the reference's (B, p, 1, 1) targets
        pose_loss(lstm, content, torch.rand(2, 4, 3, 1, 1))
    with pytest.raises(ValueError):
        lstm.step(content, torch.rand(2, 3, 1, 1))
    with pytest.raises(ValueError):
        lstm.step(content, torch.rand(1, 3))


def test_no_gradient_reaches_the_frozen_drnet(monkeypatch):
    torch.manual_seed(2)
    model = DRNetPredictor(small_mnist_config(), {"rnn_size": 16, "rnn_layers": 1})
    freeze_drnet(model)
    drnet_before = {k: v.clone() for k, v in model.drnet_state_dict().items()}  # BatchNorm statistics too
    lstm_before = {k: v.clone() for k, v in model.lstm.state_dict().items()}
    content_inputs, encode_content = [], model.encode_content
    monkeypatch.setattr(model, "encode_content", lambda x: content_inputs.append(x) or encode_content(x))
    optimizer = torch.optim.Adam(model.lstm.parameters(), lr=0.01)
    clips = torch.rand(2, 4, 1, 64, 64)
    loss = lstm_step(model, optimizer, clips, n_past=2)
    assert math.isfinite(loss)
    assert len(content_inputs) == 1 and torch.equal(content_inputs[0], clips[:, 1])  # the last observed frame
    assert not model.content_encoder.training and not model.pose_encoder.training and not model.decoder.training
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == name.startswith("lstm."), name
    for name, value in model.drnet_state_dict().items():
        assert torch.equal(value, drnet_before[name]), name
    assert any(not torch.equal(v, lstm_before[k]) for k, v in model.lstm.state_dict().items())


@pytest.mark.e2e
def test_lstm_run_writes_every_output(lstm_dir, drnet_dir):
    run_dir, drnet_digests = lstm_dir
    for name in ("config.json", "train.log", "metrics.csv", "test_metrics.csv", "checkpoint.pt",
                 "checkpoints/iter_0000001.pt", "checkpoints/iter_0000002.pt", "loss_curves.png"):
        assert (run_dir / name).is_file(), name
    assert [r["iteration"] for r in read_metrics(run_dir / "metrics.csv")] == [1, 2]
    assert all(math.isfinite(r["mse"]) for r in read_metrics(run_dir / "metrics.csv"))
    test_rows = read_metrics(run_dir / "test_metrics.csv")
    assert [r["iteration"] for r in test_rows] == [1, 2]
    assert set(test_rows[-1]) == {"iteration", "mse_step1", "copy_last_step1", "mse_step10", "copy_last_step10"}
    assert all(math.isfinite(v) for v in test_rows[-1].values())
    log_text = (run_dir / "train.log").read_text()
    assert "step 10" in log_text and "copy-last" in log_text
    # Strip: 4 clips x (generated row + ground-truth row), n_past + 12 cells of 64 + 2*2 px, 2 px padding.
    with Image.open(run_dir / "samples" / "rollout_0000002_every1.png") as strip:
        assert strip.size == (14 * 70 + 2, 8 * 70 + 2)
    with Image.open(run_dir / "samples" / "rollout_0000002.gif") as animation:
        assert animation.n_frames == 2 + 12
        animation.seek(0)
        first = animation.convert("RGB")
        animation.seek(13)
        last = animation.convert("RGB")
    corner = (label_strip_width(ImageFont.load_default()) + 3, 3)  # the first cell, right of the row labels
    assert first.getpixel(corner)[1] > 150 and first.getpixel(corner)[0] < 100  # observed: framed green
    assert last.getpixel(corner)[0] > 150 and last.getpixel(corner)[1] < 100  # generated: framed red
    assert imageio.get_reader(run_dir / "samples" / "rollout_0000002.mp4").count_frames() == 2 + 12
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in drnet_dir.iterdir() if p.is_file()}
    assert after == drnet_digests  # the DRNET run directory is left as it was


@pytest.mark.e2e
def test_lstm_checkpoint_is_self_contained_and_loads_as_a_predictor(lstm_dir, drnet_dir):
    checkpoint = torch.load(lstm_dir[0] / "checkpoint.pt", weights_only=True)
    drnet = torch.load(drnet_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["kind"] == "lstm" and checkpoint["iteration"] == 2
    assert checkpoint["drnet_config"] == drnet["config"]
    assert checkpoint["config"]["n_past"] == 2 and checkpoint["config"]["rnn_size"] == 256
    assert checkpoint["config"]["lr"] == 0.0002 and checkpoint["config"]["rollout_len"] == 12
    assert checkpoint["model"].keys() == drnet["model"].keys()
    assert all(torch.equal(v, drnet["model"][k]) for k, v in checkpoint["model"].items())  # frozen
    assert set(checkpoint["optimizers"]) == {"lstm"} and "rng" in checkpoint
    model = load_model(lstm_dir[0] / "checkpoint.pt")
    assert isinstance(model, DRNetPredictor) and not model.training
    plain = load_model(drnet_dir / "checkpoint.pt")
    assert type(plain) is DRNet


@pytest.mark.e2e
def test_predict_shapes_and_determinism(lstm_dir):
    model = load_model(lstm_dir[0] / "checkpoint.pt")
    past = torch.rand(3, 3, 3, 64, 64)
    one = model.predict(past[:1], 1)
    assert one.shape == (1, 1, 3, 64, 64)
    long = model.predict(past[:1], 600)  # batch 1, not the training batch of 4
    assert long.shape == (1, 600, 3, 64, 64)
    assert long.min() >= 0 and long.max() <= 1
    torch.testing.assert_close(long[:, :1], one, rtol=0, atol=1e-5)  # decoded in batches of other sizes
    torch.testing.assert_close(model.predict(past[:1], 20), long[:, :20], rtol=0, atol=1e-5)
    torch.testing.assert_close(model.predict(past, 20)[:1], long[:, :20], rtol=0, atol=1e-5)
    assert model.predict(past[:, :1], 2).shape == (3, 2, 3, 64, 64)  # a single observed frame


@pytest.mark.e2e
def test_sequence_decoding_in_chunks_equals_one_frame_at_a_time(lstm_dir, monkeypatch):
    import models

    model = load_model(lstm_dir[0] / "checkpoint.pt")
    content = model.encode_content(torch.rand(2, 3, 64, 64))
    poses = torch.rand(2, 7, model.lstm.pose_dim) * 2 - 1
    monkeypatch.setattr(models, "DECODE_CHUNK", 5)  # chunks that cut across clips
    with torch.no_grad():
        frames = model.decode_sequence(content, poses)
        one_by_one = torch.stack([model.decode(content, poses[:, t]) for t in range(7)], dim=1)
    assert frames.shape == (2, 7, 3, 64, 64)
    torch.testing.assert_close(frames, one_by_one, rtol=0, atol=1e-5)


@pytest.mark.e2e
def test_lstm_defaults_and_lr_flag(drnet_dir, shared, tmp_path):
    common = ["--use_lstm", "True", "--drnet_checkpoint", str(drnet_dir / "checkpoint.pt"), *shared]
    config = resolve_run(main.build_parser().parse_args([*common, "--save_dir", str(tmp_path / "a")])).config
    assert {k: config[k] for k in LSTM_DEFAULTS} == {"lr": 0.0002, "beta1": 0.9, "n_past": 10, "n_future": 10,
                                                          "rnn_size": 256, "rnn_layers": 2, "rollout_len": 500,
                                                          "code_pool": 20000, "free_steps": 0,
                                                          "pose_noise": 0.0, "noise_observed": True,
                                                          "amp_lstm": False}
    assert config["run_dir"] == str(tmp_path / "a" / "lstm")
    config = resolve_run(main.build_parser().parse_args([*common, "--save_dir", str(tmp_path / "b"),
                                                              "--lr", "0.001"])).config
    assert config["lr"] == 0.001


@pytest.mark.e2e
def test_new_lstm_run_takes_the_drnets_clips_unless_given(shared, tmp_path):
    one_digit = tmp_path / "one"
    main.main([*shared, "--max_iter", "1", "--batch_size", "2", "--num_digits", "1", "--save_dir", str(one_digit)])
    common = ["--use_lstm", "True", "--drnet_checkpoint", str(one_digit / "checkpoint.pt"), *shared]
    config = resolve_run(main.build_parser().parse_args([*common, "--save_dir", str(tmp_path / "a")])).config
    assert config["num_digits"] == 1
    given = main.build_parser().parse_args([*common, "--save_dir", str(tmp_path / "b"), "--num_digits", "3"])
    assert resolve_run(given).config["num_digits"] == 3


@pytest.mark.e2e
def test_resume_equals_one_uninterrupted_run(drnet_dir, tiny, tmp_path):
    common = ["--use_lstm", "True", "--drnet_checkpoint", str(drnet_dir / "checkpoint.pt"), "--rollout_len", "3",
              "--save_iters", "2", *tiny]
    main.main([*common, "--save_dir", str(tmp_path / "whole"), "--max_iter", "2"])
    main.main([*common, "--save_dir", str(tmp_path / "parts"), "--max_iter", "1"])
    main.main([*common, "--save_dir", str(tmp_path / "parts"), "--max_iter", "2", "--resume", "True"])
    whole = torch.load(tmp_path / "whole" / "lstm" / "checkpoint.pt", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "lstm" / "checkpoint.pt", weights_only=True)
    assert whole["iteration"] == parts["iteration"] == 2
    for key in ("lstm", "model"):
        assert all(torch.equal(v, parts[key][k]) for k, v in whole[key].items()), key
    whole_adam, parts_adam = whole["optimizers"]["lstm"]["state"], parts["optimizers"]["lstm"]["state"]
    assert all(torch.equal(whole_adam[i]["exp_avg"], parts_adam[i]["exp_avg"]) for i in whole_adam)
    assert (read_metrics(tmp_path / "whole" / "lstm" / "metrics.csv")
            == read_metrics(tmp_path / "parts" / "lstm" / "metrics.csv"))


def test_a_pool_batch_trains_the_lstm_exactly_as_encoding_its_clips():
    torch.manual_seed(3)
    model = DRNetPredictor(small_mnist_config(), {"rnn_size": 16, "rnn_layers": 1})
    freeze_drnet(model)
    clips = [torch.rand(3, 4, 1, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    pool = CodePool(batches=2, batch_size=3)
    for batch in clips:
        assert not pool.full
        pool.add(*encode_clips(model, batch, n_past=2))
    assert pool.full and pool.stored[0].shape == (6, 8) and pool.stored[1].shape == (6, 4, 3)
    with pytest.raises(ValueError):
        pool.add(*encode_clips(model, clips[0], n_past=2))
    content, poses = pool.batch(torch.tensor([3, 4, 5]))  # the second batch, as stored
    encoded = encode_clips(model, clips[1], n_past=2)
    assert torch.equal(content, encoded[0]) and torch.equal(poses, encoded[1])

    def trained(update) -> dict[str, torch.Tensor]:
        lstm = DRNetPredictor(small_mnist_config(), {"rnn_size": 16, "rnn_layers": 1}).lstm
        lstm.load_state_dict(model.lstm.state_dict())
        optimizer = torch.optim.Adam(lstm.parameters(), lr=0.01)
        update(lstm, optimizer)
        return lstm.state_dict()

    from_pool = trained(lambda lstm, optimizer: lstm_update(lstm, optimizer, content, poses))
    model_copy = DRNetPredictor(small_mnist_config(), {"rnn_size": 16, "rnn_layers": 1})
    model_copy.load_state_dict(model.state_dict())
    freeze_drnet(model_copy)

    def on_the_fly(lstm, optimizer):
        model_copy.lstm = lstm
        lstm_step(model_copy, optimizer, clips[1], n_past=2)

    assert all(torch.equal(v, from_pool[k]) for k, v in trained(on_the_fly).items())


def test_pool_indices_cover_the_pool_and_follow_the_generator():
    pool = CodePool(batches=3, batch_size=4)
    drawn = torch.cat([pool.indices(torch.Generator().manual_seed(i)) for i in range(50)])
    assert drawn.min() == 0 and drawn.max() == 11 and len(drawn) == 200
    assert torch.equal(pool.indices(torch.Generator().manual_seed(7)), pool.indices(torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError):
        pool.batch(torch.tensor([0]))  # nothing stored yet


@pytest.mark.e2e
def test_a_run_within_its_pool_equals_encoding_every_batch(drnet_dir, tiny, tmp_path):
    common = ["--use_lstm", "True", "--drnet_checkpoint", str(drnet_dir / "checkpoint.pt"), "--rollout_len", "3",
              "--save_iters", "2", "--max_iter", "2", *tiny]
    main.main([*common, "--save_dir", str(tmp_path / "pool"), "--code_pool", "8"])
    main.main([*common, "--save_dir", str(tmp_path / "none"), "--code_pool", "0"])
    pooled = torch.load(tmp_path / "pool" / "lstm" / "checkpoint.pt", weights_only=True)
    plain = torch.load(tmp_path / "none" / "lstm" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(v, plain["lstm"][k]) for k, v in pooled["lstm"].items())
    assert (tmp_path / "pool" / "lstm" / "code_pool_rank0.pt").is_file()
    assert not (tmp_path / "none" / "lstm" / "code_pool_rank0.pt").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("stop_at", [1, 3])  # resumed while the pool fills (encoded again) / once full (read back)
def test_resume_past_the_pool_equals_one_uninterrupted_run(stop_at, drnet_dir, tiny, tmp_path):
    common = ["--use_lstm", "True", "--drnet_checkpoint", str(drnet_dir / "checkpoint.pt"), "--rollout_len", "3",
              "--save_iters", "5", "--code_pool", "8", *tiny]  # a pool of 2 batches of 4; iterations 3-5 draw from it
    main.main([*common, "--save_dir", str(tmp_path / "whole"), "--max_iter", "5"])
    main.main([*common, "--save_dir", str(tmp_path / "parts"), "--max_iter", str(stop_at)])
    main.main([*common, "--save_dir", str(tmp_path / "parts"), "--max_iter", "5", "--resume", "True"])
    whole = torch.load(tmp_path / "whole" / "lstm" / "checkpoint.pt", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "lstm" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(v, parts["lstm"][k]) for k, v in whole["lstm"].items())
    assert (read_metrics(tmp_path / "whole" / "lstm" / "metrics.csv")
            == read_metrics(tmp_path / "parts" / "lstm" / "metrics.csv"))
    read_back = "encoded clips read from" in (tmp_path / "parts" / "lstm" / "train.log").read_text()
    assert read_back == (stop_at == 3)


@pytest.mark.e2e
def test_a_pool_encoded_again_on_resume_is_kept_for_the_next_resume(drnet_dir, tiny, tmp_path):
    common = ["--use_lstm", "True", "--drnet_checkpoint", str(drnet_dir / "checkpoint.pt"), "--rollout_len", "3",
              "--save_iters", "1", "--save_dir", str(tmp_path / "run"), *tiny]
    main.main([*common, "--max_iter", "4", "--code_pool", "8"])
    # A larger pool on resume: its 3 batches of 4 are encoded again from the data seed, then written.
    main.main([*common, "--max_iter", "5", "--code_pool", "12", "--resume", "True"])
    log = tmp_path / "run" / "lstm" / "train.log"
    assert log.read_text().count("encoded clips read from") == 0
    main.main([*common, "--max_iter", "6", "--code_pool", "12", "--resume", "True"])
    assert log.read_text().count("encoded clips read from") == 1
    stored = torch.load(tmp_path / "run" / "lstm" / "code_pool_rank0.pt", weights_only=True)
    assert stored["key"]["batches"] == 3 and stored["poses"].shape[0] == 12


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["no_drnet", "image_size", "dataset", "n_past"])
def test_errors_are_one_line(case, drnet_dir, tiny, tmp_path, fails_with_one_line):
    checkpoint = drnet_dir / "checkpoint.pt"
    argv = ["--use_lstm", "True", "--save_dir", str(tmp_path / "run"), *tiny]
    if case == "no_drnet":
        expected = f"no trained DRNET at {tmp_path / 'run' / 'checkpoint.pt'}: train one first with " \
                   f"`python main.py --dataset mnist --save_dir {tmp_path / 'run'}`"
    elif case == "image_size":
        argv += ["--drnet_checkpoint", str(checkpoint), "--image_width", "128"]
        expected = "image_width=64 (asked: 128)"
    elif case == "dataset":
        other = torch.load(checkpoint, weights_only=True)
        other["config"]["dataset"] = "norb"
        torch.save(other, tmp_path / "norb.pt")
        argv += ["--drnet_checkpoint", str(tmp_path / "norb.pt")]
        expected = "dataset='norb' (asked: 'mnist')"
    else:
        argv += ["--drnet_checkpoint", str(checkpoint), "--n_past", "0"]
        expected = "--n_past must be at least 1, got 0"
    fails_with_one_line(argv, expected, alone=True)
    assert not (tmp_path / "run" / "lstm" / "checkpoint.pt").exists()


@pytest.mark.e2e
def test_half_precision_export_loads_and_predicts_like_the_original(lstm_dir, tmp_path):
    source = lstm_dir[0] / "checkpoint.pt"
    shipped = tmp_path / "shipped.pt"
    export_weights(torch.load(source, weights_only=True), shipped)
    stored = torch.load(shipped, weights_only=True)
    assert "optimizers" not in stored and "rng" not in stored
    assert {v.dtype for v in stored["lstm"].values()} == {torch.float16}
    assert shipped.stat().st_size < 0.6 * source.stat().st_size
    past = torch.rand(2, 3, 3, 64, 64)
    original, exported = load_model(source), load_model(shipped)
    assert all(p.dtype == torch.float32 for p in exported.parameters())  # cast back on loading
    assert torch.allclose(original.predict(past, 4), exported.predict(past, 4), atol=2e-2)


@pytest.mark.e2e
def test_a_pose_lstm_file_loads_with_the_drnet_file_beside_it(lstm_dir, drnet_dir, tmp_path):
    source = torch.load(lstm_dir[0] / "checkpoint.pt", weights_only=True)
    export_weights(source, tmp_path / "drnet.pt")  # the DRNET shipped once (here with an older LSTM inside)
    export_lstm(source, tmp_path / "drnet.pt", tmp_path / "lstm.pt")
    assert (tmp_path / "lstm.pt").stat().st_size < 0.2 * (tmp_path / "drnet.pt").stat().st_size
    past = torch.rand(2, 3, 3, 64, 64)
    whole, paired = load_model(tmp_path / "drnet.pt"), load_model(tmp_path / "lstm.pt")
    assert torch.equal(whole.predict(past, 4), paired.predict(past, 4))
    other = torch.load(drnet_dir / "checkpoint.pt", weights_only=True)
    export_weights({**other, "model": {k: v + 1 if v.is_floating_point() else v for k, v in other["model"].items()}},
                   tmp_path / "other.pt")
    with pytest.raises(DRNetError, match="does not hold the DRNET this LSTM was trained on"):
        export_lstm(source, tmp_path / "other.pt", tmp_path / "wrong.pt")
    (tmp_path / "other.pt").replace(tmp_path / "drnet.pt")  # the DRNET file replaced under the LSTM file
    with pytest.raises(DRNetError, match="does not hold the DRNET weights that lstm.pt was trained on"):
        load_model(tmp_path / "lstm.pt")

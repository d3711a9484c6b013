"""datasets/prefetch.py, BatchStream (`--data_threads`): the same batches and resume states with or without the
loader thread, pinned batches, and a bound on the batches prepared ahead."""

import threading
import time

import pytest
import torch
from fakes.runs import tiny_flags

import main
from datasets.prefetch import MAX_AHEAD, BatchStream
from utils import DRNetError


def slow_draw(generator: torch.Generator) -> torch.Tensor:
    """A batch whose draw takes a little time and several random calls, like a file loader's."""
    first = torch.randint(1000, (3,), generator=generator)
    time.sleep(0.002)
    return torch.cat([first, torch.rand(2, generator=generator)])


def drawn(ahead: int, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` (batch, state after it) of a stream."""
    with BatchStream(slow_draw, torch.Generator().manual_seed(seed), ahead) as stream:
        return [next(stream) for _ in range(count)]


@pytest.mark.parametrize("ahead", [1, 3])
def test_thread_gives_the_batches_and_states_of_the_inline_stream(ahead):
    inline, threaded = drawn(0, 6), drawn(ahead, 6)
    for (batch, state), (threaded_batch, threaded_state) in zip(inline, threaded, strict=True):
        assert torch.equal(batch, threaded_batch) and torch.equal(state, threaded_state)
    assert not torch.equal(inline[0][0], inline[1][0])


def test_state_after_a_batch_draws_the_next_batch_although_the_thread_ran_ahead():
    generator = torch.Generator().manual_seed(5)
    with BatchStream(slow_draw, generator, 4) as stream:
        _, state = next(stream)
        expected, _ = next(stream)
        time.sleep(0.05)  # the thread fills its queue, moving the shared generator further on
    assert not torch.equal(generator.get_state(), state)
    assert torch.equal(slow_draw(torch.Generator().set_state(state)), expected)


def test_loader_errors_reach_the_training_loop_in_order():
    def failing_third(generator: torch.Generator) -> torch.Tensor:
        value = torch.randint(10, (1,), generator=generator)
        failing_third.calls += 1
        if failing_third.calls == 3:
            raise DRNetError("frame 00007.png not found")
        return value

    failing_third.calls = 0
    with BatchStream(failing_third, torch.Generator(), 2) as stream:
        next(stream), next(stream)
        with pytest.raises(DRNetError, match="00007.png"):
            next(stream)


def test_close_stops_the_thread_even_when_its_queue_is_full():
    stream = BatchStream(slow_draw, torch.Generator(), 1)
    time.sleep(0.05)  # the one slot is full: the thread waits to put the next batch
    stream.close()
    assert not any(thread.name == "drnet-batches" for thread in threading.enumerate())
    with pytest.raises(ValueError, match="negative"):
        BatchStream(slow_draw, torch.Generator(), -1)


def test_pinned_batches_pin_what_was_drawn_on_the_cpu(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    with BatchStream(lambda g: torch.zeros(2, 3), torch.Generator(), 1, pin_memory=True) as stream:
        next(stream)
    assert pinned and pinned[0] == (2, 3)
    pinned.clear()
    with BatchStream(lambda g: torch.zeros(2, 3), torch.Generator(), 0) as stream:
        next(stream)
    assert not pinned


@pytest.mark.e2e
def test_data_threads_is_bounded(tmp_path, mnist_root, fails_with_one_line):
    fails_with_one_line(tiny_flags(tmp_path / "run", mnist_root, "--data_threads", str(MAX_AHEAD + 1)),
                        f"--data_threads must be from 0 to {MAX_AHEAD}: it counts batches prepared ahead")
    assert f"at most {MAX_AHEAD}" in main.build_parser().format_help()
    with pytest.raises(ValueError, match=f"at most {MAX_AHEAD}"):
        BatchStream(lambda generator: torch.zeros(1), torch.Generator(), MAX_AHEAD + 1)

"""demo.py: pictures from a trained model (an untrained pose-LSTM checkpoint stands in for one), the list of
the files it wrote, and one line when there is no model or --out cannot be written."""

import os
import re

import pytest
from fakes.runs import write_checkpoint
from PIL import Image

import demo

pytestmark = pytest.mark.e2e


def test_demo_writes_every_picture_from_a_model(tmp_path, capsys):
    model = write_checkpoint(tmp_path / "lstm.pt", tmp_path / "data", channels=3)
    out = tmp_path / "demo"
    demo.main(["--model", str(model), "--out", str(out), "--frames", "12"])
    for name in ("analogy.png", "swaps.png", "rollout.gif", "rollout.mp4", "rollout_every1.png"):
        assert (out / name).stat().st_size > 0, name
    assert Image.open(out / "rollout.gif").n_frames == 10 + 12
    assert "content transfer" in capsys.readouterr().out


def test_the_demo_lists_the_files_it_wrote(tmp_path, capsys, monkeypatch):
    checkpoint = write_checkpoint(tmp_path / "lstm.pt", tmp_path / "data")
    monkeypatch.setattr(demo, "SWAP_CLIPS", 8)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("from before")
    os.utime(tmp_path / "out" / "old.txt", (0, 0))  # written long ago: not this run's
    demo.main(["--model", str(checkpoint), "--out", str(tmp_path / "out"), "--frames", "2"])
    line = capsys.readouterr().out.splitlines()[-1]
    written = re.match(r"wrote (.*) in (.*)/ \(\d+ s\)$", line)
    assert written and written[2] == str(tmp_path / "out")
    names = written[1].split(", ")
    assert {"analogy.png", "swaps.png", "rollout.gif"} <= set(names) and "old.txt" not in names
    assert all((tmp_path / "out" / name).is_file() for name in names)


def test_demo_without_a_model_is_a_one_line_error(tmp_path, fails_with_one_line, monkeypatch):
    fails_with_one_line(["--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "demo")], "no checkpoint at",
                        command=demo.main)
    monkeypatch.setattr(demo, "SHIPPED_MODEL", tmp_path / "shipped.pt")  # a copy without the shipped file
    fails_with_one_line(["--out", str(tmp_path / "demo")], "ships no trained model", command=demo.main)


def test_demo_out_at_a_file_or_a_read_only_place_is_one_line(tmp_path, fails_with_one_line, make_read_only):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    make_read_only(read_only)
    for out, why in ((blocker, "it is a file, not a folder"), (blocker / "demo", "Not a directory"),
                     (read_only, "")):
        fails_with_one_line(["--out", str(out)], f"cannot write the pictures (--out) in {out}: {why}",
                            command=demo.main)

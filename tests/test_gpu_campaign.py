"""tools/gpu_campaign.sh, the one GPU call for the two-digit model, in smoke mode on the CPU (slow)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.checkpoints import load_model

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.e2e
def test_the_gpu_campaign_in_smoke_mode_writes_every_result(tmp_path):
    """tools/gpu_campaign.sh with SMOKE=1: every stage on the CPU at batch 4, a few iterations each."""
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "RUNS": str(tmp_path / "runs"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "tools/gpu_campaign.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    speed = (out / "speed.md").read_text()
    assert "| ours, mnist, batch 4, 64 px | cpu" in speed
    assert "| captured | skipped: graph capture needs a CUDA GPU, this run is on cpu |" in speed
    equivalence = (out / "equivalence.md").read_text().splitlines()[2:]
    assert len(equivalence) == 5 and all("| 2 | none |" in row for row in equivalence)  # both eager on a CPU
    screen = (out / "screen.md").read_text()
    assert all(f"| {name} | 2 |" in screen for name in ("sphere", "lua", "py", "lua_pose10"))
    best = (out / "best.txt").read_text().split(":")[0]
    assert "content transfer" in (out / f"eval_{best}.txt").read_text()
    parts = sorted(out.glob(f"best_{best}.half.pt.part*"))
    (tmp_path / "joined.pt").write_bytes(b"".join(part.read_bytes() for part in parts))
    assert hasattr(load_model(tmp_path / "joined.pt"), "predict")  # the LSTM stage ran: DRNET and LSTM together
    for name in ("content_transfer.png", "results.tar.gz", "campaign.log"):
        assert (out / name).stat().st_size > 0, name

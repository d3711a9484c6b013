"""hubconf.py, the torch.hub entry points: models built from the checkpoints of a trained run (conftest's grey
Moving MNIST run), one line without a checkpoint, and loads that leave the user's modules alone: a user's own
`utils`, `models` and `datasets` neither break the load nor are replaced by ours, and none of ours stays in the
user's `sys.modules` (each such case runs in a fresh Python process whose working folder is a user's project, as
a user's script would).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.checkpoints import load_model
from utils import DRNetError

REPO = Path(__file__).resolve().parent.parent

# Loads the shipped model through torch.hub, then reports what the user's process sees afterwards.
USER_SCRIPT = """
import json, sys
from pathlib import Path
import torch
{before}
model = torch.hub.load({repo!r}, "drnet_mnist", source="local")
frames = torch.rand(2, 10, 1, 64, 64)
shape = list(model.predict(frames, 3).shape)
import utils, models, datasets
ours = sorted(name for name, module in sys.modules.items()
              if str(getattr(module, "__file__", None) or "").startswith({repo!r})
              and "site-packages" not in str(module.__file__))
print(json.dumps({{"shape": shape, "utils": getattr(utils, "OWNER", None), "models": getattr(models, "OWNER", None),
                  "datasets": getattr(datasets, "OWNER", None), "ours_left": ours}}))
"""


def run_user_script(folder: Path, before: str) -> dict:
    """Run USER_SCRIPT in `folder` (the user's project) and return what it printed."""
    script = USER_SCRIPT.format(repo=str(REPO), before=before)
    done = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A user's project with its own utils.py, models.py and datasets/ package, each saying whose it is."""
    (tmp_path / "utils.py").write_text('OWNER = "user"\n')
    (tmp_path / "models.py").write_text('OWNER = "user"\n')
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "__init__.py").write_text('OWNER = "user"\n')
    return tmp_path


@pytest.mark.e2e
@pytest.mark.parametrize("before", ["import utils, models, datasets  # the user's, loaded before the hub", ""],
                         ids=["loaded-before", "imported-after"])
def test_the_users_modules_stay_theirs_and_none_of_ours_stays(user_project: Path, before: str) -> None:
    seen = run_user_script(user_project, before)
    assert seen["shape"] == [2, 3, 1, 64, 64]
    assert seen == {**seen, "utils": "user", "models": "user", "datasets": "user"}
    assert seen["ours_left"] == []


def test_a_process_inside_the_repository_keeps_its_own_modules() -> None:
    """Within the repository (as the tests and our tools run) the modules already loaded are left alone, so
    errors raised by an entry point are the classes the caller imported."""
    import utils

    with pytest.raises(utils.DRNetError, match="pass checkpoint="):
        torch.hub.load(str(REPO), "drnet", source="local")
    assert sys.modules["utils"] is utils


@pytest.mark.e2e
def test_torch_hub_builds_models_from_checkpoints(grey_run):
    frames = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    drnet = torch.hub.load(str(REPO), "drnet", source="local", checkpoint=str(grey_run / "checkpoint.pt"))
    assert not hasattr(drnet, "predict") and not drnet.training
    expected = load_model(grey_run / "checkpoint.pt")
    torch.testing.assert_close(drnet(frames, frames), expected(frames, frames), rtol=0, atol=0)
    predictor = torch.hub.load(str(REPO), "drnet", source="local", checkpoint=str(grey_run / "lstm" / "checkpoint.pt"))
    assert predictor.predict(frames[:, None], 3).shape == (2, 3, 1, 64, 64)
    if (REPO / "saved_results" / "drnet_mnist_fp16.pt").is_file():
        assert torch.hub.load(str(REPO), "drnet_mnist", source="local").config["dataset"] == "mnist"
    else:
        with pytest.raises(DRNetError, match="drnet_mnist_fp16.pt is not shipped with this copy") as error:
            torch.hub.load(str(REPO), "drnet_mnist", source="local")
        assert "\n" not in str(error.value)


def test_torch_hub_without_a_checkpoint_is_one_line():
    with pytest.raises(DRNetError, match='pass checkpoint="runs/mnist/checkpoint.pt"') as error:
        torch.hub.load(str(REPO), "drnet", source="local")
    assert "\n" not in str(error.value)

"""torch.hub loads our model without touching the user's modules: a user's own `utils`, `models` and `datasets`
neither break the load nor are replaced by ours, and none of ours stays in the user's `sys.modules`.

Each case runs in a fresh Python process whose working folder is a user's project, as a user's script would.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_users_modules_loaded_before_the_hub_stay_theirs(user_project: Path) -> None:
    seen = run_user_script(user_project, "import utils, models, datasets  # the user's, loaded first")
    assert seen["shape"] == [2, 3, 1, 64, 64]
    assert seen == {**seen, "utils": "user", "models": "user", "datasets": "user"}
    assert seen["ours_left"] == []


def test_the_users_modules_imported_after_the_hub_are_theirs(user_project: Path) -> None:
    seen = run_user_script(user_project, "")
    assert seen["shape"] == [2, 3, 1, 64, 64]
    assert seen == {**seen, "utils": "user", "models": "user", "datasets": "user"}
    assert seen["ours_left"] == []


def test_a_process_inside_the_repository_keeps_its_own_modules() -> None:
    """Within the repository (as the tests and our tools run) the modules already loaded are left alone, so
    errors raised by an entry point are the classes the caller imported."""
    import torch

    import utils

    with pytest.raises(utils.DRNetError, match="pass checkpoint="):
        torch.hub.load(str(REPO), "drnet", source="local")
    assert sys.modules["utils"] is utils

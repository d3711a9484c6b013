"""The commands inside packages (datasets/prepare/, tools/, evaluation/benchmark.py) run as modules from the
repository root, `python -m datasets.prepare.convert_kth`; run by path, each says so in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from utils import USER_ERROR

REPO = Path(__file__).resolve().parent.parent
COMMANDS = sorted(path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
                  for folder in ("datasets", "datasets/prepare", "engine", "evaluation", "tools")
                  for path in (REPO / folder).glob("*.py")
                  if 'if __name__ == "__main__"' in path.read_text())

pytestmark = pytest.mark.e2e


def run(*command: str) -> subprocess.CompletedProcess:
    """A command run from the repository root."""
    return subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_commands_are_found():
    assert {"datasets.prepare.convert_kth", "datasets.prepare.kth_download", "datasets.prepare.norb_download",
            "evaluation.benchmark", "tools.speed", "tools.plot_runs"} <= set(COMMANDS)


@pytest.mark.parametrize("module", COMMANDS)
def test_a_command_run_by_path_says_how_to_run_it_in_one_line(module):
    done = run(module.replace(".", "/") + ".py", "--help")
    assert done.returncode == USER_ERROR, (done.returncode, done.stderr[-300:])
    assert done.stderr == f"error: run it from the repository root as a module: python -m {module}\n"
    assert done.stdout == ""


@pytest.mark.parametrize("module", COMMANDS)
def test_a_command_runs_as_a_module(module):
    done = run("-m", module, "--help")
    assert done.returncode == 0, done.stderr[-300:]
    assert done.stdout.startswith(f"usage: python -m {module} ")

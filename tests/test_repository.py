"""The repository's own files: every requirement pinned and imported (constraints pin only the rest), the
licence and citation, and the default outputs of the demo and the evaluation ignored by git."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# The import name of each pinned package whose name differs from it.
IMPORT_NAMES = {"pillow": "PIL", "scikit-learn": "sklearn", "scikit-image": "skimage",
                "imageio-ffmpeg": "imageio_ffmpeg"}


def pins(path: Path) -> dict[str, str]:
    """name -> version of the `name==version` lines of a requirements or constraints file."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith(("-c ", "-r ")):
            name, version = line.split("==")  # every line is an exact pin
            found[name.lower()] = version
    return found


def test_every_requirement_is_pinned_and_imported_and_constraints_pin_only_the_rest():
    direct = pins(REPO / "requirements.txt") | pins(REPO / "requirements-dev.txt")
    assert "-c constraints.txt" in (REPO / "requirements.txt").read_text().splitlines()
    assert not set(pins(REPO / "constraints.txt")) & set(direct)
    sources = "\n".join(path.read_text() for path in REPO.glob("**/*.py") if ".venv" not in path.parts)
    for name in direct:
        if name not in ("pytest", "ruff"):  # tools, run rather than imported
            module = IMPORT_NAMES.get(name, name)
            assert re.search(rf"^\s*(import|from) {module}\b", sources, re.MULTILINE), f"{name} is never imported"


def test_licence_and_citation_name_the_authors_and_the_paper():
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 The DRNET reproduction authors")
    citation = (REPO / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in citation and "preferred-citation:" in citation
    for words in ('family-names: "Denton"', 'family-names: "Birodkar"', "year: 2017",
                  'title: "Unsupervised Learning of Disentangled Representations from Video"'):
        assert words in citation


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_the_default_outputs_are_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "demo/analogy.png", "saved_results/eval/metrics.json",
                              "saved_results/benchmark/moving_mnist_10_to_10/preds.npy"], cwd=REPO,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == ["demo/analogy.png", "saved_results/eval/metrics.json",
                                      "saved_results/benchmark/moving_mnist_10_to_10/preds.npy"]

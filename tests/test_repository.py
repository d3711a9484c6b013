"""The repository's own files: every requirement pinned and imported (constraints pin only the rest), the
licence and citation, the default outputs of the demo and the evaluation ignored by git, and the documentation's
relative links."""

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


LINK = re.compile(r"\]\(([^()\s]+)\)")


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown text (lower case, punctuation dropped, spaces to -)."""
    anchors, seen = set(), {}
    for line in text.splitlines():
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(page: Path) -> list[str]:
    """The relative links of a markdown page, outside code blocks, whose file or heading does not exist."""
    broken, in_code = [], False
    for line in page.read_text().splitlines():
        in_code ^= line.lstrip().startswith("```")
        for target in [] if in_code else LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and linked.suffix == ".md"
                                       and anchor not in heading_anchors(linked.read_text())):
                broken.append(target)
    return broken


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section (2026-12-07), shipped\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n[ok](other.md#a-section-2026-12-07-shipped) [ok](#page) [web](https://x.org/a#b)\n"
                    "[gone](missing.md) [no heading](other.md#no-such-section) [self](#nowhere)\n"
                    "```\n[in code](not_a_link.md)\n```\n")
    assert broken_links(page) == ["missing.md", "other.md#no-such-section", "#nowhere"]


def test_every_relative_link_in_the_documentation_resolves() -> None:
    parts = [path.relative_to(REPO).parts for path in REPO.glob("**/*.md")]
    pages = [REPO.joinpath(*p) for p in parts if p[0] not in ("runs", "data") and not p[0].startswith(".")]
    assert len(pages) > 10
    assert {str(page.relative_to(REPO)): broken_links(page) for page in pages if broken_links(page)} == {}

"""The repository's layout: imports run one way (entry points -> stages -> evaluation -> engine -> models,
datasets, utils), the top level stays small, no module edits `sys.path`, and every module says what it is."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Layers from the bottom up; a module may import its own layer and the ones below it.
LAYERS = ({"models", "datasets", "utils"}, {"engine"}, {"evaluation"}, {"train_drnet", "train_lstm"},
          {"main", "demo", "hubconf", "tools"})


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name of this repository; None for anything else (the standard library...)."""
    top = module.partition(".")[0]
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def project_sources() -> list[Path]:
    """Every Python file of the project outside tests/ (and outside a virtual environment in the checkout)."""
    return sorted(path for path in REPO.rglob("*.py")
                  if not {"tests", ".venv", "venv", "runs", "data"} & set(path.relative_to(REPO).parts))


def imported_modules(tree: ast.Module) -> list[str]:
    """The absolute module names a file imports, wherever in the file the import stands."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_the_layer_list_names_every_top_level_module_and_package() -> None:
    tops = {path.stem for path in REPO.glob("*.py")} | {path.name for path in REPO.iterdir()
                                                        if (path / "__init__.py").is_file()}
    assert tops == set().union(*LAYERS)
    assert len({path.stem for path in REPO.glob("*.py")}) <= 8  # the top level explains itself


@pytest.mark.parametrize("path", project_sources(), ids=lambda path: str(path.relative_to(REPO)))
def test_imports_run_one_way(path: Path) -> None:
    own = layer_of(".".join(path.relative_to(REPO).with_suffix("").parts))
    upward = [name for name in imported_modules(ast.parse(path.read_text()))
              if (layer := layer_of(name)) is not None and layer > own]
    assert upward == [], f"{path.name} (layer {own}) imports from a layer above it"


def test_models_import_nothing_of_the_project() -> None:
    names = imported_modules(ast.parse((REPO / "models.py").read_text()))
    assert [name for name in names if layer_of(name) is not None] == []


@pytest.mark.parametrize("path", project_sources(), ids=lambda path: str(path.relative_to(REPO)))
def test_no_module_edits_sys_path_and_each_says_what_it_is(path: Path) -> None:
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name} has no module docstring"
    edits = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "path"
             and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert edits == [], f"{path.name} touches sys.path (run tools as modules instead)"


def test_the_layering_check_sees_an_upward_import() -> None:
    """The check itself can fail: an engine module importing a training stage is caught."""
    tree = ast.parse("from train_drnet import train_drnet\nimport torch\n")
    above = [name for name in imported_modules(tree) if (layer_of(name) or 0) > layer_of("engine.loop")]
    assert above == ["train_drnet"]

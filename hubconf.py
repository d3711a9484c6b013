"""torch.hub entry points: `torch.hub.load(REPO_DIR, "drnet", source="local", checkpoint=PATH)`.

Both return a DRNet (encode_content, encode_pose, decode) for a DRNET checkpoint, or a DRNetPredictor (also
`predict`) for a pose-LSTM one, on `device`, in eval mode. Our modules have plain names (`models`, `utils`,
`datasets`, ...) that a user's project may have too, so an entry point imports ours in isolation: a user's
module of the same name neither shadows ours during the load nor is replaced by ours afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent
# Every top-level name this repository can be imported by: its modules and its packages.
OUR_NAMES = frozenset({path.stem for path in REPO.glob("*.py")}
                      | {path.name for path in REPO.iterdir() if (path / "__init__.py").is_file()})

dependencies = ["torch", "torchvision"]  # torch.hub checks that these import before it calls an entry point


def has_our_name(module_name: str) -> bool:
    """Whether a `sys.modules` key has the name of one of this repository's modules (or of a module inside them)."""
    return module_name.partition(".")[0] in OUR_NAMES


def from_here(module: object) -> bool:
    """Whether a loaded module is this repository's own file (not a package installed in a folder inside it)."""
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve().is_relative_to(REPO) and "site-packages" not in Path(file).parts


@contextmanager
def own_modules() -> Iterator[None]:
    """Within: imports of our names find this repository's modules. After: the ones imported here leave
    `sys.modules`, and a user's own modules of the same names are back, as they were. Modules of this
    repository that were loaded before (a process working inside the repository) stay as they are."""
    users = {name: sys.modules.pop(name) for name, module in list(sys.modules.items())
             if has_our_name(name) and not from_here(module)}
    before = set(sys.modules)
    try:
        yield  # torch.hub has put this repository first on the module path for the call
    finally:
        for name in [name for name in sys.modules if has_our_name(name) and name not in before]:
            del sys.modules[name]
        sys.modules.update(users)


def isolated(load: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Run `load` with our modules imported in isolation (`own_modules`); the model it returns keeps working,
    as its classes hold on to the modules they came from."""
    with own_modules():
        return load()


def drnet(checkpoint: str | None = None, device: str = "cpu") -> torch.nn.Module:
    """The model of a checkpoint file: a run's checkpoint.pt, checkpoints/iter_N.pt or a half-precision export."""

    def load() -> torch.nn.Module:
        from engine.checkpoints import load_model
        from utils import DRNetError

        if checkpoint is None:  # a default, so that forgetting it is this line rather than a TypeError
            raise DRNetError('the "drnet" entry point loads a checkpoint file: pass checkpoint="runs/mnist/'
                             'checkpoint.pt" (any run\'s checkpoint.pt), or load "drnet_mnist" for the shipped model')
        return load_model(checkpoint, device)

    return isolated(load)


def drnet_mnist(device: str = "cpu") -> torch.nn.Module:
    """The Moving MNIST model shipped in saved_results/ (half-precision weights, loaded as float32)."""

    def load() -> torch.nn.Module:
        from demo import SHIPPED_MODEL  # the demo's default model
        from engine.checkpoints import load_model
        from utils import DRNetError

        if not SHIPPED_MODEL.is_file():
            raise DRNetError(f"{SHIPPED_MODEL} is not shipped with this copy; train a model (python main.py "
                             "--dataset mnist) and load its checkpoint with the 'drnet' entry point")
        return load_model(str(SHIPPED_MODEL), device)

    return isolated(load)

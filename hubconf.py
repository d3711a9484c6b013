"""torch.hub entry points: `torch.hub.load(REPO_DIR, "drnet", source="local", checkpoint=PATH)`.

Both return what runs.load_model does: a DRNet (encode_content, encode_pose, decode) for a DRNET
checkpoint, a DRNetPredictor (also `predict`) for a pose-LSTM one, on `device`, in eval mode.
"""

from models import DRNet
from runs import load_model
from utils import DRNetError

dependencies = ["torch", "torchvision"]  # torch.hub checks that these import before it calls an entry point


def drnet(checkpoint: str | None = None, device: str = "cpu") -> DRNet:
    """The model of a checkpoint file: a run's checkpoint.pt, checkpoints/iter_N.pt or a half-precision export."""
    if checkpoint is None:  # a default, so that forgetting it is this line rather than a TypeError about arguments
        raise DRNetError('the "drnet" entry point loads a checkpoint file: pass checkpoint="runs/mnist/checkpoint.pt" '
                         '(any run\'s checkpoint.pt), or load "drnet_mnist" for the shipped model')
    return load_model(checkpoint, device)


def drnet_mnist(device: str = "cpu") -> DRNet:
    """The Moving MNIST model shipped in saved_results/ (half-precision weights, loaded as float32)."""
    from demo import SHIPPED_MODEL  # the demo's default model; imported here, as the demo's imports are many

    if not SHIPPED_MODEL.is_file():
        raise DRNetError(f"{SHIPPED_MODEL} is not shipped with this copy; train a model (python main.py --dataset "
                         "mnist) and load its checkpoint with the 'drnet' entry point")
    return load_model(str(SHIPPED_MODEL), device)

"""What runs on frames: attention, model architectures, model zoo, restorers."""
from .errors import CheckpointError
from .loading import load_model

__all__ = ["CheckpointError", "load_model"]

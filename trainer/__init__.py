"""Training (needs torch): `train` and `train_compatible` (trainer/api.py) are the front door."""

from trainer.api import train, train_compatible

__all__ = ["train", "train_compatible"]

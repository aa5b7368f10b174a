"""Batch loaders: (images, labels, indices) with seeded per-epoch order and flips.

Order comes from torch's DistributedSampler seeded with (seed, epoch) — also
with one process — so an interrupted run resumed at an epoch boundary sees the
same batches as an uninterrupted one, and DDP shards the same permutation.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from trainer.data.base import TrainDataset
from trainer.data.transforms import flip_horizontal, flip_mask, to_batch_tensor


class _BatchView:
    """Map-style view whose items are whole batches (a list of dataset indices)."""

    def __init__(self, dataset: TrainDataset, flips: np.ndarray | None) -> None:
        self.dataset = dataset
        self.flips = flips

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        images = self.dataset.images_uint8(idx)
        if self.flips is not None:
            images = flip_horizontal(images, self.flips[idx])
        return (to_batch_tensor(images, self.dataset.spec),
                torch.from_numpy(self.dataset.labels[idx]), torch.from_numpy(idx))


class EpochLoader:
    """Iterate one epoch of batches; call set_epoch(e) before each epoch when training."""

    def __init__(self, dataset: TrainDataset, batch_size: int, train: bool, seed: int = 0,
                 flip: bool = True, num_workers: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.dataset, self.batch_size, self.train = dataset, int(batch_size), train
        self.seed, self.flip, self.num_workers = int(seed), flip and train, int(num_workers)
        self.epoch = 0
        if train:
            self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                              shuffle=True, seed=self.seed)
            # drop a ragged last batch (BatchNorm cannot train on one sample) unless
            # the shard is smaller than one batch
            self.drop_last = self.sampler.num_samples >= self.batch_size
        else:
            self.sampler = SequentialSampler(range(len(dataset)))
            self.drop_last = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.train:
            self.sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        flips = flip_mask(len(self.dataset), self.seed, self.epoch) if self.flip else None
        batches = BatchSampler(self.sampler, self.batch_size, self.drop_last)
        loader = DataLoader(_BatchView(self.dataset, flips), sampler=batches, batch_size=None,
                            num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        return iter(loader)


def make_loader(dataset: TrainDataset, batch_size: int, train: bool = False, seed: int = 0,
                flip: bool = True, num_workers: int = 0, rank: int = 0,
                world_size: int = 1) -> EpochLoader:
    """Training order (shuffled, flipped, sharded) or eval order (dataset order, as is)."""
    return EpochLoader(dataset, batch_size, train, seed=seed, flip=flip,
                       num_workers=num_workers, rank=rank, world_size=world_size)

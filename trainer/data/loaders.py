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
    """Map-style view whose items are whole batches: (epoch, list of dataset indices).

    The epoch travels with the indices, so workers that live across epochs
    (persistent_workers) draw that epoch's flips themselves.
    """

    def __init__(self, dataset: TrainDataset, seed: int, flip: bool) -> None:
        self.dataset, self.seed, self.flip = dataset, seed, flip
        self._flips: tuple[int, np.ndarray] | None = None  # (epoch, mask), per process

    def __len__(self) -> int:
        return len(self.dataset)

    def _flip_mask(self, epoch: int) -> np.ndarray:
        if self._flips is None or self._flips[0] != epoch:
            self._flips = (epoch, flip_mask(len(self.dataset), self.seed, epoch))
        return self._flips[1]

    def __getitem__(self, item: tuple[int, Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, indices = item
        idx = np.asarray(indices, dtype=np.int64)
        images = self.dataset.images_uint8(idx)
        if self.flip:
            images = flip_horizontal(images, self._flip_mask(epoch)[idx])
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
        self._loader: DataLoader | None = None
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
        # One DataLoader for the run: its workers start once, not at every epoch (that
        # start-up was a visible share of a short GPU epoch). The sampler runs in this
        # process, so set_epoch still reshuffles.
        if self._loader is None:
            self._loader = DataLoader(
                _BatchView(self.dataset, self.seed, self.flip),
                sampler=_EpochTagged(self, BatchSampler(self.sampler, self.batch_size, self.drop_last)),
                batch_size=None, num_workers=self.num_workers,
                pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0)
        return iter(self._loader)


class _EpochTagged:
    """Batches of indices, each tagged with the loader's current epoch."""

    def __init__(self, loader: EpochLoader, batches: BatchSampler) -> None:
        self.loader, self.batches = loader, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        epoch = self.loader.epoch
        for batch in self.batches:
            yield epoch, batch


def make_loader(dataset: TrainDataset, batch_size: int, train: bool = False, seed: int = 0,
                flip: bool = True, num_workers: int = 0, rank: int = 0,
                world_size: int = 1) -> EpochLoader:
    """Training order (shuffled, flipped, sharded) or eval order (dataset order, as is)."""
    return EpochLoader(dataset, batch_size, train, seed=seed, flip=flip,
                       num_workers=num_workers, rank=rank, world_size=world_size)

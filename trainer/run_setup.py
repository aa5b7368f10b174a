"""Build everything a run needs from its TrainConfig: data, nets, method, loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gallery.errors import BadInput
from gallery.preprocess import PreprocessSpec

from trainer.backbones import arch_config, build_backbone
from trainer.config import TrainConfig
from trainer.data import EpochLoader, TrainDataset, make_loader, open_dataset
from trainer.distributed import DistInfo
from trainer.heads import Head, build_head
from trainer.methods import MethodContext, load_all

PARITY_IMAGES = 8  # real training images stored in the .pt for the ONNX parity check


@dataclass
class RunParts:
    spec: PreprocessSpec
    dataset: TrainDataset
    arch: dict[str, Any]
    backbone: nn.Module
    head: Head
    method: nn.Module
    loader: EpochLoader
    parity_images: torch.Tensor
    use_amp: bool
    device_name: str


def build_run(config: TrainConfig, info: DistInfo) -> RunParts:
    spec = config.preprocess_spec()
    # unknown names fail before the (possibly long) dataset load
    from trainer.backbones import load_all as load_backbones
    from trainer.heads import load_all as load_heads

    load_backbones().get(config.arch)
    load_heads().get(config.head)
    load_all().get(config.method)
    dataset = open_dataset(config.data, spec)
    torch.manual_seed(config.seed)  # same initial weights on every rank and every rerun
    projection = config.old_dim if config.old_dim and config.old_dim != config.dim else None
    arch = arch_config(config.arch, config.dim, config.image_size, spec.channels, config.dropout,
                       projection)
    backbone = build_backbone(arch)
    head = build_head(config.head, config.dim, dataset.num_classes, **config.head_params)
    method_cls = load_all().get(config.method)
    try:
        method = method_cls(**config.method_params)
    except TypeError as exc:
        raise BadInput(f"bad parameters for method {config.method!r}: {exc}") from None
    if method_cls.requires_old_model and not (config.old_model or config.old_features):
        raise BadInput(f"method {config.method!r} needs --old (or --old-features)")
    if projection:
        if not method_cls.requires_old_model:
            raise BadInput(f"old_dim {projection} given but method {config.method!r} uses no old model")
        from trainer.projection import ProjectedMethod

        method = ProjectedMethod(method, backbone, build_head(
            config.head, projection, dataset.num_classes, **config.head_params))
    backbone.to(info.device)
    head.to(info.device)
    method.to(info.device)
    method.prepare(MethodContext(
        dataset=dataset, num_classes=dataset.num_classes, embedding_dim=config.dim,
        device=info.device, head=head, old_model=config.old_model,
        old_features=config.old_features, cache_dir=config.out_path.parent,
        extras={"config": config.to_dict(), "rank": info.rank,
                "world_size": info.world_size}))
    method.to(info.device)  # prepare() may have registered new buffers on the CPU
    loader = make_loader(dataset, config.batch_size, train=True, seed=config.seed,
                         flip=config.flip, num_workers=config.num_workers,
                         rank=info.rank, world_size=info.world_size)
    count = min(PARITY_IMAGES, len(dataset))
    parity = torch.from_numpy(dataset.images_uint8(range(count)).copy())
    use_amp = bool(config.amp and info.device.type == "cuda")
    return RunParts(spec, dataset, arch, backbone, head, method, loader, parity, use_amp,
                    str(info.device))

"""Cached MONAI datasets and loaders for training and validation, sharded across torchrun processes."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader
from torch.utils.data import DistributedSampler

from unetr_app.config import RunConfig
from unetr_app.data.transforms import eval_transforms, train_transforms
from unetr_app.distributed import Shard, my_part
from unetr_app.io.scans import case_name


def with_case_names(cases: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{**c, "case": case_name(Path(c["image"]))} for c in cases]


def build_loaders(config: RunConfig, train_cases, val_cases, cache_workers: int = 2, shard: Shard = Shard()):
    """Training loader (random ROI crops; `batch_size` volumes x `num_samples` crops per step and
    process) and validation loader (this process's share of the whole preprocessed volumes, one per
    batch; None without validation cases)."""
    train = config.training
    train_ds = CacheDataset(
        with_case_names(train_cases),
        transform=train_transforms(config.preprocessing, config.augmentation, train),
        cache_rate=train.cache_rate,
        num_workers=cache_workers,
        progress=False,
    )
    generator = torch.Generator()
    generator.manual_seed(train.seed)
    # one process: a shuffling loader reseeded each epoch; several: DistributedSampler.set_epoch each epoch
    sampler = DistributedSampler(train_ds, shard.world_size, shard.rank, shuffle=True, seed=train.seed) if shard.distributed else None
    train_loader = DataLoader(
        train_ds, batch_size=train.batch_size, shuffle=sampler is None, sampler=sampler, num_workers=train.num_workers,
        generator=generator, pin_memory=torch.cuda.is_available(), persistent_workers=train.num_workers > 0,
    )
    if not val_cases:
        return train_loader, None
    val_ds = CacheDataset(
        with_case_names(my_part(list(val_cases), shard)), transform=eval_transforms(config.preprocessing),
        cache_rate=train.cache_rate, num_workers=cache_workers, progress=False,
    )
    return train_loader, DataLoader(val_ds, batch_size=1, num_workers=0)

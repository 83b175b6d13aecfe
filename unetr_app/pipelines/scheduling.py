"""Running many CLI jobs at once: a thread pool of `processes` workers, each job a subprocess
pinned to one GPU slot (GPUs dealt round-robin; several jobs share one when there are more jobs
in flight than GPUs) with the CPU cores split between them. Nothing here knows what a job does."""

from __future__ import annotations

import os
import queue
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import torch

T = TypeVar("T")


def visible_gpus(device: str) -> list[str]:
    """The CUDA devices jobs may be spread over, as CUDA_VISIBLE_DEVICES names them (none on CPU)."""
    if device == "cpu" or not torch.cuda.is_available():
        return []
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named or [str(i) for i in range(torch.cuda.device_count())]


def device_slots(processes: int, gpus: list[str]) -> list[str | None]:
    """The device of each of `processes` concurrent jobs: the GPUs dealt round-robin (None on CPU)."""
    return [gpus[i % len(gpus)] for i in range(processes)] if gpus else [None] * processes


def child_env(processes: int, gpu: str | None = None) -> dict[str, str]:
    """Split the cores between concurrent jobs instead of letting each take them all; pin a job to its GPU."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, processes))))
    return env


class GpuPool:
    """`processes` workers; `run(command, log_file)` runs one command on a slot no other job in flight holds."""

    def __init__(self, processes: int, gpus: list[str]):
        self.processes = processes
        self._slots: queue.Queue = queue.Queue()
        for slot in device_slots(processes, gpus):
            self._slots.put(slot)

    def map(self, work: Callable[[T], T], jobs: Iterable[T]) -> list[T]:
        with ThreadPoolExecutor(self.processes) as pool:
            return list(pool.map(work, jobs))

    def run(self, command: list[str], log_file: Path) -> int:
        gpu = self._slots.get()
        try:
            with open(log_file, "a") as log:
                return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(self.processes, gpu)).returncode
        finally:
            self._slots.put(gpu)

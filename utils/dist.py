"""Distributed helpers for runs launched by ``torchrun`` (one process per device).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is the single-process
case, so the same code runs with ``python train.py`` and ``torchrun --nproc_per_node N train.py``.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> None:
    """Create the default process group from torchrun's environment (nccl on CUDA, gloo on CPU)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op single-process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over ranks, in place (no-op single-process), and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def average_gradients(parameters) -> None:
    """Average the ``.grad`` of ``parameters`` over ranks (one all-reduce of their concatenation).

    For parameters trained outside a DistributedDataParallel model (LNR's classifier, test-time training's
    weights), whose gradients DDP does not reduce; every rank must call it at the same step.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(total: torch.Tensor, count: int) -> torch.Tensor:
    """``sum(total) / sum(count)`` over all ranks, in float64 (``total`` is this rank's sum of ``count`` values)."""
    both = all_reduce_sum(torch.stack([total.double(), torch.tensor(float(count), device=total.device,
                                                                      dtype=torch.float64)]))
    return both[0] / both[1].clamp_min(1)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers of ``module`` (BatchNorm running statistics...) to every rank; no-op single-process.

    DDP broadcasts rank 0's buffers at the start of each training forward, so after an epoch's last step
    every rank holds the statistics updated by its own last batch; this makes the ranks agree again.
    """
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def gather_lists(items: list) -> list:
    """Concatenate a list of picklable items over all ranks (every rank gets the whole list, rank order)."""
    if not is_distributed():
        return items
    gathered: list = [None] * world_size()
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()

"""The few collectives the training loop and its checkpoints need besides DeepSpeed's own.

Every function here is a no-op (or the identity) in a single process, so the same code runs alone on
CPU and under the ``deepspeed`` launcher. Under several ranks each one is a collective: every rank must
call it, in the same order, or the others wait forever (design.md section 9).
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

T = TypeVar("T")


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless a torch.distributed group is up (DeepSpeed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where tensors of a collective must live: nccl reduces CUDA tensors only, gloo CPU ones."""
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def all_ranks_sum(value: int) -> int:
    """``value`` summed over every rank."""
    if distributed_rank()[1] == 1:
        return value
    total = torch.tensor([value], dtype=torch.long, device=collective_device())
    torch.distributed.all_reduce(total)
    return int(total.item())


def barrier() -> None:
    """Wait until every rank got here."""
    if distributed_rank()[1] > 1:
        torch.distributed.barrier()


def broadcast_object(value: T, *, source: int = 0) -> T:
    """Rank ``source``'s ``value`` on every rank (a picklable object: a path, a small dict)."""
    if distributed_rank()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=source, device=_object_device())
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    world = distributed_rank()[1]
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


def _object_device() -> torch.device | None:
    # broadcast_object_list moves its pickled bytes to the current CUDA device under nccl; gloo keeps them on CPU.
    return collective_device() if torch.distributed.get_backend() == "nccl" else None


class OtherRankFailed(RuntimeError):
    """Another rank failed at a point that every rank has to pass together; its log has the cause."""


def agree(failure: Exception | None, what: str) -> None:
    """Raise on every rank when ``what`` failed on any: the rank's own error where it failed, ``OtherRankFailed``
    naming the failed rank elsewhere; nothing when all succeeded. Call it after work that only some ranks do (rank
    0 writing a shared file), so that a failure there does not leave the other ranks waiting in a collective."""
    if distributed_rank()[1] == 1:
        if failure is not None:
            raise failure
        return
    messages = gather_objects(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failed:
        rank, message = failed[0]
        raise OtherRankFailed(f"{what} failed on rank {rank} ({message}); see that rank's log")

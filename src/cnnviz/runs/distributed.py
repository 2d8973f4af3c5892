"""Folder runs sharded over processes and machines with ``torch.distributed``.

``torchrun --nproc-per-node N -m cnnviz explain DIR …`` (and ``--nnodes`` with a rendezvous for
several machines) starts N ranks; ``cnnviz explain DIR … --nproc N`` starts N on this machine
itself (:func:`launch`: the ranks meet through a file, so nothing listens on the network).
Each rank takes a deterministic, disjoint share of the run's batches — batch ``j`` of the
pending ones goes to rank ``j mod N`` — so every image is explained exactly once, with no padding
duplicates (captum's tutorial warns that ``DistributedSampler`` repeats samples to even the
shards out), and every batch holds the images a
single-process run would put in it. Ranks write their own per-image outputs and records (atomic
files); rank 0 gathers the ranks' failures and writes the manifest from the records. The process
group uses gloo on CPUs and NCCL on GPUs, one device per rank (``cuda:LOCAL_RANK``).

``cnnviz evaluate`` and ``cnnviz exemplars`` (:mod:`cnnviz.runs.evaluate`,
:mod:`cnnviz.runs.exemplars`) share their work the same way; rank 0 gathers what the ranks
computed (:func:`in_order`: per-image values back in input order; the exemplar collectors) and
alone writes the outputs while the others wait (:func:`leader_writes`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world``, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        """Rank 0, which writes what concerns the whole run (the manifest)."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: those at positions ``rank, rank + world, …``."""
        return list(items[self.rank :: self.world])

    def device(self, device: str) -> str:
        """``device`` for this rank: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.distributed else device


def current_ranks() -> Ranks:
    """The ranks ``torchrun`` set in the environment (one rank of one when not under it)."""

    def number(name: str, default: int) -> int:
        text = os.environ.get(name, "")
        return int(text) if text.isdigit() else default

    world = number("WORLD_SIZE", 1)
    return Ranks(number("RANK", 0) if world > 1 else 0, world, number("LOCAL_RANK", 0))


@contextlib.contextmanager
def process_group(ranks: Ranks, device: str) -> Iterator[None]:
    """The default process group for the run (gloo, or NCCL for CUDA), torn down afterwards;
    nothing for a single process or one already set up by the caller."""
    if not ranks.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    store = os.environ.get(INIT_FILE_VARIABLE)
    dist.init_process_group(
        backend=backend,
        init_method=f"file://{store}" if store else "env://",
        rank=ranks.rank,
        world_size=ranks.world,
    )
    try:
        yield
        # Every rank is done before any tears its connections down: a rank that destroyed its
        # group while a peer's gloo threads still used their pair could abort that peer at exit.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (nothing for a single process)."""
    if ranks.distributed and dist.is_initialized():
        dist.barrier()


def gathered(ranks: Ranks, value: T) -> list[T]:
    """Every rank's ``value``, in rank order (``[value]`` for a single process)."""
    if not (ranks.distributed and dist.is_initialized()):
        return [value]
    found: list[Any] = [None] * ranks.world
    dist.all_gather_object(found, value)
    return found


def in_order(ranks: Ranks, pairs: Iterable[tuple[int, T]]) -> list[T]:
    """Every rank's ``(index, value)`` pairs, merged into index order: the values of a
    single-process run in the order it makes them, when each index belongs to one rank (its
    values keep their order). A single process just sorts its own."""
    mine = list(pairs)
    every = [pair for share in gathered(ranks, mine) for pair in share]
    return [value for _, value in sorted(every, key=lambda pair: pair[0])]


def leader_writes(ranks: Ranks, write: Callable[[], T], read: Callable[[], T]) -> T:
    """Rank 0 runs ``write`` (the outputs of the whole run) while the other ranks wait; they
    then run ``read`` (what it wrote). A single process just writes."""
    if ranks.leader:
        value = write()
        barrier(ranks)
        return value
    barrier(ranks)
    return read()


INIT_FILE_VARIABLE = "CNNVIZ_DIST_INIT_FILE"
"""Set by :func:`launch`: the ranks meet through this file (a ``FileStore``), so that nothing
listens on the network; under ``torchrun`` (not set) they meet through its ``env://`` store."""


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``cnnviz ARGV`` as ``nproc`` ranks on this machine and wait for them; returns 0, or
    the status of the first rank that failed (the others are then stopped, as torchrun does).

    The ranks find each other through a file in a temporary folder and talk over gloo on the
    loopback interface only, one torch thread each.
    """
    with tempfile.TemporaryDirectory(prefix="cnnviz-ranks-") as folder:
        base = {
            **os.environ,
            "WORLD_SIZE": str(nproc),
            INIT_FILE_VARIABLE: str(Path(folder) / "store"),
            "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        ranks = [
            subprocess.Popen(
                [sys.executable, "-m", "cnnviz", *argv],
                env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            )
            for rank in range(nproc)
        ]
        try:
            return _wait(ranks)
        finally:
            for rank in ranks:
                if rank.poll() is None:
                    rank.kill()
                    rank.wait()


def _wait(ranks: list[subprocess.Popen[bytes]]) -> int:
    while True:
        codes = [rank.poll() for rank in ranks]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            for rank in ranks:
                if rank.poll() is None:
                    rank.terminate()
            return failed[0] if failed[0] > 0 else 128 - failed[0]
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.05)


def without_option(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--nproc 2`` or ``--nproc=2``)."""
    kept: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == flag:
            skip = True
        elif not word.startswith(flag + "="):
            kept.append(word)
    return kept

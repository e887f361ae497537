"""What this process runs with, known before torch or the process group is set up: its rank under torchrun and
its CPU thread count (``--threads``, recorded in the run's config as ``"threads"``)."""
from __future__ import annotations

import contextlib
import os

MAX_THREADS = 1024   # config["threads"] must lie in [1, MAX_THREADS]


def launch_rank() -> int:
    """This process's rank under torchrun, known before the process group exists (the config is read first)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def resolve_threads(config: dict, requested: int | None = None) -> str | None:
    """Set ``config["threads"]`` to the CPU thread count this process will use, so that the run records it.

    ``requested`` (``--threads``) wins; else the config's count, lowered to the CPUs this process may use when it
    asks for more (a checkpoint written on a larger machine: oversubscribed threads are many times slower); else
    torch's current count (recorded by :meth:`ConfigParser.apply_threads`, after validation, so that a bad config is
    refused before torch is imported). Returns a line to print when it lowered the count. A count of the wrong type
    is left for validation to refuse.
    """
    if requested is not None:
        config["threads"] = requested
        return None
    wanted = config.get("threads")
    if wanted is None:   # torch's count, recorded by ConfigParser.apply_threads once the config is valid
        return None
    available = available_cpus()
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > available:
        config["threads"] = available
        return (f"threads: the config asks for {wanted} CPU threads but this process may use {available} CPUs; "
                f"using {available} (results on CPU can differ slightly from a {wanted}-thread run: --threads "
                f"{wanted} keeps that count)")
    return None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def apply_threads(count: int) -> None:
    """``torch.set_num_threads(count)``, and the inter-op pool to the same count where torch still allows it (only
    before its first inter-op parallel work)."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):
        if torch.get_num_interop_threads() != count:
            torch.set_num_interop_threads(count)

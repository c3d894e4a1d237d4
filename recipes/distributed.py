"""Split evaluation work across ``accelerate launch`` processes and merge to the single-process result.

``distributed_map(fn, units)`` gives each process a contiguous share of ``units`` (via
``accelerate.PartialState().split_between_processes``), applies ``fn`` to each unit, gathers the
``(index, result)`` pairs from every process with ``gather_object`` and returns the results in the
original order on every process. When each unit is computed the same way wherever it runs (e.g.
one unit = one fixed batch of items of one task x language x variant), the merged list is exactly
the single-process list, so metrics computed from it on the main process are identical.

Without ``accelerate launch`` (one process) it is a plain ordered map.

Several processes on one CPU-only machine: ``accelerate launch --multi_gpu --num_processes 2 ...``
(accelerate 1.x runs ``--cpu --num_processes 2`` as a single process unless MPI is set up; the
``--multi_gpu`` launcher starts the processes and, with no GPU present, :func:`partial_state` joins
them over gloo) or equally ``torchrun --nproc_per_node 2 ...``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def partial_state():
    """The accelerate process state, or None when accelerate is unavailable or not launched."""
    import os

    if not any(k in os.environ for k in ("ACCELERATE_PROCESS_ID", "LOCAL_RANK", "WORLD_SIZE", "RANK")):
        return None
    import torch
    from accelerate import PartialState

    # accelerate picks gloo (MULTI_CPU) only when asked for the CPU: without a GPU, ask for it.
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def is_main_process(state=None) -> bool:
    state = state if state is not None else partial_state()
    return state is None or state.is_main_process


def wait_for_everyone(state=None) -> None:
    state = state if state is not None else partial_state()
    if state is not None and state.num_processes > 1:
        state.wait_for_everyone()


def shutdown(state=None) -> None:
    """Barrier, then tear down the process group: a process that exits while gloo is still up can
    abort with "terminate called without an active exception"."""
    state = state if state is not None else partial_state()
    if state is None or state.num_processes <= 1:
        return
    state.wait_for_everyone()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def distributed_map(fn: Callable[[T], R], units: Sequence[T], *, state=None, progress: bool = False,
                    desc: str = "work units") -> list[R]:
    """``[fn(u) for u in units]``, computed across processes and returned in order on all of them."""
    units = list(units)
    state = state if state is not None else partial_state()
    indexed = list(enumerate(units))
    if state is None or state.num_processes == 1:
        mine = indexed
    else:
        with state.split_between_processes(indexed) as share:
            mine = list(share)
    iterator = mine
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(mine, desc=desc, disable=not is_main_process(state))
    local = [(i, fn(u)) for i, u in iterator]
    if state is None or state.num_processes == 1:
        return [r for _, r in local]
    from accelerate.utils import gather_object

    gathered: list[tuple[int, Any]] = gather_object(local)
    merged: dict[int, Any] = {}
    for i, r in gathered:
        merged.setdefault(i, r)
    missing = [i for i in range(len(units)) if i not in merged]
    if missing:
        raise RuntimeError(f"distributed_map: work units {missing[:5]} came back from no process")
    return [merged[i] for i in range(len(units))]

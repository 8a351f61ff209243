"""`--split-cores`: the AWS emulation on CPUs of its own, as in AWS.

On AWS, Step Functions, the Lambdas, DynamoDB, S3 and SQS do not run on the Ray cluster's
cores; on the local stack the moto server shares them with Ray. With the machine's CPUs
split in two, Ray (and bare compute, and the peer) get one half, the moto server and the
bench's own client the other: docpipe against bare on the same CPUs, without the emulated
AWS in the way. Pinning is by thread affinity (sched_setaffinity), which every process and
thread started later inherits from the one that starts it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from bench.procs import descendants


def split(cpus: Iterable[int]) -> tuple[set[int], set[int]]:
    """(compute, aws): the first half of the CPUs (rounded up) for compute."""
    ordered = sorted(cpus)
    if len(ordered) < 2:
        raise SystemExit(f"--split-cores needs at least 2 CPUs; this process may use {ordered}")
    half = (len(ordered) + 1) // 2
    return set(ordered[:half]), set(ordered[half:])


def pin(pids: Iterable[int], cpus: set[int]) -> int:
    """Pin every thread of `pids` to `cpus`; returns how many threads were pinned."""
    pinned = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
                pinned += 1
            except OSError:
                pass  # ended meanwhile
    return pinned


def pin_tree(root: int, cpus: set[int]) -> int:
    return pin([root, *descendants(root)], cpus)

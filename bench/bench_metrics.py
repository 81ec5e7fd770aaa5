"""Time fedmm_lite.metrics.evaluate (full ranking) on a synthetic population; print one JSON object.

Default: 6,300 users x 4,500 items, random scores generated per chunk (as a model would score a
chunk), chunk 1024, CPU, 1 thread. Memory is measured with ``fedmm_lite.resources.PeakMemory``:
on CPU the process's peak resident set size over the timed calls (VmHWM, reset at the start), minus
what was resident at the start; on CUDA ``torch.cuda.max_memory_allocated``. tracemalloc is not used:
it cannot see torch's tensor allocations. On Linux the script re-executes itself with
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed chunk buffers to the OS at once;
otherwise heap fragmentation adds a U-dependent drift of tens of MB to the RSS peak that is not
memory the metric holds.

    .venv/bin/python bench/bench_metrics.py [--users 6300] [--items 4500] [--chunk-size 1024]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fedmm_lite.data.dataset import Dataset  # noqa: E402
from fedmm_lite.metrics import evaluate  # noqa: E402
from fedmm_lite.resources import PeakMemory  # noqa: E402

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def synthetic_dataset(n_users: int, n_items: int, seed: int) -> Dataset:
    """Leave-one-out arrays with 3..80 training items per user (mean about 40)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 81, size=n_users)
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    indices, valid, test = [], np.empty(n_users, np.int64), np.empty(n_users, np.int64)
    for u, size in enumerate(sizes):
        items = rng.choice(n_items, size=size + 2, replace=False)
        indices.append(np.sort(items[:size]))
        valid[u], test[u] = items[size], items[size + 1]
    return Dataset(name="bench", user_ids=np.arange(n_users).astype(str),
                   item_ids=np.arange(n_items).astype(str), titles=[""] * n_items,
                   image_paths=[None] * n_items, train_indptr=indptr,
                   train_indices=np.concatenate(indices).astype(np.int64),
                   valid_items=valid, test_items=test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=6300)
    parser.add_argument("--items", type=int, default=4500)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if sys.platform.startswith("linux") and MMAP_ENV not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, MMAP_ENV: "65536"})
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    dataset = synthetic_dataset(args.users, args.items, args.seed)
    gen = torch.Generator(device=device)

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        return torch.rand(users.shape[0], args.items, generator=gen, device=device)  # (c, n)

    # warm-up on a few users: the first call maps torch's kernels into memory, which would
    # otherwise count as the metric's peak
    evaluate(score_fn, dataset, "test", chunk_size=args.chunk_size, device=device,
             users=np.arange(min(8, args.users)))
    times, result = [], None
    with PeakMemory(device) as mem:
        for _ in range(args.repeats):
            gen.manual_seed(args.seed)
            t0 = time.perf_counter()
            result = evaluate(score_fn, dataset, "test", chunk_size=args.chunk_size, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)

    # score generation alone, to separate the metric's own cost from the "model"
    gen.manual_seed(args.seed)
    t0 = time.perf_counter()
    for lo in range(0, args.users, args.chunk_size):
        score_fn(torch.arange(lo, min(lo + args.chunk_size, args.users), device=device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    scores_only = time.perf_counter() - t0

    out = {
        "users": args.users, "items": args.items, "chunk_size": args.chunk_size,
        "device": str(device), "threads": args.threads,
        "train_interactions": dataset.n_train,
        "seconds_evaluate_min": min(times), "seconds_evaluate_all": times,
        "seconds_score_generation_only": scores_only,
        "hr@50_random_model": result["hr@50"],
        "torch": torch.__version__, "python": platform.python_version(),
    }
    out.update(mem.as_dict())
    if mem.start_mb is not None and mem.peak_mb is not None:
        out["peak_memory_of_evaluate_mb"] = round(mem.peak_mb - mem.start_mb, 1)
    out["malloc_mmap_threshold"] = os.environ.get(MMAP_ENV)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

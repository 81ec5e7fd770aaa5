"""Benchmark: one FedMR training round chunk by chunk, with either form of the feature mappings.

Times ``engine.train_chunk`` for every chunk of round 1 (evaluation excluded) and prints one line
a chunk (clients, longest client's samples, rows, the largest client's rows |I_u|, seconds) and
the total. ``--form`` forces one form of the clients' feature mappings (fed/feature_maps.py):
``kernel`` (coefficients over the client's rows), ``explicit`` ((d, D_m) matrices), or ``auto``
(the engine's choice per chunk). The results are identical; only the time differs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_fedmr_chunks.py --data movielens-posters --form kernel
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_fedmr_chunks.py --data movielens-posters --form auto
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install

from fedmm_lite.data import NegativeSampler, load_dataset       # noqa: E402
from fedmm_lite.encoders import encode_dataset                  # noqa: E402
from fedmm_lite.fed import engine                               # noqa: E402
from fedmm_lite.fed.config import default_config                # noqa: E402
from fedmm_lite.fed.feature_maps import FORMS                   # noqa: E402
from fedmm_lite.fed.rounds import plan_round                    # noqa: E402
from fedmm_lite.fed.state import new_state                      # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="movielens-posters")
    p.add_argument("--backbone", default="fedavg")
    p.add_argument("--strategy", default="mix")
    p.add_argument("--form", default="auto", choices=FORMS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    encode_dataset(dataset, device="cpu", progress=False)
    config = default_config(args.backbone, method="fedmr", strategy=args.strategy, device="cpu",
                            seed=args.seed, feature_map_form=args.form)
    generator = torch.Generator().manual_seed(config.seed)
    state = new_state(config, dataset, generator)
    sizes = torch.as_tensor(np.diff(np.asarray(dataset.train_indptr)), dtype=torch.long)
    _, plans = plan_round(dataset, config, generator, NegativeSampler(dataset, "cpu"), sizes,
                          state.method.mixes_sizes)
    total = 0.0
    for plan in plans:
        start = time.perf_counter()
        engine.train_chunk(state, plan, config, 1)
        seconds = time.perf_counter() - start
        total += seconds
        most = int(torch.bincount(plan.row_owner).max())
        print(f"clients {plan.n_clients:4d}  samples {int(plan.lengths.max()):5d}  "
              f"rows {int(plan.rows.shape[0]):6d}  max |I_u| {most:5d}  {seconds:7.1f} s", flush=True)
    print(f"{args.data} {args.backbone}+fedmr-{args.strategy} form={args.form}: {total:.1f} s for round 1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

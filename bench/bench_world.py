"""Time the world generator per preset and print its statistics as one JSON object.

    python bench/bench_world.py                    # quick, full, large (seed 0)
    python bench/bench_world.py --presets quick full --seed 3

Each preset is generated into a fresh temporary folder (the cache in data_home() is not touched);
``simulate_seconds`` is the sampling alone, ``seconds`` the whole generation with rendering and
writing. Statistics are read back from the written CSVs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmm_lite.data.world import WORLD_PRESETS, generate_world, simulate_world  # noqa: E402


def folder_stats(folder: Path) -> dict:
    inter = pd.read_csv(folder / "interactions.csv", dtype={"user_id": str, "item_id": str})
    items = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
    per_user = inter.groupby("user_id").size()
    per_item = inter.groupby("item_id").size().reindex(items["item_id"], fill_value=0)
    top = np.sort(per_item.to_numpy())[::-1][: max(1, len(items) // 10)].sum()
    n_users, n_items = per_user.size, len(items)
    return {
        "users": int(n_users),
        "items": int(n_items),
        "interactions": int(len(inter)),
        "sparsity": round(1 - len(inter) / (n_users * n_items), 5),
        "interactions_per_user": {"min": int(per_user.min()), "median": float(per_user.median()),
                                  "mean": round(float(per_user.mean()), 2),
                                  "max": int(per_user.max())},
        "items_without_interactions": int((per_item == 0).sum()),
        "items_with_at_most_5": int((per_item <= 5).sum()),
        "top10pct_items_share": round(float(top / len(inter)), 4),
        "missing_titles": int((items["title"] == "").sum()),
        "missing_images": int((items["image"] == "").sum()),
        "folder_megabytes": round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                                  / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["quick", "full", "large"],
                        choices=sorted(WORLD_PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = {}
    for preset in args.presets:
        config = WORLD_PRESETS[preset]
        start = time.perf_counter()
        simulate_world(config, np.random.default_rng(args.seed))
        simulate_seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            folder = generate_world(config, args.seed, Path(tmp) / "world", preset=preset)
            seconds = time.perf_counter() - start
            result[preset] = {"seconds": round(seconds, 3),
                              "simulate_seconds": round(simulate_seconds, 3),
                              **folder_stats(folder)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

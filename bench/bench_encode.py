"""Items per second of each item encoder, on CPU and (when present) CUDA: a table, then JSON.

    python bench/bench_encode.py          # 64 items: pixels+minilm, clip-random, clip-random+minilm
    python bench/bench_encode.py --items 256 --threads 2 --encoders clip-random

Each encoder is loaded once (load time reported apart), warmed up on a few items, then timed on
``--items`` rendered 64x64 pictures with templated titles through ``encode_dataset`` (reading the
files, encoding pictures and titles, imputing; no cache). ``clip`` (OpenAI weights) has the same
architecture and cost as ``clip-random``; it is not timed here because the hub is unreachable.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmm_lite.data.dataset import Dataset  # noqa: E402
from fedmm_lite.encoders import build_encoder, encode_dataset  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
THINGS = ["lamp", "mug", "shoe", "chair", "vase", "backpack"]


def synthetic_items(folder: Path, n: int, seed: int = 0) -> Dataset:
    """n items: a coloured ellipse or box on white, and a title naming colour and thing."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    paths, titles = [], []
    for i in range(n):
        colour, thing = COLOURS[rng.integers(6)], THINGS[rng.integers(6)]
        img = Image.new("RGB", (64, 64), "white")
        draw = ImageDraw.Draw(img)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([12, 12, 52, 52], fill=colour)
        path = folder / "images" / f"{i}.png"
        img.save(path)
        paths.append(path)
        titles.append(f"{colour} {thing} by brand {rng.integers(100)}")
    return Dataset(name="bench", user_ids=np.array(["u0"]), item_ids=np.array([str(i) for i in range(n)]),
                   titles=titles, image_paths=paths, train_indptr=np.array([0, 1]),
                   train_indices=np.array([0]), valid_items=np.array([1]), test_items=np.array([2]),
                   root=None)


def bench_one(tag: str, device: str, dataset: Dataset, batch_size: int) -> dict:
    encoder = build_encoder(tag, device, batch_size)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # loads the model(s) and warms up
        warm = synthetic_items(Path(tmp), 4)
        encode_dataset(warm, encoder, device=device, batch_size=batch_size, progress=False, cache=False)
    load_seconds = time.perf_counter() - started
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    summary = encode_dataset(dataset, encoder, device=device, batch_size=batch_size, progress=False,
                             cache=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"encoder": tag, "device": device, "items": summary.items, "seconds": summary.seconds,
            "items_per_second": summary.items_per_second, "load_and_warmup_seconds": round(load_seconds, 2),
            "pretrained": summary.pretrained, "image_dim": summary.image_dim, "text_dim": summary.text_dim}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--encoders", default="pixels+minilm,clip-random,clip-random+minilm")
    p.add_argument("--devices", default="auto", help="auto = cpu, plus cuda when present")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the JSON object here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices != "auto" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthetic_items(Path(tmp), args.items)
        results = [bench_one(tag, device, dataset, args.batch_size)
                   for device in devices for tag in args.encoders.split(",")]
    report = {"benchmark": "encode", "torch_threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(),
              "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "batch_size": args.batch_size, "results": results}
    print("| encoder | device | items | seconds | items/s | load + warm-up s |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['encoder']} | {r['device']} | {r['items']} | {r['seconds']:.2f} | "
              f"{r['items_per_second']:.2f} | {r['load_and_warmup_seconds']:.1f} |")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

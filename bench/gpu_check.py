"""The GPU check: everything the book claims about CUDA, in one command (``bench/gpu_check.sh``).

On a machine with an NVIDIA GPU and a CUDA build of torch:

1. every chapter and every exercise solutions notebook in quick mode with the device forced to
   CUDA (``FEDMM_DEVICE=cuda``: what ``device="auto"`` means in the package), each checked to
   report ``device: cuda`` in its environment cell, and timed;
2. CPU against CUDA on the same seed: ``python -m fedmm_lite run --quick --seed 0`` once with
   ``--device cpu`` and once with ``--device cuda`` for the five backbones and FedAvg + FedMR, and
   the final round's validation and test metrics compared with a tolerance of a few users (float
   sums on a GPU run in another order, so a few targets may cross a cut-off; exact equality is not
   expected);
3. the engine benches on CUDA: ``bench_engine.py``, ``bench_fedmr.py``, ``bench_large.py``,
   ``bench_metrics.py`` with ``--device cuda``, and ``bench_encode.py`` on CPU and CUDA;
4. a markdown report for ``bench/README.md``: ``_build/gpu-check/gpu_check.md`` (printed at the end).

    bench/gpu_check.sh                          # all of it (about half an hour on a recent GPU)
    bench/gpu_check.sh --skip-benches           # chapters and the CPU/CUDA comparison only
    bench/gpu_check.sh --device cpu --skip-benches --chapters book/01_data.ipynb   # test the script

Without a CUDA device it stops at once with exit status 2 and a line saying so. ``--device cpu``
runs the same steps on the CPU, to test the script itself on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap")
METRICS = ("hr@10", "hr@20", "hr@50", "ndcg@10", "ndcg@20", "ndcg@50")
NO_CUDA = ("gpu_check: no CUDA device: torch {torch} (CUDA build: {build}) sees no GPU. Run it on a "
           "machine with an NVIDIA GPU and a CUDA build of torch (or --device cpu to test the script).")


class CheckFailed(RuntimeError):
    """A step of the GPU check found a problem (the message says which)."""


def require_cuda(device: str) -> str:
    """The GPU's name; exits with status 2 and one clear line when ``device`` is CUDA and none is present."""
    import torch

    if device == "cpu":
        return "CPU (--device cpu: testing the script)"
    if not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, build=torch.version.cuda or "none"), file=sys.stderr)
        raise SystemExit(2)
    return torch.cuda.get_device_name(0)


def check_env(device: str, data_dir: Path) -> dict:
    """The environment every step runs in: quick mode, the forced device, no progress bars."""
    env = dict(os.environ)
    env.update(FEDMM_QUICK="1", FEDMM_DEVICE=device, FEDMM_DATA_DIR=str(data_dir), TQDM_DISABLE="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=os.pathsep.join(
                   [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


# ------------------------------------------------------------------------------------ chapters
def run_notebook(path: Path, env: dict, timeout: int = 1800) -> tuple[float, str]:
    """Execute a notebook (cwd = its folder) in ``env``; (seconds, the environment report printed)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)                       # the kernel inherits this process's environment
    try:
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    report = ""
    for cell in nb.cells:
        if cell.cell_type == "code" and "environment_report(" in cell.source:
            report = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
            break
    return seconds, report


def reported_device(report: str) -> str:
    """The device named by an environment report ("device:          cuda (NVIDIA ...)" -> "cuda")."""
    for line in report.splitlines():
        if line.startswith("device:"):
            return line.split(":", 1)[1].split()[0]
    return ""


def check_chapters(paths: list[Path], device: str, env: dict) -> list[dict]:
    rows = []
    for path in paths:
        print(f"gpu_check: {path.relative_to(ROOT)} (quick mode, FEDMM_DEVICE={device}) ...", flush=True)
        seconds, report = run_notebook(path, env)
        used = reported_device(report)
        if not used.startswith(device):
            raise CheckFailed(f"{path.relative_to(ROOT)}: its environment report says device {used!r}, "
                              f"not {device}:\n{report}")
        rows.append({"notebook": str(path.relative_to(ROOT)), "device": used, "seconds": round(seconds, 1)})
    return rows


# ------------------------------------------------------------------------ CPU against the device
def run_cli(args: list[str], env: dict) -> dict:
    """``python -m fedmm_lite run ... --json FILE`` in a fresh process; the JSON object."""
    out = Path(env["FEDMM_DATA_DIR"]) / "runs" / ("-".join(a.strip("-") for a in args if a) + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "fedmm_lite", "run", *args, "--json", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise CheckFailed(f"fedmm_lite run {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return json.loads(out.read_text())


def users_of(run: dict) -> int:
    """Test users of a run (every user has one test target): the ``dataset`` statistics of its JSON."""
    return int(run["dataset"]["users"])


def compare_runs(cpu: dict, other: dict, users: int, tolerance_users: float) -> dict:
    """The largest difference of the last round's validation and test metrics, in users.

    A metric is a mean over ``users`` targets, each contributing at most 1, so a difference of k/U
    means at most k targets moved across a cut-off (or changed rank within it, for NDCG)."""
    last_cpu, last_other = cpu["history"][-1], other["history"][-1]
    if last_cpu["round"] != last_other["round"]:
        raise CheckFailed(f"the runs stopped at different rounds: {last_cpu['round']} and {last_other['round']}")
    diff = max(abs(last_cpu[split][m] - last_other[split][m]) for split in ("valid", "test") for m in METRICS)
    return {"round": last_cpu["round"], "largest difference": round(diff, 5), "in users": round(diff * users, 2),
            "tolerance (users)": tolerance_users, "agree": diff * users <= tolerance_users + 1e-9,
            "test HR@50 cpu": round(last_cpu["test"]["hr@50"], 4), "test HR@50 device": round(last_other["test"]["hr@50"], 4)}


def check_devices(device: str, env: dict, rounds: int, tolerance_users: float) -> list[dict]:
    rows = []
    configurations = [[f"--backbone={b}"] for b in BACKBONES] + [["--backbone=fedavg", "--method=fedmr"]]
    for extra in configurations:
        base = ["--data=world", "--quick", f"--rounds={rounds}", "--seed=0", *extra]
        print(f"gpu_check: {' '.join(extra)} on cpu and on {device} ...", flush=True)
        cpu = run_cli([*base, "--device=cpu"], env)
        other = run_cli([*base, f"--device={device}"], env)
        row = {"configuration": " ".join(e.split("=", 1)[1] for e in extra), "device": device,
               **compare_runs(cpu, other, users_of(cpu), tolerance_users)}
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------- benches
def bench_commands(device: str, out: Path) -> list[tuple[str, list[str]]]:
    """The engine benches with the device forced (their own options; see bench/README.md)."""
    b = ROOT / "bench"
    return [
        ("bench_engine (a) on the device", [str(b / "bench_engine.py"), "--device", device, "--rounds", "1",
                                            "--loop-clients", "100", "--threads", "1", "--json", str(out / "bench_engine.json")]),
        ("bench_fedmr on the device", [str(b / "bench_fedmr.py"), "--device", device, "--rounds", "1",
                                       "--loop-clients", "100", "--threads", "1", "--json", str(out / "bench_fedmr.json")]),
        ("bench_large (c) on the device", [str(b / "bench_large.py"), "--device", device, "--rounds", "2",
                                           "--threads", "1", "--json", str(out / "bench_large.json")]),
        ("bench_metrics on the device", [str(b / "bench_metrics.py"), "--device", device]),
        ("bench_encode, CPU and CUDA", [str(b / "bench_encode.py"), "--devices", "auto", "--items", "256",
                                        "--json", str(out / "bench_encode.json")]),
    ]


def run_benches(device: str, env: dict, out: Path) -> list[tuple[str, str]]:
    sections = []
    bench_env = {k: v for k, v in env.items() if k not in ("FEDMM_QUICK", "FEDMM_DEVICE")}   # full size
    bench_env["OMP_NUM_THREADS"] = "1"
    for title, command in bench_commands(device, out):
        print(f"gpu_check: {title} ...", flush=True)
        result = subprocess.run([sys.executable, *command], cwd=ROOT, env=bench_env, capture_output=True, text=True)
        if result.returncode != 0:
            raise CheckFailed(f"{title} failed:\n{result.stderr[-2000:]}")
        sections.append((title, "```\n" + " ".join(["python", *[str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT)) else c
                                                              for c in command]]) + "\n```\n\n" + result.stdout.strip()))
    return sections


# ---------------------------------------------------------------------------------------- report
def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def report(gpu: str, chapters: list[dict], devices: list[dict], benches: list[tuple[str, str]]) -> str:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    parts = [f"## GPU check ({datetime.date.today().isoformat()}, commit {commit})",
             f"Machine: {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}; Python "
             f"{platform.python_version()}; command: `bench/gpu_check.sh`.",
             "### Chapters and solutions notebooks, quick mode, device forced (FEDMM_DEVICE)",
             markdown_table(chapters),
             "### CPU against the device, same seed, final round (`python -m fedmm_lite run --quick --seed 0`)",
             markdown_table(devices)]
    for title, body in benches:
        parts += [f"### {title}", body]
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (tests the script)")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "gpu-check")
    parser.add_argument("--chapters", nargs="*", type=Path, default=None,
                        help="notebooks to run (default: every chapter and solutions notebook)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the CPU/device comparison runs")
    parser.add_argument("--tolerance-users", type=float, default=5.0,
                        help="largest metric difference allowed between CPU and device, in test users")
    parser.add_argument("--skip-chapters", action="store_true")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--skip-benches", action="store_true")
    args = parser.parse_args(argv)

    gpu = require_cuda(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    env = check_env(args.device, args.out / "data")
    notebooks = ([p.resolve() for p in args.chapters] if args.chapters is not None else
                 sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "book" / "exercises").glob("*_solutions.ipynb")))
    try:
        chapters = [] if args.skip_chapters else check_chapters(notebooks, args.device, env)
        devices = [] if args.skip_compare else check_devices(args.device, env, args.rounds, args.tolerance_users)
        benches = [] if args.skip_benches else run_benches(args.device, env, args.out)
    except CheckFailed as err:
        print(f"gpu_check: FAILED: {err}", file=sys.stderr)
        return 1
    text = report(gpu, chapters, devices, benches)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    disagree = [r["configuration"] for r in devices if not r["agree"]]
    if disagree:
        print(f"gpu_check: FAILED: CPU and {args.device} differ by more than {args.tolerance_users} users for "
              f"{', '.join(disagree)}", file=sys.stderr)
        return 1
    print(f"gpu_check: passed; the report is in {args.out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

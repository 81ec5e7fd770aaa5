"""Side by side, in one run on one machine: the official PFedRec or FedRAP code and ours with the
same settings on MovieLens-100K, each in a child process on one thread; wall time per round and in
all, CPU seconds, peak memory (the child's maximum resident set) and the metrics at the round each
selects on validation, with their ratios.

    .venv/bin/python bench/bench_official.py pfedrec --official /path/to/IJCAI-23-PFedRec \\
        --python /path/to/venv/bin/python
    .venv/bin/python bench/bench_official.py fedrap --official /path/to/FedRAP --python ... \
        --official-rounds 5

``--official-rounds N`` (fewer than ``--rounds``) runs the official code N rounds only and scales its
times to ``--rounds`` (labelled an estimate in the table): the official FedRAP takes about 50 CPU
seconds a round on ml-100k.

The official codes are not part of this repository: fetch them (Zhangcx19/IJCAI-23-PFedRec,
mtics/FedRAP), patch device selection and what current Python / pandas / numpy need
(bench/README.md says which lines), and give their folders here. PFedRec reads
``data/ml-100k/ratings.dat`` in its folder, FedRAP ``../datasets/movielens/ml-100k.dat``: the same
file as the ml-100k preset reads. Both evaluate validation and test at every round, as ours does
here. The result goes to bench/results/ml100k/side_by_side_<code>.json; ``--table`` prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "ml100k"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

# the official commands (README of each code; FedRAP: its ml-100k line verbatim)
OFFICIAL_ARGS = {
    "pfedrec": [],
    "fedrap": ["--alias", "FedRAP", "--dataset", "movielens", "--data_file", "ml-100k.dat",
               "--mu", "1e-3", "--l2_regularization", "1e-6", "--lr_network", "1e-4", "--lr_args", "1e3"],
}
OURS = {"pfedrec": "pfedrec-official-settings", "fedrap": "fedrap-official-settings"}

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:,\d{3})?)")
PFEDREC_LINE = re.compile(r"\[(Testing|Evluating) Epoch (\d+)\] HR = ([\d.]+), NDCG = ([\d.]+)")
FEDRAP_LINE = re.compile(r"\[Epoch (\d+)/\d+\]\[(Test|Validation)\] HR@10 = ([\d.]+), NDCG@10 = ([\d.]+)")


def run_child(argv: list, cwd: Path, log: Path) -> dict:
    """Run ``argv`` to its end on one thread; its wall seconds, CPU seconds and peak RSS (MB)."""
    env = {**os.environ, **ONE_THREAD}
    start = time.perf_counter()
    with open(log, "w") as sink:
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} ... exited with {os.waitstatus_to_exitcode(status)}; see {log}")
    return {"wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def _stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f" if "," in text else "%Y-%m-%d %H:%M:%S")


def parse_official_log(code: str, log: Path) -> list:
    """Per round of the official log: valid and test HR@10 / NDCG@10 and the wall seconds since
    the previous round ended (timestamps: milliseconds for PFedRec, seconds for FedRAP)."""
    rounds, last = {}, None
    first = None
    for raw in log.read_text(errors="replace").splitlines():
        line = ANSI.sub("", raw)
        stamp = STAMP.match(line)
        when = _stamp(stamp.group(1)) if stamp else None
        if when is not None and first is None:
            first = when
        if code == "pfedrec" and (m := PFEDREC_LINE.search(line)):
            split, r = ("test" if m.group(1) == "Testing" else "valid"), int(m.group(2)) + 1
        elif code == "fedrap" and (m := FEDRAP_LINE.search(line)):
            split, r = ("test" if m.group(2) == "Test" else "valid"), int(m.group(1))
        else:
            continue
        hr, ndcg = (float(m.group(3)), float(m.group(4))) if code == "pfedrec" else \
            (float(m.group(3)), float(m.group(4)))
        entry = rounds.setdefault(r, {"round": r})
        entry[f"{split}_hr@10"], entry[f"{split}_ndcg@10"] = hr, ndcg
        entry["ended"] = when
    out = []
    for r in sorted(rounds):
        entry = rounds[r]
        previous = last if last is not None else first
        entry["round_seconds"] = (entry["ended"] - previous).total_seconds() if previous else None
        last = entry.pop("ended")
        out.append(entry)
    return out


def select_like_the_code(rounds: list) -> dict:
    """The official codes' choice: the round with the best validation HR@10, the LAST of ties
    (``>=``, PFedRec's rule; FedRAP's own code selects on test, not used here)."""
    best = rounds[0]
    for entry in rounds[1:]:
        if entry["valid_hr@10"] >= best["valid_hr@10"]:
            best = entry
    return best


def side_by_side(code: str, official: Path, python: str, rounds: int, official_rounds: int,
                 reuse: bool = False) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"official_{code}.log"
    argv = [python, "train.py", *OFFICIAL_ARGS[code], "--num_round", str(official_rounds)]
    print(f"official {code}: {' '.join(argv[1:])} (in {official})", flush=True)
    measures = OUT / f"official_{code}_measures.json"
    if reuse and measures.is_file() and log.is_file():
        theirs = json.loads(measures.read_text())        # an earlier run of the same command
        print(f"official {code}: reusing {measures.name} and {log.name}", flush=True)
    else:
        theirs = run_child(argv, official, log)
        measures.write_text(json.dumps(theirs) + "\n")   # kept before anything else can fail
    theirs["rounds"] = parse_official_log(code, log)
    theirs["command"] = " ".join(["python", *argv[1:]])
    theirs["rounds_run"] = official_rounds
    label = OURS[code]
    ours_argv = [sys.executable, str(HERE / "ml100k_reproduction.py"), "run", label,
                 "--set", json.dumps({"rounds": rounds})]
    print(f"ours: {' '.join(ours_argv[1:])}", flush=True)
    ours = run_child(ours_argv, HERE.parent, OUT / f"ours_{code}.log")
    record = json.loads((OUT / f"{label}-rounds{rounds}.json").read_text())
    seconds = [h["seconds"] for h in record["history"]]
    ours["round_seconds"] = [b - a for a, b in zip(seconds, seconds[1:])]
    ours["command"] = " ".join(["python", *[str(Path(a).relative_to(HERE.parent)) if a.startswith(str(HERE))
                                            else a for a in ours_argv[1:]]])
    ours["best_round"], ours["valid"], ours["test"] = record["best_round"], record["valid"], record["test"]
    ours["settings"] = record["settings"]
    ours["curve"] = [{"round": h["round"], "valid_hr@10": h["valid_hr@10_sampled"],
                      "test_hr@10": h["test_hr@10_sampled"]} for h in record["history"]]
    result = {"code": code, "rounds": rounds, "official": theirs, "ours": ours,
              "load_average": os.getloadavg()}
    (OUT / f"side_by_side_{code}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def table(result: dict) -> str:
    """The side-by-side table (markdown), ratios official / ours."""
    theirs, ours, R = result["official"], result["ours"], result["rounds"]
    ran = theirs.get("rounds_run", R)
    scale = R / ran                       # the official code ran fewer rounds: times scaled up
    estimate = f" (official: {ran} rounds run, x{scale:g})" if ran != R else ""
    best = select_like_the_code(theirs["rounds"])
    their_rounds = [r["round_seconds"] for r in theirs["rounds"] if r["round_seconds"]]
    t_med, o_med = statistics.median(their_rounds), statistics.median(ours["round_seconds"])
    rows = [
        ("seconds per round, wall (median)", t_med, o_med),
        (f"total wall seconds, {R} rounds, valid + test every round{estimate}",
         theirs["wall_seconds"] * scale, ours["wall_seconds"]),
        (f"CPU seconds (user + sys), whole run{estimate}", theirs["cpu_seconds"] * scale,
         ours["cpu_seconds"]),
        ("peak memory (MB, max RSS)", theirs["peak_rss_mb"], ours["peak_rss_mb"]),
    ]
    lines = [f"| {result['code']} on ml-100k, {R} rounds | official | ours | official / ours |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {a:,.2f} | {b:,.2f} | {a / b:,.1f}x |" for name, a, b in rows]
    within = f" (of the official code's {ran})" if ran != R else ""
    lines.append(f"| validation-selected round{within} | {best['round']} | {ours['best_round']} | |")
    for key, name in (("hr@10", "HR@10"), ("ndcg@10", "NDCG@10")):
        a, b = best[f"test_{key}"], ours["test"][f"{key}_sampled"]
        lines.append(f"| test {name} there (sampled, 99 negatives) | {a:.4f} | {b:.4f} | {a / b:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("code", choices=sorted(OFFICIAL_ARGS))
    parser.add_argument("--official", type=Path, help="folder of the official code (patched)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the official code")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--official-rounds", type=int, default=None,
                        help="run the official code this many rounds only and scale its times")
    parser.add_argument("--table", action="store_true", help="print the table of the last run")
    parser.add_argument("--reuse-official", action="store_true",
                        help="reuse the official run's log and measures of an earlier call (same command)")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads((OUT / f"side_by_side_{args.code}.json").read_text())))
        return 0
    if args.official is None or not (args.official / "train.py").is_file():
        parser.error("--official must be the folder of the official code (holding train.py)")
    official_rounds = min(args.official_rounds or args.rounds, args.rounds)
    print(table(side_by_side(args.code, args.official, args.python, args.rounds, official_rounds,
                             args.reuse_official)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

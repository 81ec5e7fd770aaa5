"""The command line under bad input and bad luck: one line, exit 2 (130 for Ctrl-C), no result lost.

Each case here was a traceback, a silent acceptance or a lost result before: seeds out of range,
an unbounded ``--neg-ratio``, an option for another method, a ``--json`` target that cannot be
written (checked before training; a late failure still prints the result), a run that diverges
under upload noise (a NaN must never reach evaluation as a traceback), and Ctrl-C during start-up.
"""
from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from test_cli_run import cli, env, one_error_line  # noqa: F401  (env is a fixture)


def run_main(monkeypatch, capsys, env, *argv):
    from fedmm_lite.cli import main

    monkeypatch.setenv("FEDMM_QUICK", "1")
    monkeypatch.setenv("FEDMM_DATA_DIR", env["FEDMM_DATA_DIR"])
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999", "1.5"])
def test_seed_out_of_range_is_one_line(env, seed):
    for command in ("info", "run"):
        line = one_error_line(cli(env, command, "--data", "world-quick", "--seed", seed))
        assert "--seed" in line


def test_config_refuses_a_seed_out_of_range():
    from fedmm_lite.errors import OptionError
    from fedmm_lite.fed import default_config

    with pytest.raises(OptionError, match="--seed"):
        default_config("fedavg", seed=-1)


@pytest.mark.parametrize("extra,option", [(["--neg-ratio", "100000"], "--neg-ratio"),
                                          (["--method", "fedmr", "--groups", "2"], "--groups"),
                                          (["--strategy", "sum"], "--strategy")])
def test_refused_before_anything_runs(monkeypatch, capsys, env, extra, option):
    status, out, err = run_main(monkeypatch, capsys, env, "run", "--data", "world-quick", *extra)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and option in err


def test_json_target_that_cannot_be_written_is_refused_before_training(monkeypatch, capsys, env):
    # /proc/version exists and cannot be opened for writing, not even by root
    status, out, err = run_main(monkeypatch, capsys, env, "run", "--data", "world-quick",
                                "--json", "/proc/version")
    assert status == 2 and out == ""
    assert "--json /proc/version" in err and len(err.strip().splitlines()) == 1


def test_json_to_a_file_prints_one_summary_line_and_dash_prints_the_json(env, tmp_path):
    target = tmp_path / "r.json"
    proc = cli(env, "run", "--data", "world-quick", "--backbone", "fedavg", "--rounds", "1",
               "--json", str(target))
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = json.loads(target.read_text())
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert f"test HR@50 {written['test']['hr@50']:.4f}" in lines[0]
    assert f"best round {written['best_round']}" in lines[0] and str(target) in lines[0]
    dash = cli(env, "run", "--data", "world-quick", "--backbone", "fedavg", "--rounds", "1",
               "--json", "-")
    assert dash.returncode == 0
    assert json.loads(dash.stdout)["test"] == written["test"]


def test_a_late_write_failure_still_prints_the_result(monkeypatch, capsys, env, tmp_path):
    target = tmp_path / "r.json"

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    status, out, err = run_main(monkeypatch, capsys, env, "run", "--data", "world-quick",
                                "--rounds", "1", "--json", str(target))
    assert status == 2
    assert json.loads(out)["config"]["rounds"] == 1            # the result is on stdout
    assert len(err.strip().splitlines()) == 1 and "--json" in err and "stdout" in err


def test_divergence_under_noise_is_one_line_that_says_what_helps(env, tmp_path):
    """FedAvg + FedMR with the papers' Laplace scale 5 on world-quick diverges in round 2 (its
    scores become NaN): one line naming the round, the noise and the remedy; the rounds measured
    before the divergence are still written, with where it diverged."""
    target = tmp_path / "diverged.json"
    proc = cli({**env, "TQDM_DISABLE": "1"}, "run", "--data", "world-quick", "--backbone", "fedavg",
               "--method", "fedmr", "--noise", "laplace:5", "--rounds", "3", "--json", str(target))
    line = one_error_line(proc)
    assert "diverged" in line and "--noise laplace:5" in line and "--clip" in line and str(target) in line
    written = json.loads(target.read_text())
    assert written["diverged"]["round"] == 2 and "diverged" in written["diverged"]["message"]
    assert [h["round"] for h in written["history"]] == [0, 1]            # what was measured before
    assert written["best_round"] in (0, 1)


def test_importing_the_command_line_does_not_import_torch():
    """Ctrl-C during start-up lands inside ``main`` (which turns it into one line) only if the
    heavy imports happen there, not while the package is imported."""
    code = "import sys, fedmm_lite.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_cli_leaves_the_callers_arithmetic_as_it_was(monkeypatch, capsys, env):
    """main() flushes denormal floats while its command works (config.flush_denormals) and gives
    the caller's setting back: called from Python (a test, a notebook) it changes nothing after."""
    from fedmm_lite.config import denormals_flushed

    assert not denormals_flushed()
    status, _, _ = run_main(monkeypatch, capsys, env, "run", "--data", "world-quick", "--rounds", "1")
    assert status == 0
    assert not denormals_flushed()


def test_a_round_imports_nothing_after_the_cli_loaded(env):
    """A module imported in the middle of a run can swallow Ctrl-C: mpmath, which
    torch.use_deterministic_algorithms imported lazily in the first round, wraps an import in a bare
    `except: pass`, and interrupts in that second were lost (the run went on to the end). The CLI
    loads that module while Ctrl-C is held (cli._load), and a round then imports nothing."""
    code = ("import sys\n"
            "from fedmm_lite import cli\n"
            "cli._load('run')\n"
            "print('torch._inductor.config' in sys.modules)\n"
            "from fedmm_lite.fed.rounds import round_arithmetic\n"
            "before = set(sys.modules)\n"
            "with round_arithmetic():\n"
            "    pass\n"
            "print(sorted(set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "[]"]


def test_ctrl_c_while_torch_loads_is_always_one_line(env):
    """Many interrupts 0.3 to 0.7 s after start-up, while torch's native modules load: every one
    ends with "interrupted" and status 130. Before Ctrl-C was held during that load
    (cli._ctrl_c_held), about one such run in seven died by the signal or aborted in C++."""
    outcomes = []
    for i in range(18):
        proc = subprocess.Popen([sys.executable, "-m", "fedmm_lite", "run", "--data", "world-quick",
                                 "--rounds", "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**env, "TQDM_DISABLE": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(0.3 + 0.05 * (i % 9))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        outcomes.append((proc.returncode, lines[-1] if lines else ""))
    assert outcomes == [(130, "interrupted")] * len(outcomes)


@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_ctrl_c_during_start_up_is_one_line(env, delay):
    proc = subprocess.Popen([sys.executable, "-m", "fedmm_lite", "run", "--data", "world-quick",
                             "--rounds", "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env, "TQDM_DISABLE": "1"},
                            # a shell's background job inherits SIGINT ignored: a user's terminal does not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        # 500 quick rounds take about 13 s: an interrupt at 3 s at the latest was lost
        pytest.fail("the run ignored the interrupt and finished")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted"

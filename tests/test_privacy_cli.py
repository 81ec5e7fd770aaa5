"""The command line's privacy options: --dp local|central --clip S --noise-multiplier z --delta D
--target-epsilon E. Bad combinations are one line and exit 2 before anything runs; a run reports
epsilon per round in its JSON."""
from __future__ import annotations

import json

import pytest

from test_cli_hardening import run_main
from test_cli_run import env  # noqa: F401  (a fixture)

pytest.importorskip("dp_accounting")


@pytest.mark.parametrize("extra,option", [
    (["--clip", "1"], "--clip"),                                                      # no --dp
    (["--dp", "local", "--clip", "1"], "--noise-multiplier"),                        # clip without noise
    (["--dp", "central", "--noise-multiplier", "1"], "--clip"),                      # noise without clip
    (["--dp", "central", "--clip", "1", "--noise-multiplier", "1", "--delta", "1"], "--delta"),
    (["--dp", "central", "--clip", "-2", "--noise-multiplier", "1"], "--clip"),
    (["--dp", "central", "--clip", "1", "--noise-multiplier", "-1"], "--noise-multiplier"),
    (["--dp", "central", "--clip", "1", "--noise-multiplier", "1", "--target-epsilon", "-1"], "--target-epsilon"),
    (["--dp", "central", "--clip", "1", "--noise-multiplier", "0.3", "--target-epsilon", "0.01"], "--target-epsilon"),
    (["--dp", "local", "--clip", "1", "--noise-multiplier", "1", "--noise", "laplace:1"], "--noise"),
    (["--dp", "everywhere"], "--dp"),
])
def test_bad_privacy_options_are_one_line(monkeypatch, capsys, env, extra, option):
    status, out, err = run_main(monkeypatch, capsys, env, "run", "--data", "world-quick", "--rounds", "2", *extra)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and option in err and "Traceback" not in err


def test_a_dp_run_reports_epsilon_per_round_and_stops_at_the_target(monkeypatch, capsys, env):
    status, out, err = run_main(monkeypatch, capsys, env, "run", "--data", "world-quick", "--rounds", "6",
                                "--dp", "central", "--clip", "2", "--noise-multiplier", "2",
                                "--sample-ratio", "0.5", "--target-epsilon", "3", "--json", "-")
    assert status == 0, err
    result = json.loads(out)
    privacy = result["privacy"]
    assert privacy["dp"] == "central" and privacy["delta"] == 1e-5
    eps = privacy["epsilon_per_round"]
    assert 0 < len(eps) < 6 and eps[-1] <= 3 and privacy["stopped_at_target_epsilon"]
    assert [h["epsilon"] for h in result["history"][1:]] == eps
    assert all("clipped_fraction" in h["upload_norms"] for h in result["history"][1:])

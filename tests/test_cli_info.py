"""``python -m fedmm_lite info``: JSON statistics, and one clear stderr line for bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _info(*args: str) -> subprocess.CompletedProcess:
    # FEDMM_DATA_DIR (set by conftest) is inherited: nothing is written to ~/.cache
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fedmm_lite", "info", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_info_prints_statistics_as_json(tiny_folder):
    result = _info("--data", str(tiny_folder))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["name"] == "tiny"
    assert (stats["users"], stats["items"], stats["interactions"]) == (12, 20, 72)
    assert stats["sparsity"] == pytest.approx(1 - 72 / (12 * 20))
    assert (stats["missing_images"], stats["missing_titles"]) == (0, 0)
    assert stats["report"]["interactions_read"] == 72


def test_info_on_a_malformed_folder_exits_2_with_one_line(make_folder):
    root = make_folder([("u1", "a", 1), ("u1", "ghost", 2)], [("a", "Apple", "")], name="broken")
    result = _info("--data", str(root))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [f"error: {root / 'interactions.csv'} line 3: unknown item_id 'ghost' (not listed in "
                     f"items.csv; 1 interaction(s) with unknown items)"]


def test_info_on_an_unknown_preset_exits_2_with_one_line(tmp_path):
    result = _info("--data", "world-huge")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown dataset 'world-huge': not a preset (world, world-quick")
    assert "movielens-posters" in lines[0]

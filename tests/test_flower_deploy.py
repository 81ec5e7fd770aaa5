"""A real federation on 127.0.0.1 (issue: "Beyond one process", deployment): a SuperLink and three
SuperNodes as separate processes in insecure mode, two rounds of PFedRec on world-quick, metrics
equal to the batched engine's, every process started stopped by PID within a time bound.

The code that runs is the chapter's own: the cell of book/10_flower.ipynb tagged
``skip-execution`` (the book's build skips it; this test executes its source as it stands).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedmm_lite.flower.deploy import alive  # noqa: E402

from test_flower import assert_same_history  # noqa: E402

CHAPTER = Path(__file__).resolve().parents[1] / "book" / "10_flower.ipynb"


def skipped_cell() -> str:
    cells = [c for c in json.loads(CHAPTER.read_text())["cells"]
             if "skip-execution" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the chapter has one multi-process cell"
    return "".join(cells[0]["source"])


def test_superlink_and_supernodes_equal_the_batched_engine():
    source = skipped_cell()
    assert "LocalFederation" in source
    scope: dict = {}
    exec(compile(source, str(CHAPTER) + " [skip-execution cell]", "exec"), scope)   # noqa: S102
    deployed, reference, federation = scope["deployed"], scope["engine_reference"], scope["federation"]
    # three SuperNodes and a SuperLink were separate processes, and none is left running
    assert len(federation.processes) == 4
    assert [name for name, _ in federation.processes] == ["superlink", "supernode-0", "supernode-1", "supernode-2"]
    assert len(federation.pids) > 4                         # they spawned the apps' processes too
    assert [pid for pid in federation.pids if alive(pid)] == []
    # the federation's rounds equal the batched engine's (test_fed_equivalence.py's tolerance)
    assert [h["round"] for h in deployed["history"]] == [0, 2]
    assert_same_history(deployed["history"], reference.history)
    assert deployed["best_round"] == reference.best_round
    assert deployed["flower"]["nodes"] == 3
    assert deployed["flower"]["upload_payload_scalars_per_client"] == reference.upload_scalars_per_client
    assert deployed["history"][1]["valid"] != deployed["history"][0]["valid"]   # it trained

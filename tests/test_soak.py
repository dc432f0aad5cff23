"""The soak benchmark, short: 2 minutes of mixed calls against the real servers.

Runs ``bench/soak.py --minutes 2 --lanes 3`` as a subprocess (it starts three real
``audiosocket serve`` processes, with post-call jobs, uvloop and the native media path) and
checks its verdict and figures. Nothing here is timed tightly: the bounds are the soak's own
(no frame gap over 2 s, /healthz within 5 s, exit within grace + 5 s), which a loaded
2-core machine keeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_short_soak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "2", "--lanes", "3",
           "--out", str(tmp_path / "run"), "--json", str(out)]
    # Generous: start-up (models, prompt pre-warming), 2 minutes of calls, the drain of the
    # post-call jobs (bounded by the soak at 10 min) and the servers' shutdown.
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20 * 60)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert out.exists(), tail
    fig = json.loads(out.read_text())
    assert proc.returncode == 0, tail
    assert fig["ok"], tail
    for ctype, d in fig["calls"]["by_type"].items():
        assert d["completed"] > 0, (ctype, d)
        assert d["completed"] == d["placed"] == d["whole"], (ctype, d)
    v = fig["verdict"]
    assert v["hangs"] == 0, fig["hang_list"]
    assert v["protocol_errors"] == 0
    assert v["recordings_not_whole"] == 0
    assert v["jobs_failed"] == 0 and v["jobs_not_done"] == 0
    assert v["drained"]
    for app, s in fig["servers"].items():
        assert s["exit_code"] == 0, app
        done = sum(s["jobs_total"].get("done", {}).values())
        assert done > 0, app
        assert not s["jobs_total"].get("failed"), (app, s["jobs_total"])

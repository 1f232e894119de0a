"""What a restart imports before it is online (docs/benchmarks.md, geopush bench start): the
fences, the campaigns and the daemon's service, without the libraries only other set-ups use
(redis-py for a worker group's Redis state, the HTTP API's web stack, plotting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

NOT_AT_START = ("redis", "fastapi", "starlette", "uvicorn", "matplotlib", "httpx")


def test_the_start_up_path_leaves_the_other_libraries_unimported() -> None:
    code = (
        "import json, sys\n"
        "from engine.campaigns import catalog_warnings, load_campaigns\n"
        "from engine.daemon.loading import warm_up, load_fences_and_campaigns\n"
        "from engine.daemon.service import Service\n"
        "from fences.snapshot import load_index\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {NOT_AT_START!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []

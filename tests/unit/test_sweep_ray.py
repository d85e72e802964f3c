"""sweep --sim --ray local: the points as Ray tasks give the same folder as the plain path.

Ray is an optional extra: without it this file is skipped, and scripts/test.sh says so in its own
line (SDLAB_EXTRAS=ray make setup installs it)."""
import json

import pandas as pd
import pytest

pytest.importorskip("ray", reason="Ray is not installed (optional extra: SDLAB_EXTRAS=ray make setup); "
                                  "the --ray path was NOT tested")

from lab.sweep import Plan, grid, run_sweep  # noqa: E402

pytestmark = pytest.mark.slow


def test_sim_sweep_through_local_ray_equals_plain(tmp_path):
    plan = Plan(backend="sim", strategies=("cloud-only", "edge-only", "fixed-k:3", "fixed-k:10"), runs=2, queries=2)
    pts = grid(rtt=(0, 100, 500), rate=(10,)) + grid(rtt=(100,), rate=(10,), loss=(5,))
    quiet = dict(out=lambda s: None, progress=False)
    plain = run_sweep(pts, plan, out_dir=tmp_path / "plain", **quiet)
    # half the points first without Ray, the rest through Ray: one resumable folder either way
    run_sweep(pts[:2], plan, out_dir=tmp_path / "ray", **quiet)
    ray_dir = run_sweep(pts, plan, out_dir=tmp_path / "ray", ray_address="local", **quiet)
    meta = json.loads((ray_dir / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["ray"] == "local" and meta["points_to_run"] == 2
    pd.testing.assert_frame_equal(pd.read_csv(ray_dir / "summary.csv"), pd.read_csv(plain / "summary.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(ray_dir / "best.csv"), pd.read_csv(plain / "best.csv"))
    for p in pts:       # the task's files arrived whole
        a = (ray_dir / "points" / p.name / "run-1" / "queries.jsonl").read_text()
        assert a == (plain / "points" / p.name / "run-1" / "queries.jsonl").read_text()

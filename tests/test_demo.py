"""`kd-mh demo --quick`: every stage of the pipeline, end to end, on a small generated corpus."""

import json
import pathlib
import subprocess
import sys

from kd_mh import detect

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_quick_demo_runs_every_stage_and_writes_both_reports(tmp_path):
  # About 3-4 minutes on 2 cores: the main command must keep working, so it runs by default.
  run = subprocess.run([sys.executable, "-m", "launch.cli", "demo", f"--workdir={tmp_path}",
                        "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=1500)
  assert run.returncode == 0, run.stderr[-3000:]
  summary = json.loads((tmp_path / "demo_summary.json").read_text())
  assert 0.0 <= summary["auc"] <= 1.0 and summary["quick"]
  assert set(summary["reports"]) == {"congruent", "incongruent"}
  for kind, report in summary["reports"].items():
    assert report["verdict"] in detect.VERDICTS
    assert (report["face"] == report["voice"]) == (kind == "congruent")
    html = pathlib.Path(report["html"])
    assert html.exists() and (html.parent / "report.json").exists()
  for name in ("threshold.json", "metrics.json"):
    assert (tmp_path / "eval" / name).exists()
  assert "held-out AUC" in run.stdout and "report.html" in run.stdout


def test_the_demo_needs_a_workdir():
  run = subprocess.run([sys.executable, "-m", "launch.cli", "demo"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 2 and "workdir" in run.stderr

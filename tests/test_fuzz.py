"""Bad inputs made from the real clips (data_prep/fuzz.py) through the real corpus build."""

import hashlib
import pathlib

import pytest

from conftest import shared_path
from data_prep import fuzz


def _problems(outcomes):
  return [f"{o.case.kind} {o.case.detail} ({o.case.file[:80]}): {o.problem}"
          for o in outcomes if o.problem]


def _check_known_answers(outcomes, time_limit_s):
  by_kind = {}
  for o in outcomes:
    by_kind.setdefault(o.case.kind, []).append(o)
  # The sample holds every good clip and every kind of case.
  assert len(by_kind["good"]) == 8
  assert {"truncated", "bit flip (header)", "bit flip (payload)", "zero-length", "random bytes",
          "sample rate", "sample format", "absurd header", "preallocated download",
          "long file name", "wrong extension", "csv row", "csv file"} <= set(by_kind)
  assert all(o.status == "ok" for o in by_kind["good"])
  assert all(o.status == "skipped" and "empty file (0 bytes)" in o.reason
             for o in by_kind["zero-length"])
  hung = [o for o in by_kind["preallocated download"] if o.case.expect == fuzz.SKIPPED]
  assert hung and all(o.reason.endswith(f"timed out after {time_limit_s:g} s") for o in hung)
  statuses = {"csv file": {"refused", "rows"}}
  assert all(o.status in statuses.get(o.case.kind, {"ok", "skipped"}) for o in outcomes)


def test_a_sample_of_bad_inputs_is_reported_and_the_good_clips_come_out(tmp_path):
  outcomes = fuzz.run(tmp_path, shared_path(), n_cases=40, seed=0, workers=2, time_limit_s=10)
  assert not _problems(outcomes)
  assert len(outcomes) >= 40
  _check_known_answers(outcomes, 10)


@pytest.mark.slow
def test_every_bad_input_is_reported_and_the_good_clips_come_out(tmp_path):
  outcomes = fuzz.run(tmp_path, shared_path(), n_cases=1000, seed=1, workers=2, time_limit_s=20)
  assert not _problems(outcomes)
  assert len(outcomes) >= 200
  _check_known_answers(outcomes, 20)


def _digests(root: pathlib.Path) -> dict[str, str]:
  out = {}
  for path in sorted(p for p in root.rglob("*") if p.is_file()):
    with open(path, "rb") as f:
      head = f.read(1 << 20)  # the preallocated cases are 4 GB, all zeros after their head
    out[str(path.relative_to(root))] = f"{path.stat().st_size}:{hashlib.sha256(head).hexdigest()}"
  return out


def test_cases_are_seeded(tmp_path):
  data = shared_path()
  first = fuzz.make_cases(tmp_path / "a", data, n_cases=30, seed=5)
  again = fuzz.make_cases(tmp_path / "b", data, n_cases=30, seed=5)
  other = fuzz.make_cases(tmp_path / "c", data, n_cases=30, seed=6)
  assert first == again and first != other
  assert _digests(tmp_path / "a") == _digests(tmp_path / "b")

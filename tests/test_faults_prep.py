"""Faults during a corpus build: kill -9 and rerun, two builds into one directory, stale locks."""

import os
import pathlib

import pytest

from benchmarks import reliability
from conftest import shared_path
from data_prep import build
from data_prep.corpora.base import ClipSpec


def _small_corpus(root: pathlib.Path) -> pathlib.Path:
  """A folder corpus of 12 real clips (6 CREMA-D videos, 6 CREMA-D WAVs), linked, not copied."""
  cremad = shared_path("cremad")
  root.mkdir()
  for path in sorted(cremad.glob("video/*.flv")) + sorted(cremad.glob("audio/1001_*.wav")):
    (root / f"{path.stem}_{path.suffix[1:]}{path.suffix}").symlink_to(path)
  return root


def test_a_build_killed_mid_way_and_rerun_holds_each_clip_once(tmp_path):
  result = reliability.prep_faults(_small_corpus(tmp_path / "corpus"), tmp_path / "work",
                                   n_faults=1, seed=0, workers=2)
  assert result["problems"] == []
  assert result["faults_injected"] == result["faults_survived"] == 1
  assert result["torn_lines_injected"] == result["torn_lines_warned"] == 1
  assert result["concurrent_builds_refused"] == 1
  assert result["duplicate_lines"] == result["good_examples_lost"] == 0


@pytest.mark.slow
def test_kills_at_many_moments(tmp_path):
  result = reliability.prep_faults(shared_path("cremad"), tmp_path, n_faults=6, seed=1, workers=2)
  assert result["problems"] == []
  assert result["faults_injected"] == result["faults_survived"] == 6
  assert result["good_examples_lost"] == 0


def test_a_held_lock_refuses_a_second_build_and_a_stale_one_does_not(tmp_path):
  wav = shared_path("cremad", "audio", "1001_DFA_ANG_XX.wav")
  spec = ClipSpec(clip_id="a", corpus="t", path=str(wav))
  out = tmp_path / "out"
  out.mkdir()
  with build._exclusive(out):  # pylint: disable=protected-access  (a build in progress)
    with pytest.raises(build.BuildError, match=rf"build\.lock is held by another build "
                                               rf"\(pid {os.getpid()}\)"):
      build.build([spec], out, workers=1, progress=False)
  assert not (out / "manifest.jsonl").exists()
  # A lock file left by a killed build (its pid gone, its flock released by the kernel).
  (out / build.LOCK_FILE).write_text("999999999\n")
  (out / "clips").mkdir()
  (out / "clips" / "a.pb.tmp").write_bytes(b"half a record")
  summary = build.build([spec], out, workers=1, progress=False)
  assert summary["ok"] == 1
  assert not (out / "clips" / "a.pb.tmp").exists()
  assert (out / build.LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_time_limit_needs_a_positive_value(tmp_path):
  with pytest.raises(build.BuildError, match="time_limit_s"):
    build.build([], tmp_path, time_limit_s=0)

"""Bad inputs made from the real clips (data_prep/fuzz.py) through the real corpus build."""

import hashlib
import pathlib

import pytest

from conftest import shared_path
from data_prep import build
from data_prep import corpora
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
  outcomes = fuzz.run(tmp_path, shared_path(), n_cases=None, seed=1, workers=2, time_limit_s=20)
  assert not _problems(outcomes)
  assert len(outcomes) >= 200
  _check_known_answers(outcomes, 20)


def _digests(root: pathlib.Path) -> dict[str, str]:
  out = {}
  for path in sorted(p for p in root.rglob("*") if p.is_file()):
    with open(path, "rb") as f:
      head = f.read(1 << 20)  # the preallocated cases are 64 GiB (sparse), all zeros after their head
    out[str(path.relative_to(root))] = f"{path.stat().st_size}:{hashlib.sha256(head).hexdigest()}"
  return out


def test_cases_are_seeded(tmp_path):
  data = shared_path()
  first = fuzz.make_cases(tmp_path / "a", data, n_cases=30, seed=5)
  again = fuzz.make_cases(tmp_path / "b", data, n_cases=30, seed=5)
  other = fuzz.make_cases(tmp_path / "c", data, n_cases=30, seed=6)
  assert first == again and first != other
  assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_inputs_that_once_crashed_the_build_are_now_reported(tmp_path):
  wav = shared_path("cremad", "audio", "1001_DFA_ANG_XX.wav").read_bytes()
  root = tmp_path / "corpus"
  root.mkdir()
  fmt = wav.index(b"fmt ")
  # 0 bits per sample: PyAV opened no decoder, and touching the stream crashed the process.
  (root / "zero_bits.wav").write_bytes(wav[:fmt + 22] + b"\0\0" + wav[fmt + 24:])
  # 28 samples at 48 kHz: resampling gave no output at all.
  ravdess = shared_path("ravdess", "Actor_01", "03-01-01-01-01-01-01.wav").read_bytes()
  (root / "few_samples.wav").write_bytes(ravdess[:100])
  # A tag that is not UTF-8 (one bit flipped in the LIST/INFO chunk): PyAV refused the file.
  tag = wav.index(b"Lavf")
  (root / "bad_tag.wav").write_bytes(wav[:tag] + b"\xb9" + wav[tag + 1:])
  # A name as long as the file system allows: the build's own files add to it.
  (root / ("n" * 251 + ".wav")).write_bytes(wav)
  rows = ["zero_bits.wav,happy,s1", "few_samples.wav,sad,s1", "bad_tag.wav,sad,s1",
          "n" * 251 + ".wav,sad,s1",
          "a" * 300 + ".wav,sad,s1"]  # a name over the limit: the reader once gave up on the file
  (root / "labels.csv").write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
  specs = corpora.read_corpus("folder", str(root))
  assert len(specs) == 5
  build.build(specs, tmp_path / "out", workers=1, progress=False, time_limit_s=60)
  lines = list(build.read_manifest(tmp_path / "out" / "manifest.jsonl").values())
  assert [l["status"] for l in lines] == ["skipped", "ok", "ok", "skipped", "skipped"]
  assert "the audio stream cannot be decoded" in lines[0]["reason"]
  assert "too long for a file name" in lines[3]["reason"]
  assert "labels.csv: line 6: path" in lines[4]["reason"] and "too long" in lines[4]["reason"]

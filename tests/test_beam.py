"""The corpus build as an Apache Beam pipeline: the same examples, manifest and shards as locally."""

import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from data_prep import beam_build
from data_prep import build
from data_prep import corpora
from kd_mh import records

TWO_WORKERS = "--direct_num_workers=2 --direct_running_mode=multi_processing"


def _assert_same_example(got: dict, want: dict, clip_id: str) -> None:
  assert set(got) == set(want), clip_id
  for name, value in want.items():
    if isinstance(value, np.ndarray):
      assert got[name].dtype == value.dtype and np.array_equal(got[name], value), (clip_id, name)
    else:
      assert got[name] == value, (clip_id, name)


def _shard_examples(data_dir: str, corpus: str, split: str) -> list[dict]:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}
          for ex in tfds.as_numpy(tfds.load(build.dataset_name(corpus), data_dir=data_dir,
                                            split=split, shuffle_files=False))]


def test_direct_runner_with_two_workers_gives_the_local_build(demo_corpus, tmp_path,
                                                              monkeypatch):
  system_temp = tmp_path / "system_temp"  # where Beam's runners would leave scratch folders
  system_temp.mkdir()
  monkeypatch.setenv("TMPDIR", str(system_temp))
  monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
  specs = corpora.read_corpus("demo", str(demo_corpus["root"]))
  # Two clips of each split: enough for both workers and every shard, a fraction of the cost.
  subset = [s for split in ("train", "validation", "test")
            for s in [s for s in specs if s.split == split][:2]]
  local = demo_corpus["prepared"]
  out = tmp_path / "beam"
  options = beam_build.pipeline_options("DirectRunner", TWO_WORKERS)
  summary = build.build(subset, out, corpus="demo", progress=False,
                        clip_runner=beam_build.clip_runner(options, out))
  assert summary["ok"] == 6 and summary["processed_this_run"] == 6
  assert summary["splits"] == {"train": 2, "validation": 2, "test": 2}

  feats = records.features()
  local_lines = build.read_manifest(local / "manifest.jsonl")
  beam_lines = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
  assert [l["clip_id"] for l in beam_lines] == [s.clip_id for s in subset]  # the reader's order
  for line in beam_lines:
    clip_id = line["clip_id"]
    want = dict(local_lines[clip_id])
    assert line.pop("cpu_s") >= 0 and want.pop("cpu_s") >= 0  # timing: the only field that varies
    assert line == want, clip_id
    _assert_same_example(
        records.parse_example((out / "clips" / f"{clip_id}.pb").read_bytes(), feats),
        records.parse_example((local / "clips" / f"{clip_id}.pb").read_bytes(), feats), clip_id)
    assert (json.loads((out / "tracks" / f"{clip_id}.json").read_text())
            == json.loads((local / "tracks" / f"{clip_id}.json").read_text()))

  # The shards hold the same examples, in the same order, as the local build's for those clips.
  for split in ("train", "validation", "test"):
    got = _shard_examples(str(out / "tfds"), "demo", split)
    want = [ex for ex in _shard_examples(demo_corpus["data_dir"], "demo", split)
            if ex["clip_id"] in {s.clip_id for s in subset}]
    assert [ex["clip_id"] for ex in got] == [ex["clip_id"] for ex in want]
    for a, b in zip(got, want):
      _assert_same_example(a, b, a["clip_id"])

  # Nothing is left outside the local build's layout (the staging folder is gone), nor in the
  # system temp folder.
  assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in local.iterdir())
  assert not list(system_temp.iterdir())
  # A rerun resumes from the manifest without starting a pipeline.
  again = build.build(subset, out, corpus="demo", progress=False,
                      clip_runner=beam_build.clip_runner(options, out))
  assert again["processed_this_run"] == 0 and again["ok"] == 6


def test_results_cross_the_pipeline_unchanged(tmp_path):
  example = {"clip_id": "a/b", "label": 3, "duration_s": 2.0, "fps": np.float32(10.0),
             "faces": np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1),
             "face_mask": np.array([True, False]), "logmel": np.zeros((0, 64), np.float32),
             "speaker_tracks": np.array([0], np.int64)}
  manifest = {"clip_id": "a/b", "status": "ok", "speaker_scores": {"x": np.float64(0.25)},
              "speaker_tracks": [0], "extra": "é"}
  tracks = {"clip_id": "a/b", "frames": [{"index": 0, "boxes": {"0": [1, 2, 3, 4]}}]}
  back = beam_build.decode_result(beam_build.encode_result(
      build.ClipResult(manifest=manifest, example=example, tracks=tracks)))
  assert back.manifest == {**manifest, "speaker_scores": {"x": 0.25}}
  assert back.tracks == tracks
  _assert_same_example(back.example, {**example, "fps": 10.0}, "a/b")
  assert type(back.example["label"]) is int and type(back.example["clip_id"]) is str
  skipped = beam_build.decode_result(beam_build.encode_result(
      build.ClipResult(manifest={"clip_id": "c", "status": "skipped", "reason": "no face"})))
  assert skipped.example is None and skipped.tracks is None and skipped.manifest["reason"]


def test_bad_beam_options_fail_before_any_work():
  with pytest.raises(ValueError, match="direct_num_wrkers"):
    beam_build.pipeline_options("DirectRunner", "--direct_num_wrkers=2")
  with pytest.raises(ValueError, match="Unexpected pipeline runner"):
    beam_build.pipeline_options("NoSuchRunner")
  with pytest.raises(ValueError, match="once"):
    beam_build.pipeline_options("DirectRunner", ["--runner=FlinkRunner"])
  options = beam_build.pipeline_options("FlinkRunner", "--flink_master=localhost:8081 "
                                        "--environment_type=LOOPBACK")
  assert options.get_all_options()["flink_master"] == "localhost:8081"


def test_command_line_runs_the_beam_pipeline(tmp_path, demo_corpus):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", "prep", "--corpus=folder",
                           f"--root={tmp_path / 'folder'}", "--noprogress", *args],
                          capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1])

  (tmp_path / "folder").mkdir()
  clip = sorted((demo_corpus["root"]).rglob("*.mp4"))[0]
  shutil.copy(clip, tmp_path / "folder" / "good.mp4")
  (tmp_path / "folder" / "broken.mp4").write_bytes(b"")
  misuse = run(f"--out={tmp_path / 'o1'}", "--beam_options=--direct_num_workers=2")
  assert misuse.returncode == 2 and "needs a Beam --runner" in misuse.stderr
  typo = run(f"--out={tmp_path / 'o1'}", "--runner=DirectRunner", "--beam_options=--num_wrkers=2")
  assert typo.returncode == 2 and "not Beam pipeline options: --num_wrkers" in typo.stderr
  assert not (tmp_path / "o1").exists()
  ok = run(f"--out={tmp_path / 'o2'}", "--runner=DirectRunner", f"--beam_options={TWO_WORKERS}")
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "1 ok, 1 skipped" in ok.stdout
  lines = build.read_manifest(tmp_path / "o2" / "manifest.jsonl")
  assert lines["good"]["status"] == "ok" and "empty file" in lines["broken"]["reason"]
  assert not (tmp_path / "o2" / beam_build.STAGING).exists()

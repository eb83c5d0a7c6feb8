"""The corpus build end to end: real decoding, detection, TFRecords, manifest, resume, bad input."""

import csv
import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_path
from data_prep import build
from data_prep import corpora
from data_prep import media
from data_prep import synthetic
from kd_mh import emotions
from kd_mh import records

MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
               "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]


def _meld_row(n, dialogue, utterance, emotion="joy", start="00:00:01,000", end="00:00:03,000"):
  return [str(n), "Hi.", "Ross", emotion, "positive", str(dialogue), str(utterance), "1", "1",
          start, end]


@pytest.fixture(scope="module")
def good_clip(tmp_path_factory):
  path = tmp_path_factory.mktemp("clips") / "good.mp4"
  synthetic.make_clip(path, "happy", "happy", speaker="grace_hopper", duration_s=2.0, seed=1)
  return path


def _bad_input_corpus(root: pathlib.Path, good: pathlib.Path) -> dict[str, str]:
  """A MELD-layout corpus mixing good clips with every kind of bad input.

  Returns clip_id -> the reason fragment expected in the manifest ("" for clips that must be ok).
  """
  media_dir = root / "train_splits"
  media_dir.mkdir(parents=True)
  rng = np.random.default_rng(0)
  expected, rows = {}, []

  def add(utterance, expect, start="00:00:01,000", end="00:00:03,000", dialogue=0):
    rows.append(_meld_row(len(rows), dialogue, utterance, start=start, end=end))
    expected[f"train/dia{dialogue}_utt{utterance}"] = expect
    return media_dir / f"dia{dialogue}_utt{utterance}.mp4"

  shutil.copy(good, add(0, ""))
  shutil.copy(good, add(1, ""))
  data = good.read_bytes()
  add(2, "truncated").write_bytes(data[:len(data) * 2 // 5])
  add(3, "empty file").write_bytes(b"")
  add(4, "not a readable media file").write_text("this is a subtitle file, not a video\n")
  frames = [np.full((120, 160, 3), 90, np.uint8)] * 20
  media.write_video(add(5, "no audio stream"), frames, fps=10.0)
  speech = synthetic.synthesize_speech("neutral", 2.0, seed=0).audio
  background = [(rng.random((120, 160, 3)) * 60 + 80).astype(np.uint8) for _ in range(20)]
  media.write_video(add(6, "no face found"), background, fps=10.0, audio=speech)
  # A WAV file behind an .mp4 name: the container has no video.
  import soundfile  # pylint: disable=import-outside-toplevel
  soundfile.write(add(7, "no video stream"), speech, 16000, format="WAV")
  shutil.copy(good, add(8, "EndTime", start="00:00:05,000", end="00:00:04,000"))
  add(9, "media file not found")
  rows.append(_meld_row(len(rows), "x", 3))  # an id that is not a number
  with open(root / "train_sent_emo.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(MELD_HEADER)
    writer.writerows(rows)
  return expected


def test_bad_input_build_finishes_keeps_good_clips_and_explains_each_bad_one(tmp_path, good_clip):
  expected = _bad_input_corpus(tmp_path / "meld", good_clip)
  specs = corpora.read_corpus("meld", str(tmp_path / "meld"))
  assert len(specs) == len(expected) + 1  # the unreadable row is accounted for too
  out = tmp_path / "out"
  config = dataclasses.replace(build.PrepConfig(), require_video=True)  # MELD is audio-visual
  summary = build.build(specs, out, config, workers=1, corpus="meld", progress=False)

  lines = build.read_manifest(out / "manifest.jsonl")
  assert set(lines) == {s.clip_id for s in specs}
  for clip_id, fragment in expected.items():
    line = lines[clip_id]
    if fragment:
      assert line["status"] == "skipped", clip_id
      assert fragment in line["reason"], (clip_id, line["reason"])
    else:
      assert line["status"] == "ok", (clip_id, line["reason"])
      assert line["speaker_coverage"] >= 0.9 and line["n_frames"] == 20
  unreadable = [l for l in lines.values() if l["clip_id"] not in expected]
  assert len(unreadable) == 1 and unreadable[0]["status"] == "skipped" and unreadable[0]["reason"]
  assert summary["ok"] == 2 and summary["skipped"] == len(specs) - 2

  # The good clips are in the shards and parse back with the schema.
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  ds = tfds.load("kd_mh_meld", data_dir=str(out / "tfds"), split="train")
  clip_ids = sorted(ex["clip_id"].numpy().decode() for ex in ds)
  assert clip_ids == ["train/dia0_utt0", "train/dia0_utt1"]

  # A rerun resumes: nothing is processed again and nothing is duplicated.
  again = build.build(specs, out, config, workers=1, corpus="meld", progress=False)
  assert again["processed_this_run"] == 0 and again["ok"] == 2
  raw = (out / "manifest.jsonl").read_text().splitlines()
  assert len(raw) == len(specs) == len({json.loads(l)["clip_id"] for l in raw})

  # A torn last manifest line (a killed run) is ignored and that clip is redone.
  torn = "\n".join(raw[:-1]) + "\n" + raw[-1][:15]
  (out / "manifest.jsonl").write_text(torn)
  resumed = build.build(specs, out, config, workers=1, corpus="meld", progress=False)
  assert resumed["processed_this_run"] == 1 and resumed["clips"] == len(specs)


def test_long_clips_are_capped_and_the_cap_is_recorded(tmp_path, good_clip):
  spec = corpora.base.ClipSpec(clip_id="long", corpus="t", path=str(good_clip))
  config = dataclasses.replace(build.PrepConfig(), max_duration_s=1.0)
  result = build.process_clip(spec, config)
  assert result.manifest["status"] == "ok"
  assert "capped at 1 s" in result.manifest["note"]
  assert result.manifest["n_frames"] == 10 and result.manifest["duration_s"] == 1.0
  assert abs(len(result.example["logmel"]) * 0.01 - 1.0) <= 0.05


def test_output_directory_refuses_other_options_and_unsafe_ids(tmp_path, good_clip):
  spec = corpora.base.ClipSpec(clip_id="a", corpus="t", path=str(good_clip))
  build.build([spec], tmp_path, workers=1, progress=False)
  with pytest.raises(build.BuildError, match="fps"):
    build.build([spec], tmp_path, dataclasses.replace(build.PrepConfig(), fps=5.0), workers=1,
                progress=False)
  with pytest.raises(build.BuildError, match="safe"):
    build.build([dataclasses.replace(spec, clip_id="../escape")], tmp_path / "x", workers=1,
                progress=False)
  assert not (tmp_path / "x" / "manifest.jsonl").exists()  # refused before any work


def test_worker_processes_give_the_same_examples(tmp_path, good_clip):
  specs = [corpora.base.ClipSpec(clip_id=f"c{i}", corpus="t", path=str(good_clip), split=split)
           for i, split in enumerate(["train", "train", "test"])]
  build.build(specs, tmp_path / "one", workers=1, progress=False)
  build.build(specs, tmp_path / "two", workers=2, progress=False)
  for spec in specs:
    one = (tmp_path / "one" / "clips" / f"{spec.clip_id}.pb").read_bytes()
    two = (tmp_path / "two" / "clips" / f"{spec.clip_id}.pb").read_bytes()
    assert one == two


def test_cremad_clips_meet_the_acceptance_bar(tmp_path):
  root = shared_path("cremad")
  specs = [s for s in corpora.read_corpus("cremad", str(root)) if s.path.endswith(".flv")]
  assert len(specs) == 6
  out = tmp_path / "cremad"
  summary = build.build(specs, out, workers=1, corpus="cremad", progress=False)
  assert summary["ok"] == 6
  feats = records.features()
  for spec in specs:
    example = records.parse_example((out / "clips" / f"{spec.clip_id}.pb").read_bytes(), feats)
    duration = media.probe(spec.path).duration_s
    assert example["face_mask"].mean() >= 0.9, spec.clip_id
    assert abs(len(example["logmel"]) * 0.010 - duration) <= 0.05, spec.clip_id
    assert example["label"] == emotions.from_cremad(spec.clip_id.split("_")[2])
    assert example["faces"].shape[1:] == (64, 64, 1)
    assert example["faces"][example["face_mask"]].std() > 10  # real face pixels, not blanks
    tracks = json.loads((out / "tracks" / f"{spec.clip_id}.json").read_text())
    assert len(tracks["frames"]) == len(example["faces"])
    assert all(f["speaker_track"] in tracks["speaker_track_ids"] or f["speaker_track"] == -1
               for f in tracks["frames"])


def test_ravdess_records_carry_labels_and_speaker_independent_splits(tmp_path):
  root = shared_path("ravdess")
  specs = corpora.read_corpus("ravdess", str(root))
  assert len(specs) == 721
  out = tmp_path / "ravdess"
  summary = build.build(specs, out, workers=1, corpus="ravdess", progress=False)
  assert summary["ok"] == len(specs) and summary["skipped"] == 0
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  speakers_by_split = {}
  for split in summary["splits"]:
    seen = set()
    for ex in tfds.as_numpy(tfds.load("kd_mh_ravdess", data_dir=str(out / "tfds"), split=split)):
      name = pathlib.Path(ex["clip_id"].decode()).name
      code = name.split("-")[2]
      assert ex["label"] == emotions.from_ravdess(code)
      assert ex["label_name"].decode() == emotions.RAVDESS_NATIVE[code]
      assert ex["faces"].shape[0] == 0 and ex["logmel"].shape[0] > 250  # utterances last about 3-4 s
      seen.add(ex["speaker_id"].decode())
    speakers_by_split[split] = seen
  splits = list(speakers_by_split.values())
  assert len(splits) == 3 and all(splits)
  assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])


def test_command_line_exit_codes(tmp_path, good_clip):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", "prep", *args],
                          capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1])

  bad = run("--corpus=nope", f"--root={tmp_path}", f"--out={tmp_path / 'o'}")
  assert bad.returncode == 2 and "unknown corpus" in bad.stderr
  wrong = run("--corpus=folder", "--votes=x.csv", f"--root={tmp_path}", f"--out={tmp_path / 'o'}")
  assert wrong.returncode == 2 and "--votes does not apply" in wrong.stderr
  bad_config = run("--corpus=folder", "--fps=0", f"--root={tmp_path}", f"--out={tmp_path / 'o'}")
  assert bad_config.returncode == 2 and "PrepConfig.fps" in bad_config.stderr
  (tmp_path / "not_demo").mkdir()
  (tmp_path / "not_demo" / "train_sent_emo.csv").write_text("precious\n")
  clobber = run("--corpus=demo", f"--root={tmp_path / 'not_demo'}", f"--out={tmp_path / 'o'}")
  assert clobber.returncode == 2 and "not a demo corpus" in clobber.stderr
  assert (tmp_path / "not_demo" / "train_sent_emo.csv").read_text() == "precious\n"
  (tmp_path / "folder").mkdir()
  (tmp_path / "folder" / "broken.mp4").write_bytes(b"")
  none_ok = run("--corpus=folder", f"--root={tmp_path / 'folder'}", f"--out={tmp_path / 'o1'}",
                "--workers=1", "--noprogress")
  assert none_ok.returncode == 1 and "no clip succeeded" in none_ok.stderr
  shutil.copy(good_clip, tmp_path / "folder" / "good.mp4")
  ok = run("--corpus=folder", f"--root={tmp_path / 'folder'}", f"--out={tmp_path / 'o2'}",
           "--workers=1", "--noprogress")
  assert ok.returncode == 0, ok.stderr
  assert "1 ok, 1 skipped" in ok.stdout


def test_face_image_folder_gives_face_only_records(tmp_path):
  import matplotlib.cbook  # pylint: disable=import-outside-toplevel
  import PIL.Image  # pylint: disable=import-outside-toplevel
  import skimage.data  # pylint: disable=import-outside-toplevel
  root = tmp_path / "faces"
  for label, image in (("happy", skimage.data.astronaut()),
                       ("neutral", np.asarray(PIL.Image.open(
                           matplotlib.cbook.get_sample_data("grace_hopper.jpg")))),
                       ("contempt", skimage.data.astronaut()),
                       ("sad", np.full((64, 64, 3), 128, np.uint8))):  # no face in it
    (root / label).mkdir(parents=True)
    PIL.Image.fromarray(image).save(root / label / "0001.png")
  (root / "happy" / "broken.png").write_bytes(b"not a png")
  specs = corpora.read_corpus("faces", str(root))
  summary = build.build(specs, tmp_path / "out", workers=1, corpus="faces", progress=False)
  lines = build.read_manifest(tmp_path / "out" / "manifest.jsonl")
  by_name = {pathlib.Path(l["path"]).parent.name + "/" + pathlib.Path(l["path"]).name: l
             for l in lines.values()}
  assert by_name["sad/0001.png"]["status"] == "skipped"
  assert "no face" in by_name["sad/0001.png"]["reason"]
  assert "not a readable image" in by_name["happy/broken.png"]["reason"]
  assert summary["ok"] == 3
  feats = records.features()
  for key, label in (("happy/0001.png", emotions.index("happy")),
                     ("neutral/0001.png", emotions.index("neutral")),
                     ("contempt/0001.png", emotions.UNLABELLED)):
    example = records.parse_example(
        (tmp_path / "out" / "clips" / f"{by_name[key]['clip_id']}.pb").read_bytes(), feats)
    assert example["label"] == label
    assert example["faces"].shape == (1, 64, 64, 1) and example["face_mask"].all()
    assert example["logmel"].shape == (0, 64)


def test_a_changed_corpus_is_not_served_from_stale_records(tmp_path, good_clip):
  spec = corpora.base.ClipSpec(clip_id="a", corpus="t", path=str(good_clip), speaker_id="s1")
  build.build([spec], tmp_path, workers=1, progress=False)
  moved = dataclasses.replace(spec, split="test", label=emotions.index("sad"))
  summary = build.build([moved], tmp_path, workers=1, progress=False)
  assert summary["processed_this_run"] == 1 and summary["splits"] == {"test": 1}
  example = records.parse_example((tmp_path / "clips" / "a.pb").read_bytes(), records.features())
  assert example["split"] == "test" and example["label"] == emotions.index("sad")


def _webm_without_duration(path: pathlib.Path) -> None:
  """A WebM muxed to a pipe, as browsers' MediaRecorder writes them: no duration in the header."""
  import av  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel

  class Pipe(io.RawIOBase):
    def __init__(self):
      super().__init__()
      self.data = bytearray()

    def writable(self):
      return True

    def write(self, b):
      self.data += bytes(b)
      return len(b)

  pipe = Pipe()
  with av.open(pipe, mode="w", format="webm") as container:
    video = container.add_stream("libvpx", rate=10)
    video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
    audio = container.add_stream("libopus", rate=48000, layout="mono")
    for i in range(20):
      frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i * 10, np.uint8), format="rgb24")
      frame.pts = i
      container.mux(video.encode(frame))
    container.mux(video.encode(None))
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(96000) / 48000)).astype(np.float32)
    for start in range(0, 96000, 960):
      chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 960], format="flt",
                                         layout="mono")
      chunk.sample_rate, chunk.pts = 48000, start
      container.mux(audio.encode(chunk))
    container.mux(audio.encode(None))
  path.write_bytes(bytes(pipe.data))


def test_duration_comes_from_decoding_when_the_header_has_none(tmp_path):
  path = tmp_path / "live.webm"
  _webm_without_duration(path)
  assert media.probe(path).duration_s == 0.0
  config = dataclasses.replace(build.PrepConfig(), require_face=False)
  result = build.process_clip(corpora.base.ClipSpec("live", "t", str(path)), config)
  assert result.manifest["status"] == "ok", result.manifest["reason"]
  assert result.manifest["duration_s"] == pytest.approx(2.0, abs=0.05)
  assert abs(len(result.example["logmel"]) * 0.01 - 2.0) <= 0.05


def test_slow_frame_rate_sources_are_not_mistaken_for_truncated_files(tmp_path):
  path = tmp_path / "slow.mp4"
  frames = [np.full((120, 160, 3), 100 + 20 * i, np.uint8) for i in range(3)]
  media.write_video(path, frames, fps=1.0, audio=np.zeros(48000, np.float32))
  config = dataclasses.replace(build.PrepConfig(), require_face=False)
  result = build.process_clip(corpora.base.ClipSpec("slow", "t", str(path)), config)
  assert result.manifest["status"] == "ok", result.manifest["reason"]
  assert result.manifest["n_frames"] == 3


def test_a_directory_built_before_newer_options_still_resumes(tmp_path):
  """prep_config.json without options added later (here the store and its teacher) means their
  defaults; any other difference still refuses the rerun."""
  saved = build.PrepConfig().to_json()
  for key in ("store", "teacher", "teacher_step"):
    saved.pop(key)
  (tmp_path / "prep_config.json").write_text(json.dumps(saved))
  build._check_config(tmp_path, build.PrepConfig())  # pylint: disable=protected-access
  with pytest.raises(build.BuildError, match=r"different options \(fps\)"):
    build._check_config(tmp_path, build.PrepConfig(fps=5.0))  # pylint: disable=protected-access

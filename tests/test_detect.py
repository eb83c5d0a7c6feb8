"""kd_mh/detect.py, kd_mh/report.py and `kd-mh detect`: one video -> report.json + report.html."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import face_pixel_files
from conftest import face_rows
from conftest import shared_path
from data_prep import build
from data_prep import media
from data_prep import synthetic
from data_prep.corpora.base import ClipSpec
from data_prep.features import LogMelConfig
from kd_mh import detect
from kd_mh import divergence
from kd_mh import emotions
from kd_mh import report as report_lib
from kd_mh import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT_KEYS = {"video", "duration_s", "verdict", "reason", "flagged_fraction", "threshold",
               "divergence", "windows", "disclaimer", "segments"}
WINDOW_KEYS = {"start_s", "end_s", "face_probs", "voice_probs", "divergence", "flagged", "usable"}


def write_threshold(eval_dir: pathlib.Path, student_workdir: pathlib.Path, step: int,
                    **overrides) -> dict:
  """An evaluation workdir's threshold.json, every key of the documented schema."""
  record = {
      "divergence": "js", "threshold": 0.21, "rule": "youden", "youden_threshold": 0.21,
      "fpr_target": 0.05, "threshold_at_fpr": 0.4, "tpr_at_fpr": 0.3,
      "teacher_temperature": 1.4, "student_temperature": 1.1,
      "student_workdir": str(student_workdir), "student_step": step,
      "data": {"data_dir": "unused", "name": "kd_mh_demo", "calibration_split": "validation",
               "split": "test", "pairs": {"congruent": 3, "swapped": 3, "flat": 3, "natural": 1}},
      "window_s": 2.0, "hop_s": 0.5}
  record.update(overrides)
  eval_dir.mkdir(parents=True, exist_ok=True)
  (eval_dir / "threshold.json").write_text(json.dumps(record))
  return record


@pytest.fixture(scope="module")
def student(tiny_runs):
  return tiny_runs["student"], train.load_trained(str(tiny_runs["student"])).step


@pytest.fixture(scope="module")
def threshold(student, tmp_path_factory):
  return write_threshold(tmp_path_factory.mktemp("eval"), *student)


@pytest.fixture(scope="module")
def models(threshold):
  return detect.load_models(threshold)


@pytest.fixture(scope="module")
def talking_clip(tmp_path_factory):
  """A generated 3.4 s talking face (85 frames at 25 fps): windows start at 0, 0.5, 1.0, 1.5 s."""
  path = tmp_path_factory.mktemp("clips") / "talking.mp4"
  truth = synthetic.make_clip(path, "happy", "sad", synthetic.SPEAKERS[0], duration_s=3.4, seed=3)
  assert truth["num_frames"] == 85
  return path


@pytest.fixture(scope="module")
def demo_clip(demo_corpus):
  with open(demo_corpus["root"] / "ground_truth.jsonl", encoding="utf-8") as f:
    first = json.loads(f.readline())
  return demo_corpus["root"] / first["path"]


def check_report(report: dict, threshold: dict) -> None:
  """The invariants every report with windows keeps."""
  assert REPORT_KEYS <= set(report)
  assert report["verdict"] in detect.VERDICTS and report["reason"]
  assert report["disclaimer"] == detect.DISCLAIMER and "not a diagnostic" in report["disclaimer"]
  window_s, hop_s = threshold["window_s"], threshold["hop_s"]
  starts = np.array([w["start_s"] for w in report["windows"]])
  ends = np.array([w["end_s"] for w in report["windows"]])
  np.testing.assert_allclose(starts, hop_s * np.arange(len(starts)))
  np.testing.assert_allclose(ends - starts, window_s)
  # The grid covers the clip: the last window is the first to reach its end.
  assert ends[-1] >= report["duration_s"] - 1e-6
  assert len(starts) == 1 or ends[-2] < report["duration_s"]
  for w in report["windows"]:
    assert WINDOW_KEYS <= set(w)
    for key in ("face_probs", "voice_probs"):
      if w[key] is not None:
        assert len(w[key]) == emotions.NUM_CLASSES and min(w[key]) >= 0
        assert math.isclose(sum(w[key]), 1.0, abs_tol=1e-9)
    if w["face_probs"] is not None and w["voice_probs"] is not None:
      expected = divergence.divergence(report["divergence"], w["face_probs"], w["voice_probs"])
      assert math.isclose(w["divergence"], float(expected), rel_tol=1e-9, abs_tol=1e-12)
    assert w["flagged"] == (w["usable"] and w["divergence"] >= report["threshold"])
  usable = [w for w in report["windows"] if w["usable"]]
  if usable:
    assert report["flagged_fraction"] == pytest.approx(
        sum(w["flagged"] for w in usable) / len(usable))


# ---------------------------------------------------------------------------------------------
# Pure pieces.


def test_speech_frames_floor_and_range():
  energy = np.array([-50.0, -30.0, -10.0, -5.0, 0.0, 0.0, 0.0, 99.0])
  mask = np.array([True] * 7 + [False])  # the masked frame never counts, loud as it is
  # Loud level: the 95th percentile of the valid frames, 0 dB; range 12 dB -> -12 dB; floor -40.
  np.testing.assert_array_equal(detect.speech_frames(energy, mask, -40.0, 12.0),
                                [False, False, True, True, True, True, True, False])
  # A floor above the range's cut decides.
  np.testing.assert_array_equal(detect.speech_frames(energy, mask, -6.0, 12.0),
                                [False, False, False, True, True, True, True, False])
  # Digital silence: every frame at the floor of the log-mel, far below any speech floor.
  silent = np.full(5, 10 * np.log10(64 * 1e-6))
  assert not detect.speech_frames(silent, np.ones(5, bool), -20.0, 25.0).any()
  assert not detect.speech_frames(energy, np.zeros(8, bool), -40.0, 12.0).any()


def test_noise_energy_follows_level_and_frame_energy_sums_mel_power():
  config = LogMelConfig()
  quiet, loud = detect.noise_energy_db(-45.0, config), detect.noise_energy_db(-35.0, config)
  assert loud - quiet == pytest.approx(10.0, abs=0.2)
  logmel = np.log(np.array([[1.0, 2.0, 7.0], [0.1, 0.1, 0.8]]))
  np.testing.assert_allclose(detect.frame_energy_db(logmel), [10.0, 0.0], atol=1e-9)


def test_flagged_segments_merge_consecutive_windows():
  windows = divergence.sliding_windows(np.zeros(1), 2.0, 0.5, end=4.2)  # starts 0 .. 2.5
  assert len(windows) == 6
  flagged = np.array([True, True, False, False, True, True])
  values = np.array([0.3, 0.5, 0.1, 0.1, 0.4, 0.2])
  segments = detect.flagged_segments(windows, flagged, values, end_s=4.2)
  assert [(s["start_s"], s["end_s"], s["n_windows"]) for s in segments] == [
      (0.0, 2.5, 2), (2.0, 4.2, 2)]
  assert segments[0]["mean_divergence"] == pytest.approx(0.4)
  assert segments[0]["max_divergence"] == pytest.approx(0.5)
  # Consecutive windows that do not touch (hop > window) stay apart.
  apart = divergence.sliding_windows(np.zeros(1), 1.0, 2.0, end=4.0)
  assert len(detect.flagged_segments(apart, np.ones(2, bool), np.ones(2))) == 2
  assert detect.flagged_segments(windows, np.zeros(6, bool), values) == []


def test_decide_verdicts_and_reasons():
  config = detect.DetectConfig(min_usable_windows=2, min_usable_fraction=0.5, persistence=0.5)
  yes, no = np.ones(4, bool), np.zeros(4, bool)
  flags = np.array([True, True, False, False])
  assert detect.decide(yes, yes, flags, 3.5, config)[::2] == (detect.FLAGGED, 0.5)
  assert detect.decide(yes, yes, np.array([True, False, False, False]), 3.5,
                       config)[::2] == (detect.NOT_FLAGGED, 0.25)
  verdict, reason, fraction = detect.decide(yes, no, no, 3.5, config)
  assert (verdict, fraction) == (detect.INSUFFICIENT, None) and reason.startswith("no speech")
  verdict, reason, _ = detect.decide(no, yes, no, 3.5, config)
  assert verdict == detect.INSUFFICIENT and reason.startswith("no usable speaker face")
  # One usable window of four: fewer than both 2 windows and 50%.
  one = np.array([True, False, False, False])
  verdict, reason, fraction = detect.decide(one, yes, one, 3.5, config)
  assert verdict == detect.INSUFFICIENT and "1 of 4 windows" in reason and fraction == 1.0
  verdict, reason, _ = detect.decide(yes, yes, flags, 0.6, config)
  assert verdict == detect.INSUFFICIENT and reason.startswith("too short")


def test_config_validation_names_the_field():
  with pytest.raises(detect.DetectError, match="persistence"):
    detect.DetectConfig(persistence=1.5).validate()
  with pytest.raises(detect.DetectError, match="min_usable_windows"):
    detect.DetectConfig(min_usable_windows=0).validate()


# ---------------------------------------------------------------------------------------------
# The models on windows.


def test_window_logits_equal_the_models_on_each_window_alone(models):
  rng = np.random.default_rng(0)
  crops = rng.integers(0, 256, (12,) + models.face_shape, dtype=np.uint8)
  # Overlapping windows of 4 frames (one compiled shape for the models alone), padded to 21.
  members = [np.array([0, 1, 2, 3]), np.array([2, 3, 4, 5]), np.array([8, 9, 10, 11])]
  pooled = detect.teacher_window_logits(models, crops, members, length=21, batch_size=2)
  teacher = jax.jit(lambda v, x, m: models.teacher.apply(v, x, m, train=False)["logits"])
  for w, m in enumerate(members):
    alone = teacher(models.teacher_variables, crops[m][None], np.ones((1, len(m)), bool))
    np.testing.assert_allclose(pooled[w], np.asarray(alone[0]), rtol=1e-5, atol=1e-5)

  logmel = rng.normal(size=(300, models.n_mels)).astype(np.float32)
  spans = np.array([[0, 150], [50, 200], [150, 300]])
  voice = detect.student_window_logits(models, logmel, spans, length=201, batch_size=2)
  student = jax.jit(lambda v, x, m: models.student.apply(v, x, m, train=False)["logits"])
  for w, (lo, hi) in enumerate(spans):
    alone = student(models.student_variables, logmel[None, lo:hi], np.ones((1, hi - lo), bool))
    np.testing.assert_allclose(voice[w], np.asarray(alone[0]), rtol=1e-4, atol=1e-5)


def test_calibrated_probs_use_the_temperatures_and_fold_own_classes():
  logits = np.array([[2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]])
  record = {"teacher_temperature": 2.0, "student_temperature": 0.5}
  face, voice = detect.calibrated_probs(logits, logits, record, None)
  np.testing.assert_allclose(face, np.exp(logits / 2) / np.exp(logits / 2).sum())
  np.testing.assert_allclose(voice, np.exp(logits / 0.5) / np.exp(logits / 0.5).sum())
  # RAVDESS's eight: calm (index 1) and neutral (index 0) both count as neutral.
  classes = emotions.class_set("ravdess")
  own = np.zeros((1, len(classes)))
  _, folded = detect.calibrated_probs(logits, own, record, emotions.fold_onto_fer(classes))
  expected = np.full(emotions.NUM_CLASSES, 1 / 8)
  expected[emotions.INDEX["neutral"]] = 2 / 8
  np.testing.assert_allclose(folded[0], expected)


# ---------------------------------------------------------------------------------------------
# Videos.


def test_run_on_a_demo_clip_writes_both_reports(demo_clip, student, models, tmp_path):
  eval_dir = tmp_path / "eval"
  record = write_threshold(eval_dir, *student)
  lines = []
  report = detect.run(demo_clip, eval_dir, tmp_path / "out", models=models, progress=lines.append)
  check_report(report, record)
  assert len(lines) >= 3  # progress: isolation, windows, verdict, files
  written = json.loads((tmp_path / "out" / "report.json").read_text())
  assert written == json.loads(json.dumps(report))
  assert written["eval_workdir"] == str(eval_dir)
  assert report["evidence"]["speaker_frames"] > 0 and report["evidence"]["n_usable"] >= 1
  page = (tmp_path / "out" / "report.html").read_text()
  assert report["verdict"] in page and "Research tool, not a diagnosis" in page
  assert page.count("data:image/png;base64,") == len(report_lib.PLOTS)
  for key in report_lib.PLOTS:
    assert (tmp_path / "out" / f"{key}.png").read_bytes().startswith(b"\x89PNG")
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
      [report_lib.REPORT_JSON, report_lib.REPORT_HTML] + [f"{k}.png" for k in report_lib.PLOTS])

  # No face image leaves the detector: the speaker's crops of this clip are in no output file,
  # in no PNG's pixels and in no image inlined in the page (the plots are the only images).
  clip = build.process_clip(ClipSpec(clip_id="detect", corpus="detect", path=str(demo_clip)),
                            detect.prep_config(models, detect.DetectConfig())).example
  rows = face_rows(clip["faces"], clip["face_mask"])
  assert face_pixel_files(tmp_path / "out", rows) == []
  import PIL.Image  # pylint: disable=import-outside-toplevel
  (tmp_path / "probe").mkdir()  # the search does see a face saved as a picture
  face = clip["faces"][clip["face_mask"]][0][..., 0]
  PIL.Image.fromarray(face).save(tmp_path / "probe" / "f.png")
  assert face_pixel_files(tmp_path / "probe", rows) == ["f.png"]


def test_windows_on_the_grid_and_threshold_zero_flags_everything(talking_clip, threshold, models):
  report = detect.detect_video(talking_clip, threshold, models=models)
  check_report(report, threshold)
  assert report["duration_s"] == pytest.approx(3.4)
  assert [w["start_s"] for w in report["windows"]] == [0.0, 0.5, 1.0, 1.5]
  assert all(w["usable"] for w in report["windows"]), report["reason"]

  everything = detect.detect_video(talking_clip, {**threshold, "threshold": 0.0}, models=models)
  check_report(everything, threshold)
  assert everything["verdict"] == detect.FLAGGED and everything["flagged_fraction"] == 1.0
  assert [(s["start_s"], s["end_s"], s["n_windows"]) for s in everything["segments"]] == [
      (0.0, pytest.approx(3.4), 4)]
  # The windows' models do not depend on the threshold.
  assert [w["divergence"] for w in everything["windows"]] == [
      w["divergence"] for w in report["windows"]]


def test_silent_video_is_insufficient_evidence_no_speech(talking_clip, threshold, models, tmp_path):
  silent = tmp_path / "silent.mp4"
  frames = [f.rgb for f in media.iter_frames(talking_clip, fps=25.0)]
  media.write_video(silent, frames, fps=25.0, audio=np.zeros(int(3.4 * 16000), np.float32))
  report = detect.detect_video(silent, threshold, models=models)
  check_report(report, threshold)
  assert report["verdict"] == detect.INSUFFICIENT
  assert report["reason"].startswith("no speech"), report["reason"]
  assert all(w["voice_probs"] is None and not w["flagged"] for w in report["windows"])
  assert all(w["face_probs"] is not None for w in report["windows"])  # the face is there
  paths = report_lib.write(report, tmp_path / "out")
  assert "no speech" in paths["html"].read_text()


def test_video_without_a_face_or_audio_is_insufficient_evidence(talking_clip, threshold, models, tmp_path):
  faceless = tmp_path / "faceless.mp4"
  gradient = np.broadcast_to(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None],
                             (240, 320, 3)).copy()
  media.write_video(faceless, [gradient] * 50, fps=25.0,
                    audio=media.load_audio(talking_clip)[:32000])
  report = detect.detect_video(faceless, threshold, models=models)
  assert report["verdict"] == detect.INSUFFICIENT and "no face found" in report["reason"]
  assert report["windows"] == [] and report["flagged_fraction"] is None
  paths = report_lib.write(report, tmp_path / "out")
  assert "no face found" in paths["html"].read_text()
  assert not set(report_lib.PLOTS) & set(paths)

  mute = tmp_path / "mute.mp4"
  media.write_video(mute, [gradient] * 25, fps=25.0)
  report = detect.detect_video(mute, threshold, models=models)
  assert report["verdict"] == detect.INSUFFICIENT and report["reason"].startswith("no audio")


def test_non_media_file_is_an_error_naming_it(threshold, models, tmp_path):
  notes = tmp_path / "notes.mp4"
  notes.write_text("not a video\n")
  with pytest.raises(detect.DetectError, match="notes.mp4"):
    detect.detect_video(notes, threshold, models=models)
  with pytest.raises(detect.DetectError, match="missing.mp4: file not found"):
    detect.detect_video(tmp_path / "missing.mp4", threshold, models=models)


CLI = [sys.executable, "-m", "launch.cli", "detect"]


def test_cli_detect(demo_clip, student, tmp_path):
  """`kd-mh detect` in a fresh process writes the reports and prints the verdict."""
  eval_dir = tmp_path / "eval"
  write_threshold(eval_dir, *student)
  run = subprocess.run(CLI + [str(demo_clip), f"--workdir={eval_dir}", f"--out={tmp_path / 'o'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  report = json.loads((tmp_path / "o" / "report.json").read_text())
  assert f"kd-mh detect: {report['verdict']}" in run.stdout
  assert (tmp_path / "o" / "report.html").exists()


@pytest.mark.slow
def test_cli_detect_misuse_exits_2_naming_the_cause(student, tmp_path):
  eval_dir = tmp_path / "eval"
  write_threshold(eval_dir, *student)
  bad = tmp_path / "bad.flv"
  bad.write_bytes(b"\x00" * 100)
  for args, named in (([str(bad), f"--workdir={eval_dir}"], "bad.flv"),
                      ([str(bad), f"--workdir={tmp_path}"], "threshold.json")):
    run = subprocess.run(CLI + args + [f"--out={tmp_path / 'out'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and named in run.stderr, run.stderr[-2000:]
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Real CREMA-D clips (acceptance: detect runs end to end and writes both reports).


def _cremad_end_to_end(clip: pathlib.Path, threshold: dict, models, out: pathlib.Path) -> dict:
  report = detect.detect_video(clip, threshold, models=models)
  check_report(report, threshold)
  paths = report_lib.write(report, out)
  assert paths["json"].exists() and paths["html"].exists()
  return report


def test_cremad_clip_end_to_end(threshold, models, tmp_path):
  clip = shared_path("cremad", "video", "1001_DFA_ANG_XX.flv")
  report = _cremad_end_to_end(clip, threshold, models, tmp_path)
  # A 2.2 s close-up of one talking actor: two windows, both with the face and speech.
  assert report["evidence"]["n_usable"] == len(report["windows"]) == 2


@pytest.mark.slow
def test_all_six_cremad_clips_end_to_end(threshold, models, tmp_path):
  clips = sorted(shared_path("cremad", "video").glob("*.flv"))
  assert len(clips) == 6
  for clip in clips:
    report = _cremad_end_to_end(clip, threshold, models, tmp_path / clip.stem)
    assert report["verdict"] != detect.INSUFFICIENT, (clip.name, report["reason"])

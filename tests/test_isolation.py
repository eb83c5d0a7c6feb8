"""Speaker isolation against generated clips whose speaker and bystander boxes are known."""

import json

import numpy as np
import pytest

from data_prep import build
from data_prep import corpora
from data_prep import faces
from data_prep import media
from data_prep import speaker
from data_prep import synthetic

def scores(truth: dict, frames) -> tuple[float, float]:
  """isolation_scores against a generated clip's ground truth."""
  return speaker.isolation_scores(frames, truth["speaker_boxes"], truth["fps"],
                                  truth["bystander_boxes"])


def test_isolation_scores_known_values():
  # Three video frames at 10 fps; the bystander is on screen in the last two only.
  speaker_boxes = [(0, 50, 50, 0), (0, 50, 50, 0), None]
  bystander_boxes = [None, (0, 150, 50, 100), (0, 150, 50, 100)]
  chosen = [(0.0, (0, 50, 50, 0)),  # on the speaker
            (0.1, (0, 150, 50, 100)),  # on the bystander
            (0.19, (0, 150, 50, 100)),  # rounds to frame 2: on the bystander again
            (0.5, None)]  # past the end: the last frame, nothing chosen
  assert speaker.isolation_scores(chosen, speaker_boxes, 10.0, bystander_boxes) == (0.5, 2 / 3)
  # A box shifted by 20 px has IoU 30 / 70 with the true one: a hit at 0.4, a miss at 0.5.
  shifted = [(0.0, (0, 70, 50, 20))]
  assert speaker.isolation_scores(shifted, speaker_boxes, 10.0)[0] == 1.0
  assert speaker.isolation_scores(shifted, speaker_boxes, 10.0, iou_threshold=0.5)[0] == 0.0
  # No bystander anywhere: nothing to take.
  assert speaker.isolation_scores(chosen[:1], speaker_boxes, 10.0) == (1.0, 0.0)
  with pytest.raises(ValueError, match="one entry per video frame"):
    speaker.isolation_scores(chosen, speaker_boxes, 10.0, bystander_boxes[:2])
  with pytest.raises(ValueError, match="fps must be positive"):
    speaker.isolation_scores(chosen, speaker_boxes, 0.0)


def test_chosen_boxes_follow_the_chosen_track_per_frame():
  tracks = [faces.Track(0, [0, 1], [(0, 50, 50, 0), (1, 51, 51, 1)]),
            faces.Track(1, [1, 2], [(0, 150, 50, 100), (2, 152, 52, 102)])]
  tracking = faces.TrackingResult(tracks, [0.0, 0.1, 0.2, 0.3], 4, (100, 200), 0, 0, 0, 0, {})
  choice = speaker.SpeakerChoice("av", [0, 1], np.array([0, 0, 1, -1]), {})
  assert speaker.chosen_boxes(tracking, choice) == [
      (0.0, (0, 50, 50, 0)), (0.1, (1, 51, 51, 1)), (0.2, (2, 152, 52, 102)), (0.3, None)]


@pytest.fixture(scope="module")
def bystander_clips(tmp_path_factory):
  folder = tmp_path_factory.mktemp("bystanders")
  clips = []
  for face, voice, speaker_id, bystander, seed in synthetic.ISOLATION_SCENES:
    path = folder / f"{speaker_id}_{seed}.mp4"
    truth = synthetic.make_clip(path, face, voice, speaker=speaker_id, bystander=bystander,
                                duration_s=3.0, seed=seed)
    tracking = faces.track_faces(media.iter_frames(path, 10.0), faces.FaceConfig())
    clips.append((truth, tracking, media.load_audio(path)))
  return clips


@pytest.mark.parametrize("method", ["av", "cluster"])
def test_speaker_chosen_over_bystander(bystander_clips, method):
  for truth, tracking, audio in bystander_clips:
    choice = speaker.choose_speaker(tracking, audio, 16000, method)
    covered, taken = scores(truth, speaker.chosen_boxes(tracking, choice))
    assert covered >= 0.95, (method, truth["clip_id"], covered)
    assert taken <= 0.02, (method, truth["clip_id"], taken)


def test_av_is_not_worse_than_cluster(bystander_clips):
  totals = {}
  for method in speaker.METHODS:
    pairs = [scores(t, speaker.chosen_boxes(tr, speaker.choose_speaker(tr, a, 16000, method)))
             for t, tr, a in bystander_clips]
    totals[method] = np.mean([covered - taken for covered, taken in pairs])
  assert totals["av"] >= totals["cluster"] - 1e-9, totals


def test_demo_corpus_speaker_found_in_90_percent_of_sampled_frames(tmp_path):
  root = tmp_path / "demo"
  truths = {t["clip_id"]: t for t in synthetic.make_demo_corpus(root, n_clips=8, seed=5,
                                                                progress=False)}
  specs = corpora.read_corpus("demo", str(root))
  summary = build.build(specs, tmp_path / "out", workers=1, corpus="demo", progress=False)
  assert summary["ok"] == len(specs) == 8
  covered = []
  for spec in specs:
    # What OUT/tracks/<clip_id>.json says is enough to score the isolation.
    tracks = json.loads((tmp_path / "out" / "tracks" / f"{spec.clip_id}.json").read_text())
    frames = [(f["timestamp_s"], f["boxes"].get(str(f["speaker_track"]))) for f in tracks["frames"]]
    covered.append(scores(truths[spec.clip_id], frames)[0])
  assert np.mean(covered) >= 0.9 and min(covered) >= 0.8, covered

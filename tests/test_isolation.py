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

# (face emotion, voice emotion, speaker, bystander, seed): bystanders of several identities and
# emotions, congruent and incongruent voices.
CLIPS = [
    ("happy", "happy", "grace_hopper", "lfw_002", 11),
    ("sad", "angry", "astronaut", "lfw_011", 12),
    ("surprise", "fear", "lfw_003", "lfw_029", 13),
    ("neutral", "sad", "lfw_027", "lfw_045", 14),
]


def isolation_scores(truth: dict, frames: list[tuple[float, object]]) -> tuple[float, float]:
  """(share of the true speaker's frames given to the speaker, share of bystander frames taken).

  `frames` holds, per sampled frame, its timestamp and the chosen speaker box (or None).
  """
  speaker_hits = speaker_frames = bystander_hits = bystander_frames = 0
  no_bystander = [None] * truth["num_frames"]
  for t, chosen in frames:
    video_frame = min(int(round(t * truth["fps"])), truth["num_frames"] - 1)
    true_speaker = truth["speaker_boxes"][video_frame]
    true_bystander = (truth.get("bystander_boxes") or no_bystander)[video_frame]
    if true_speaker is not None:
      speaker_frames += 1
      speaker_hits += chosen is not None and faces.iou(chosen, true_speaker) > 0.4
    if true_bystander is not None:
      bystander_frames += 1
      bystander_hits += chosen is not None and faces.iou(chosen, true_bystander) > 0.4
  return speaker_hits / max(speaker_frames, 1), bystander_hits / max(bystander_frames, 1)


def chosen_boxes(tracking: faces.TrackingResult, choice: speaker.SpeakerChoice):
  boxes = {t.track_id: dict(zip(t.frame_indices, t.boxes)) for t in tracking.tracks}
  return [(t, boxes[k][i] if k >= 0 else None)
          for i, (t, k) in enumerate(zip(tracking.timestamps, choice.per_frame))]


@pytest.fixture(scope="module")
def bystander_clips(tmp_path_factory):
  folder = tmp_path_factory.mktemp("bystanders")
  clips = []
  for face, voice, speaker_id, bystander, seed in CLIPS:
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
    covered, taken = isolation_scores(truth, chosen_boxes(tracking, choice))
    assert covered >= 0.95, (method, truth["clip_id"], covered)
    assert taken <= 0.02, (method, truth["clip_id"], taken)


def test_av_is_not_worse_than_cluster(bystander_clips):
  totals = {}
  for method in speaker.METHODS:
    scores = [isolation_scores(t, chosen_boxes(tr, speaker.choose_speaker(tr, a, 16000, method)))
              for t, tr, a in bystander_clips]
    totals[method] = np.mean([covered - taken for covered, taken in scores])
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
    covered.append(isolation_scores(truths[spec.clip_id], frames)[0])
  assert np.mean(covered) >= 0.9 and min(covered) >= 0.8, covered

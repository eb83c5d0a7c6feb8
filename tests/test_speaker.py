"""Speaker choice by the av cue and by clustering: built tracks, CREMA-D clips, composites."""

import json

import face_recognition
import numpy as np
import pytest

from data_prep import faces
from data_prep import media
from data_prep import speaker
from data_prep import synthetic
from test_faces import CLIPS, cremad_clip

SR = 16000
FPS = 10.0


def make_track(track_id, frames, box, mouth=None, encodings=()):
  frames = list(frames)
  mouth = np.full(len(frames), 0.02) if mouth is None else np.asarray(mouth)
  return faces.Track(track_id=track_id, frame_indices=frames, boxes=[box] * len(frames),
                     mouth_open=[float(m) for m in mouth],
                     crops=[np.zeros((64, 64, 1), np.uint8)] * len(frames),
                     encodings=[(frames[0], np.asarray(e, np.float32)) for e in encodings])


def make_tracking(tracks, n_frames):
  return faces.TrackingResult(
      tracks=tracks, timestamps=[i / FPS for i in range(n_frames)], n_frames=n_frames,
      frame_size=(360, 480), detector_calls=0, window_calls=0, landmark_calls=0, encoder_calls=0,
      seconds={})


def syllable_audio(n_frames, seed=0):
  """Noise whose loudness follows random on/off syllables, one value per sampled frame."""
  rng = np.random.default_rng(seed)
  loud = (rng.random(n_frames) < 0.5).astype(float)
  gain = np.repeat(0.01 + 0.3 * loud, int(SR / FPS))
  audio = (rng.normal(0, 1, gain.size) * gain).astype(np.float32)
  # Frame k is at k / FPS: centre each frame's loudness on its timestamp.
  return np.roll(audio, -int(SR / FPS / 2)), loud


def identity_vector(seed):
  v = np.random.default_rng(seed).normal(size=128)
  return v / np.linalg.norm(v)


# ----------------------------------------------------------------------------------------------
# Built tracks with known answers.


def test_av_prefers_the_mouth_that_follows_the_voice_over_a_bigger_face():
  n = 40
  audio, loud = syllable_audio(n)
  talker = make_track(0, range(n), (100, 200, 160, 140), mouth=0.05 + 0.3 * loud,
                      encodings=[identity_vector(1)])
  listener = make_track(1, range(n), (50, 460, 250, 260), encodings=[identity_vector(2)])
  tracking = make_tracking([talker, listener], n)
  choice = speaker.choose_speaker(tracking, audio, SR, "av")
  assert choice.speaker_track_ids == [0]
  assert (choice.per_frame == 0).all()
  rows = {tuple(r["tracks"]): r for r in choice.scores["identities"]}
  assert rows[(0,)]["correlation"] > 0.9 and rows[(1,)]["size"] == 1.0
  assert choice.scores["fallback"] is None
  # Without a usable voice only size and presence are left: the bigger face wins, and says why.
  for audio_in, why in ((None, "no audio"), (np.zeros(n * SR // 10, np.float32), "silent audio")):
    fallback = speaker.choose_speaker(tracking, audio_in, SR, "av")
    assert fallback.speaker_track_ids == [1] and fallback.scores["fallback"] == why


def test_identities_merge_one_person_but_never_two_faces_in_one_frame():
  alice, bob = identity_vector(1), identity_vector(2)
  tracks = [make_track(0, range(0, 10), (0, 50, 50, 0), encodings=[alice]),
            # Alice again after a gap.
            make_track(1, range(12, 20), (0, 50, 50, 0),
                       encodings=[alice + 0.02 * identity_vector(3)]),
            make_track(2, range(0, 20), (0, 150, 50, 100), encodings=[bob]),
            # Looks like alice but is on screen with her: someone else (a look-alike, a twin).
            make_track(3, range(5, 8), (0, 250, 50, 200),
                       encodings=[alice + 0.02 * identity_vector(4)])]
  groups = speaker.identities(tracks)
  assert sorted(sorted(t.track_id for t in g) for g in groups) == [[0, 1], [2], [3]]


def test_cluster_picks_the_face_seen_in_most_frames_and_chooses_k():
  rng = np.random.default_rng(0)
  people = [identity_vector(s) for s in (1, 2, 3)]
  frames = (30, 10, 20)
  tracks = []
  for i, (person, n) in enumerate(zip(people, frames)):
    encodings = [person + 0.01 * rng.normal(size=128) for _ in range(4)]
    tracks.append(make_track(i, range(n), (0, 50 * i + 50, 50, 50 * i), encodings=encodings))
  choice = speaker.choose_speaker(make_tracking(tracks, 30), None, SR, "cluster")
  assert choice.scores["k"] == 3
  assert choice.speaker_track_ids == [0]
  assert sorted(choice.scores["cluster_frames"]) == [10, 20, 30]
  # One person in every encoding: k = 1, and both tracks are the speaker.
  same = [make_track(0, range(10), (0, 50, 50, 0), encodings=[people[0]] * 2),
          make_track(1, range(12, 30), (0, 50, 50, 0), encodings=[people[0] + 0.01] * 2)]
  choice = speaker.choose_speaker(make_tracking(same, 30), None, SR, "cluster")
  assert choice.scores["k"] == 1 and choice.speaker_track_ids == [0, 1]
  assert speaker.speaker_coverage(choice) == pytest.approx(28 / 30)
  # One person seen in varied poses: some pairs exceed the same-person distance, but a 2-means
  # split leaves the two centres close, so it is still one person.
  spread = [people[0] + 0.05 * rng.normal(size=128) for _ in range(12)]
  assert max(np.linalg.norm(a - b) for a in spread for b in spread) > 0.6
  varied = [make_track(0, range(30), (0, 50, 50, 0), encodings=spread)]
  assert speaker.choose_speaker(make_tracking(varied, 30), None, SR, "cluster").scores["k"] == 1


def test_speaker_choice_edge_cases():
  empty = make_tracking([], 5)
  for method in speaker.METHODS:
    choice = speaker.choose_speaker(empty, None, SR, method)
    assert choice.speaker_track_ids == [] and (choice.per_frame == -1).all()
    assert speaker.speaker_coverage(choice) == 0.0
  # A single track needs no encodings.
  single = make_tracking([make_track(4, range(2, 5), (0, 50, 50, 0))], 5)
  for method in speaker.METHODS:
    choice = speaker.choose_speaker(single, None, SR, method)
    assert choice.speaker_track_ids == [4]
    assert choice.per_frame.tolist() == [-1, -1, 4, 4, 4]
  # Tracks without encodings (on screen together) are people of their own: most frames win.
  pair = make_tracking([make_track(0, range(0, 5), (0, 90, 90, 0)),
                        make_track(1, range(0, 4), (0, 150, 30, 120))], 5)
  choice = speaker.choose_speaker(pair, None, SR, "cluster")
  assert choice.scores["k"] == 2 and choice.speaker_track_ids == [0]
  with pytest.raises(ValueError, match="speaker method"):
    speaker.choose_speaker(single, None, SR, "loudest")


# ----------------------------------------------------------------------------------------------
# Real CREMA-D clips and composites made from them.


@pytest.mark.parametrize("name", CLIPS)
def test_cremad_speaker_coverage(name):
  path = cremad_clip(name)
  tracking = faces.track_faces(media.iter_frames(path))
  audio = media.load_audio(path, SR)
  for method in speaker.METHODS:
    choice = speaker.choose_speaker(tracking, audio, SR, method)
    assert speaker.speaker_coverage(choice) >= 0.9, (name, method)
    assert choice.per_frame.shape == (tracking.n_frames,)


def compose(tmp_path, name, bystander_scale, config=faces.FaceConfig()):
  """The clip with Grace Hopper pasted to the right, drifting down 1 px per sampled frame.

  Returns the composite's tracking, its audio, and per sampled frame the true speaker box and
  the pasted region ([top, right, bottom, left]).
  """
  path = cremad_clip(name)
  frames = list(media.iter_frames(path))
  speaker_box = face_recognition.face_locations(frames[0].rgb)[0]
  face_px = int(round((speaker_box[2] - speaker_box[0]) * bystander_scale))
  patch, _ = synthetic.face_patch("grace_hopper", face_px)
  height, width = frames[0].rgb.shape[:2]
  left = width - patch.shape[1] - 5
  assert left > speaker_box[1], "the bystander must not cover the speaker"
  regions = [(20 + k, left + patch.shape[1], 20 + k + patch.shape[0], left)
             for k in range(len(frames))]
  out = tmp_path / f"{name}_{bystander_scale}.mp4"
  scene = (synthetic.paste(f.rgb, patch, r[0], r[3]) for f, r in zip(frames, regions))
  media.write_video(out, scene, fps=FPS, audio=media.load_audio(path, SR), sample_rate=SR)
  tracking = faces.track_faces(media.iter_frames(out), config)
  # Ground truth: detect once, the face that does not overlap the pasted region is the actor's.
  first = next(media.iter_frames(out)).rgb
  truth = [b for b in face_recognition.face_locations(first) if faces.iou(b, regions[0]) == 0]
  assert len(truth) == 1
  return tracking, media.load_audio(out, SR), truth[0], regions


def who_is_chosen(choice, tracking, truth, regions):
  """(share of frames showing the true speaker, share showing the bystander)."""
  boxes = {t.track_id: dict(zip(t.frame_indices, t.boxes)) for t in tracking.tracks}
  on_speaker = on_bystander = 0
  for frame, track_id in enumerate(choice.per_frame):
    if track_id < 0:
      continue
    box = boxes[track_id][frame]
    on_speaker += faces.iou(box, truth) > 0.3
    top, right, bottom, left = regions[frame]
    x, y = (box[1] + box[3]) / 2, (box[0] + box[2]) / 2
    on_bystander += left <= x <= right and top <= y <= bottom
  n = len(choice.per_frame)
  return on_speaker / n, on_bystander / n


@pytest.mark.parametrize("name", CLIPS)
def test_composite_with_a_smaller_bystander(tmp_path, name):
  tracking, audio, truth, regions = compose(tmp_path, name, 0.8)
  assert len([t for t in tracking.tracks if len(t) >= 0.9 * tracking.n_frames]) == 2
  if len(tracking.tracks) == 2:
    assert tracking.encoder_calls == 0  # two faces side by side: identity is never in doubt
  shares = {}
  for method in speaker.METHODS:
    choice = speaker.choose_speaker(tracking, audio, SR, method)
    json.dumps(choice.scores)  # recorded in the corpus manifest
    shares[method] = who_is_chosen(choice, tracking, truth, regions)
    assert shares[method][0] >= 0.95 and shares[method][1] <= 0.02, (method, choice.scores)
  assert shares["av"][0] >= shares["cluster"][0]


def test_original_method_on_a_composite(tmp_path):
  # The original study's pipeline: every frame detected and encoded, then k-means.
  tracking, audio, truth, regions = compose(tmp_path, "ANG", 0.8, faces.NAIVE)
  assert tracking.encoder_calls >= 2 * tracking.n_frames
  choice = speaker.choose_speaker(tracking, audio, SR, "cluster")
  assert choice.scores["k"] == 2
  on_speaker, on_bystander = who_is_chosen(choice, tracking, truth, regions)
  assert on_speaker >= 0.95 and on_bystander <= 0.02


@pytest.mark.parametrize("name", CLIPS)
def test_composite_with_a_larger_bystander(tmp_path, name):
  tracking, audio, truth, regions = compose(tmp_path, name, 1.25)
  av = speaker.choose_speaker(tracking, audio, SR, "av")
  on_speaker, on_bystander = who_is_chosen(av, tracking, truth, regions)
  assert on_speaker >= 0.95 and on_bystander <= 0.02, av.scores
  # Clustering sees two people in every frame: the clusters tie and the larger face wins, so the
  # original method picks the bystander here. The av cue exists for exactly this case.
  cluster = speaker.choose_speaker(tracking, audio, SR, "cluster")
  assert cluster.scores["k"] == 2
  assert who_is_chosen(cluster, tracking, truth, regions)[1] >= 0.95


def test_cluster_method_never_picks_a_cluster_that_owns_no_track():
  # Three people never on screen together; each track has one stray encoding that resembles a
  # fourth face. The strays form a cluster of their own that holds the most encodings but no
  # track: it must not be chosen.
  rng = np.random.default_rng(0)
  centres = {k: rng.normal(size=128) for k in "ABCX"}
  centres = {k: 0.8 * v / np.linalg.norm(v) for k, v in centres.items()}

  def encoding(k):
    return (centres[k] + rng.normal(scale=0.01, size=128)).astype(np.float32)

  tracks = []
  for track_id, person in enumerate("ABC"):
    frames = list(range(30 * track_id, 30 * track_id + 30))
    tracks.append(faces.Track(
        track_id, frames, [(0, 50, 50, 0)] * 30, [0.0] * 30,
        [np.zeros((64, 64, 1), np.uint8)] * 30,
        [(frames[0], encoding(person)), (frames[1], encoding(person)), (frames[2], encoding("X"))]))
  tracking = faces.TrackingResult(tracks, [i / 10 for i in range(90)], 90, (100, 100), 0, 0, 0, 0,
                                  {})
  choice = speaker.choose_speaker(tracking, None, method="cluster")
  assert len(choice.speaker_track_ids) == 1
  assert all(tracks for tracks in choice.scores["cluster_tracks"])
  assert speaker.speaker_coverage(choice) == pytest.approx(1 / 3)

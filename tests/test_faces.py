"""Face tracking: geometry, alignment, the tracker on real CREMA-D clips and composed scenes."""

import math

import cv2
import face_recognition
import numpy as np
import pytest
import skimage.data

from conftest import shared_path
from data_prep import faces
from data_prep import media
from data_prep import synthetic

CLIPS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


def cremad_clip(emotion: str) -> str:
  return str(shared_path("cremad", "video") / f"1001_DFA_{emotion}_XX.flv")


def eye_angle_deg(landmarks: np.ndarray) -> float:
  left, right = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
  return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def centre(box) -> np.ndarray:
  top, right, bottom, left = box
  return np.array([(left + right) / 2, (top + bottom) / 2])


# ----------------------------------------------------------------------------------------------
# Pure geometry.


def test_iou_known_values():
  box = (0, 10, 10, 0)
  assert faces.iou(box, box) == 1.0
  assert faces.iou(box, (20, 30, 30, 20)) == 0.0
  assert faces.iou(box, (0, 15, 10, 5)) == pytest.approx(50 / 150)  # half of each overlaps
  assert faces.iou(box, (2, 8, 8, 2)) == pytest.approx(36 / 100)  # nested


def test_face_config_validation_names_the_field():
  faces.FaceConfig().validate()
  faces.NAIVE.validate()
  for field, value in (("model", "mtcnn"), ("detect_every", 0), ("crop_channels", 2),
                       ("link_iou", 0.0), ("detect_max_side", 8), ("max_missed", -1)):
    with pytest.raises(ValueError, match=f"FaceConfig.{field}"):
      faces.track_faces([], faces.FaceConfig(**{field: value}))


def test_alignment_matrix_puts_eyes_level_at_the_reference_points():
  n_points = faces.N_LANDMARKS
  rng = np.random.default_rng(0)
  points = rng.uniform(100, 200, (n_points, 2))
  # A plausible face: eyes 60 px apart, nose base 45 px below, then rotated by 30 degrees.
  points[36:42] = [100, 100]
  points[42:48] = [160, 100]
  points[33] = [130, 145]
  angle = math.radians(30)
  rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
  points = (points - 130) @ rotation.T + 130
  size = 64
  matrix = faces.alignment_matrix(points, size)
  moved = points @ matrix[:, :2].T + matrix[:, 2]
  left, right, nose = moved[36], moved[42], moved[33]
  assert left[1] == pytest.approx(right[1], abs=1e-9)
  assert (left + right) / 2 == pytest.approx([size / 2, faces.CROP_EYE_Y * size])
  span = (right[0] - left[0]) + (nose[1] - left[1])
  assert span == pytest.approx((faces.CROP_EYE_DISTANCE + faces.CROP_NOSE_DROP) * size)
  # The mouth does not take part: opening it leaves the transform unchanged.
  points[60:68] += [0, 20]
  assert faces.alignment_matrix(points, size) == pytest.approx(matrix)


def test_mouth_opening_is_the_inner_lip_gap_over_eye_to_nose_height():
  points = np.zeros((68, 2), np.float32)
  points[36:42] = [0, 0]
  points[42:48] = [40, 0]
  points[33] = [20, 30]  # nose base 30 px below the eyes' midpoint
  points[60:68] = [20, 50]
  assert faces.mouth_opening(points) == 0.0
  points[[65, 66, 67], 1] = 56  # lower inner lip 6 px down
  assert faces.mouth_opening(points) == pytest.approx(6 / 30)


def crop_eye_angle(crop: np.ndarray) -> tuple[float, np.ndarray]:
  """Eye-line angle and eyes' midpoint found by detecting the face again in an aligned crop."""
  found = face_recognition.face_locations(crop, 1)
  assert len(found) == 1
  parts = face_recognition.face_landmarks(crop, found)[0]
  left, right = np.mean(parts["left_eye"], 0), np.mean(parts["right_eye"], 0)
  return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0])), (left + right) / 2


def test_align_crop_levels_the_eyes_of_a_rotated_face():
  image = skimage.data.astronaut()
  rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((256, 256), 20, 1.0), (512, 512),
                           borderMode=cv2.BORDER_REFLECT)
  result = faces.track_faces([media.Frame(0, 0.0, rotated)])
  track = max(result.tracks, key=lambda t: t.mean_area())
  assert abs(eye_angle_deg(track.landmarks[0])) > 15  # tilted in the source
  size = 160
  crop = faces.align_crop(rotated, track.landmarks[0], size, 3)
  assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
  angle, eyes = crop_eye_angle(crop)
  assert abs(angle) < 3
  assert np.abs(eyes - [size / 2, faces.CROP_EYE_Y * size]).max() < 0.05 * size
  gray = faces.align_crop(rotated, track.landmarks[0], 64, 1)
  assert gray.shape == (64, 64, 1) and gray.dtype == np.uint8


def test_track_faces_rejects_malformed_frames_and_accepts_none():
  empty = faces.track_faces([])
  assert empty.n_frames == 0 and empty.tracks == [] and empty.frame_size == (0, 0)
  with pytest.raises(ValueError, match="frame 0: expected HxWx3 uint8"):
    faces.track_faces([media.Frame(0, 0.0, np.zeros((10, 10), np.uint8))])
  frames = [media.Frame(0, 0.0, np.zeros((40, 60, 3), np.uint8)),
            media.Frame(1, 0.1, np.zeros((40, 62, 3), np.uint8))]
  with pytest.raises(ValueError, match="frame 1: size"):
    faces.track_faces(frames)


# ----------------------------------------------------------------------------------------------
# Real CREMA-D clips.


@pytest.fixture(scope="module")
def cremad_tracking():
  return {name: faces.track_faces(media.iter_frames(cremad_clip(name))) for name in CLIPS}


def test_cremad_clips_give_one_face_track_with_valid_boxes_and_crops(cremad_tracking):
  for name, result in cremad_tracking.items():
    height, width = result.frame_size
    assert (height, width) == (360, 480)
    assert len(result.timestamps) == result.n_frames >= 18
    best = max(result.tracks, key=len)
    assert len(best) >= 0.9 * result.n_frames, name
    for track in result.tracks:
      n = len(track)
      assert len(track.boxes) == len(track.crops) == len(track.mouth_open) == n
      assert track.frame_indices == sorted(set(track.frame_indices))
      for top, right, bottom, left in track.boxes:
        assert 0 <= top < bottom <= height and 0 <= left < right <= width
      for crop in track.crops:
        assert crop.shape == (64, 64, 1) and crop.dtype == np.uint8
        assert crop.std() > 10  # a face, not a flat fill
      assert all(0.0 <= m < 1.5 for m in track.mouth_open)
    # One face: identity never matters, so nothing was encoded.
    if len(result.tracks) == 1:
      assert result.encoder_calls == 0 and best.encodings == []
    # The actor speaks: the lips open well beyond their closed gap at some point.
    assert max(best.mouth_open) - min(best.mouth_open) > 0.2, name


def test_cremad_crops_have_level_eyes(cremad_tracking):
  size = 128
  for name in CLIPS:
    track = max(cremad_tracking[name].tracks, key=len)
    position = {f: i for i, f in enumerate(track.frame_indices)}
    frames = list(media.iter_frames(cremad_clip(name)))
    for k in (0, len(frames) // 2, len(frames) - 1):
      crop = faces.align_crop(frames[k].rgb, track.landmarks[position[k]], size, 3)
      angle, _ = crop_eye_angle(crop)
      assert abs(angle) < 3, (name, k, angle)


def test_far_fewer_detections_and_encodings_than_naive(cremad_tracking):
  ours = cremad_tracking["ANG"]
  naive = faces.track_faces(media.iter_frames(cremad_clip("ANG")), faces.NAIVE)
  n = ours.n_frames
  assert naive.detector_calls == n and naive.encoder_calls >= n
  assert ours.detector_calls <= math.ceil(n / faces.FaceConfig().detect_every)
  assert ours.encoder_calls == 0
  # Both follow the same face.
  mine, theirs = max(ours.tracks, key=len), max(naive.tracks, key=len)
  boxes = dict(zip(theirs.frame_indices, theirs.boxes))
  overlaps = [faces.iou(b, boxes[f]) for f, b in zip(mine.frame_indices, mine.boxes) if f in boxes]
  assert len(overlaps) >= 0.9 * n and np.median(overlaps) > 0.6
  # Measured ~20x on one core; a loose bound keeps this stable on a busy machine.
  assert sum(ours.seconds.values()) * 5 < sum(naive.seconds.values())


# ----------------------------------------------------------------------------------------------
# Composed scenes: known motion, a second face, a face that leaves and comes back.


def test_face_leaving_and_reentering_keeps_its_track():
  frames = list(media.iter_frames(cremad_clip("ANG")))
  top, right, bottom, left = face_recognition.face_locations(frames[0].rgb)[0]
  pad = (bottom - top) // 2
  hidden = range(6, 12)
  scene = []
  for frame in frames:
    rgb = frame.rgb.copy()
    if frame.index in hidden:  # the face leaves: its region is painted over
      rgb[max(0, top - pad):bottom + pad, max(0, left - pad):right + pad] = np.median(
          rgb.reshape(-1, 3), axis=0)
    scene.append(media.Frame(frame.index, frame.timestamp_s, rgb))
  config = faces.FaceConfig(detect_every=5, track_every=3, max_missed=1)
  result = faces.track_faces(scene, config)
  assert len(result.tracks) == 1
  track = result.tracks[0]
  # Frames 6-8 were carried by landmarks, never confirmed, and dropped when the track ended at 9;
  # the face is back at 12 and found by the next full detection (15), which resumes the track
  # because its encoding matches: the two encodings are the only ones computed.
  assert track.frame_indices == list(range(0, 6)) + list(range(15, len(frames)))
  assert result.encoder_calls == 2 and len(track.encodings) == 2


@pytest.mark.parametrize("detect_every", [1, 10])
def test_moving_faces_keep_their_own_tracks(detect_every):
  frames = list(media.iter_frames(cremad_clip("NEU")))
  speaker_box = face_recognition.face_locations(frames[0].rgb)[0]
  patch, face_in_patch = synthetic.face_patch("grace_hopper", 90)
  height, width = frames[0].rgb.shape[:2]
  pan, drop = -3, 2  # px per sampled frame: the actor pans left, the bystander moves down
  truth = []
  scene = []
  for frame in frames:
    k = frame.index
    moved = cv2.warpAffine(frame.rgb, np.float32([[1, 0, pan * k], [0, 1, 0]]), (width, height),
                           borderMode=cv2.BORDER_REPLICATE)
    top, left = 40 + drop * k, width - patch.shape[1] - 10
    scene.append(media.Frame(k, frame.timestamp_s, synthetic.paste(moved, patch, top, left)))
    truth.append((centre(speaker_box) + [pan * k, 0],
                  centre(face_in_patch) + [left, top]))
  result = faces.track_faces(scene, faces.FaceConfig(detect_every=detect_every))
  long_tracks = [t for t in result.tracks if len(t) >= 0.9 * len(frames)]
  assert len(long_tracks) == 2
  for track in long_tracks:
    errors = np.array([[np.linalg.norm(centre(b) - truth[f][who]) for who in (0, 1)]
                       for f, b in zip(track.frame_indices, track.boxes)])
    who = int(np.argmin(errors.mean(0)))
    # Every box of the track sits on the same face (no identity switch), within 12 px.
    assert errors[:, who].max() < 12
  assert {int(np.argmin(np.array([[np.linalg.norm(centre(b) - truth[f][w]) for w in (0, 1)]
                                  for f, b in zip(t.frame_indices, t.boxes)]).mean(0)))
          for t in long_tracks} == {0, 1}


def test_face_patch_and_paste():
  patch, box = synthetic.face_patch("grace_hopper", 90)
  top, right, bottom, left = box
  assert bottom - top == 90 and 0 <= top and 0 <= left and right <= patch.shape[1]
  # The face is found again where the box says.
  found = face_recognition.face_locations(patch)
  assert len(found) == 1 and faces.iou(found[0], box) > 0.5
  # A photograph works like a packaged identity: the astronaut's face, 60 px tall.
  patch, box = synthetic.face_patch(skimage.data.astronaut(), 60)
  assert box[2] - box[0] == 60 and patch.dtype == np.uint8
  with pytest.raises(ValueError, match="no face found"):
    synthetic.face_patch(np.zeros((100, 100, 3), np.uint8), 60)
  with pytest.raises(ValueError, match="unknown identity"):
    synthetic.face_patch("nobody", 60)
  frame = np.zeros((40, 60, 3), np.uint8)
  pasted = synthetic.paste(frame, np.full((10, 20, 3), 7, np.uint8), 30, 40)
  assert pasted[30:, 40:].min() == 7 and pasted.sum() == 7 * 10 * 20 * 3 and frame.sum() == 0
  with pytest.raises(ValueError, match="does not fit"):
    synthetic.paste(frame, np.zeros((10, 21, 3), np.uint8), 30, 40)


@pytest.mark.parametrize("fps", [None, 10.0])
def test_composite_clip_ground_truth_is_where_the_face_is(tmp_path, fps):
  source = cremad_clip("SAD")
  info = media.probe(source)
  patch, box = synthetic.face_patch("grace_hopper", 90)
  position = (30, info.width - patch.shape[1] - 5)
  out = tmp_path / "composite.mp4"
  truth = synthetic.composite_clip(source, out, patch, position, box, fps=fps)
  written = list(media.iter_frames(out, 1000.0))  # every frame
  assert truth["num_frames"] == len(written) == len(truth["bystander_boxes"])
  if fps is None:  # every source frame, at the source's rate
    assert truth["fps"] == pytest.approx(info.fps)
    assert truth["num_frames"] == round(info.duration_s * info.fps)
  else:
    assert truth["fps"] == fps
    assert truth["num_frames"] == len(list(media.iter_frames(source, fps)))
  expected = [position[0] + box[0], position[1] + box[1], position[0] + box[2],
              position[1] + box[3]]
  assert all(b == expected for b in truth["bystander_boxes"])
  for frame in (written[0], written[-1]):
    found = face_recognition.face_locations(frame.rgb)
    assert max(faces.iou(f, expected) for f in found) > 0.5
    # The actor is still there, away from the pasted patch.
    assert any(f[1] < position[1] for f in found)
  # The source's audio comes along, on the same clock.
  audio, original = media.load_audio(out), media.load_audio(source)
  n = min(audio.size, original.size)
  assert abs(audio.size - original.size) <= 16000 * 0.1
  assert np.corrcoef(audio[:n], original[:n])[0, 1] > 0.9
  with pytest.raises(ValueError, match="does not fit"):
    synthetic.composite_clip(source, out, patch, (info.height - 10, 0), box)


def test_cnn_detector_finds_the_same_face_as_hog():
  image = skimage.data.astronaut()
  # The CNN finds faces of about 80 px and more without upsampling: this one is about 90.
  config = faces.FaceConfig(model="cnn", detect_max_side=None, upsample=0)
  result = faces.track_faces([media.Frame(0, 0.0, image)], config)
  hog = faces.track_faces([media.Frame(0, 0.0, image)])
  cnn_face = max(result.tracks, key=lambda t: t.mean_area())
  hog_face = max(hog.tracks, key=lambda t: t.mean_area())
  assert faces.iou(cnn_face.boxes[0], hog_face.boxes[0]) > 0.5
  assert cnn_face.crops[0].shape == (64, 64, 1)

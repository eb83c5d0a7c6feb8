"""The demo-corpus generator: what it writes, what its ground truth claims, and that both hold."""

import collections
import csv
import json

import av
import face_recognition
import librosa
import numpy as np
import pytest
import scipy.signal

from data_prep import features
from data_prep import media
from data_prep import synthetic
from data_prep.corpora import meld
from data_prep.corpora import read_corpus
from kd_mh import emotions

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  records = synthetic.make_demo_corpus(root, n_clips=14, seed=7, duration_s=2.0,
                                       bystander_fraction=0.5, progress=False)
  return root, records


def _iou(a, b) -> float:
  """IoU of two [top, right, bottom, left] boxes."""
  height = min(a[2], b[2]) - max(a[0], b[0])
  width = min(a[1], b[1]) - max(a[3], b[3])
  inter = max(height, 0) * max(width, 0)
  area_a = (a[2] - a[0]) * (a[1] - a[3])
  area_b = (b[2] - b[0]) * (b[1] - b[3])
  return inter / (area_a + area_b - inter)


def _decode(path):
  """(RGB frames, raw decoded audio sample count) straight from PyAV."""
  with av.open(str(path)) as container:
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  with av.open(str(path)) as container:
    samples = sum(f.samples for f in container.decode(audio=0))
  return frames, samples


# --- the corpus on disk -------------------------------------------------------------------------


def test_demo_reader_reads_the_corpus_with_its_ground_truth(corpus):
  root, records = corpus
  specs = {s.clip_id: s for s in read_corpus("demo", root)}
  assert sorted(specs) == sorted(r["clip_id"] for r in records)
  for record in records:
    spec = specs[record["clip_id"]]
    assert not spec.error, spec.error
    assert spec.split == record["split"]
    assert spec.speaker_id == record["speaker_identity"]
    assert spec.face_label == emotions.index(record["face_emotion"])
    assert spec.voice_label == emotions.index(record["voice_emotion"])
    assert spec.label == spec.voice_label  # MELD's Emotion column carries the voice
    assert spec.path == str(root / record["path"])


def test_csvs_have_meld_columns_times_and_line_ends(corpus):
  root, records = corpus
  by_split = collections.defaultdict(list)
  for record in records:
    by_split[record["split"]].append(record)
  for split in meld.MELD_SPLITS:
    raw = (root / split.csv_name).read_bytes()
    assert raw.count(b"\r\n") == len(by_split[split.split]) + 1  # header + rows, CRLF like MELD
    with open(root / split.csv_name, encoding="utf-8", newline="") as f:
      reader = csv.DictReader(f)
      assert reader.fieldnames == ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment",
                                   "Dialogue_ID", "Utterance_ID", "Season", "Episode",
                                   "StartTime", "EndTime"]
      rows = list(reader)
    truth = {r["clip_id"]: r for r in by_split[split.split]}
    assert len(rows) == len(truth)
    for number, row in enumerate(rows, start=1):
      assert int(row["Sr No."]) == number
      clip_id = f"{split.name}/dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"
      record = truth[clip_id]
      assert emotions.from_meld(row["Emotion"]) == emotions.index(record["voice_emotion"])
      assert row["Speaker"] == record["speaker_identity"]
      assert row["Utterance"] == record["text"]
      # MELD's sentiment of each emotion (surprise, which MELD labels either way, as positive).
      expected = {"joy": "positive", "surprise": "positive", "neutral": "neutral"}
      assert row["Sentiment"] == expected.get(row["Emotion"], "negative")
      length = meld.parse_time(row["EndTime"]) - meld.parse_time(row["StartTime"])
      assert length == pytest.approx(record["duration_s"], abs=1e-3)


def test_ground_truth_file_matches_the_returned_records(corpus):
  root, records = corpus
  lines = (root / "ground_truth.jsonl").read_text(encoding="utf-8").splitlines()
  assert [json.loads(line) for line in lines] == json.loads(json.dumps(records))


def test_identities_are_held_out_between_splits(corpus):
  _, records = corpus
  # Photographs, in either role: an identity derived from a photo counts as that photo's person.
  people = collections.defaultdict(set)
  for record in records:
    people[record["split"]].add(synthetic.base_identity(record["speaker_identity"]))
    if record["bystander_identity"]:
      people[record["split"]].add(synthetic.base_identity(record["bystander_identity"]))
      assert (synthetic.base_identity(record["bystander_identity"])
              != synthetic.base_identity(record["speaker_identity"]))
  assert set(people) == set(SPLITS)
  for a in SPLITS:
    for b in SPLITS:
      if a < b:
        assert not people[a] & people[b], (a, b)


def test_the_default_plan_holds_out_photos_with_their_variants():
  speakers = synthetic.with_variants(synthetic.SPEAKERS + synthetic.BYSTANDERS, 3)
  assert len(set(speakers)) == 3 * 31
  planned = synthetic._plan(210, 0, 0.35, 0.35, (0.7, 0.15, 0.15), speakers, None)
  photos = collections.defaultdict(set)
  for p in planned:
    photos[p.split.split].add(synthetic.base_identity(p.speaker))
    if p.bystander:
      photos[p.split.split].add(synthetic.base_identity(p.bystander))
  assert all(len(photos[s]) >= 4 for s in SPLITS), {s: len(v) for s, v in photos.items()}
  assert not photos["train"] & photos["validation"]
  assert not photos["train"] & photos["test"]
  assert not photos["validation"] & photos["test"]
  counts = collections.Counter(p.split.split for p in planned)
  assert counts["validation"] >= 25 and counts["test"] >= 25, counts


def test_derived_identities_are_deterministic_and_differ_from_their_photo():
  photo, landmarks = synthetic._identity("lfw_003")
  first, moved = synthetic._identity("lfw_003~1")
  synthetic._identity.cache_clear()
  again, moved_again = synthetic._identity("lfw_003~1")
  assert np.array_equal(first, again) and np.array_equal(moved, moved_again)
  assert first.shape == photo.shape
  assert 0.5 < np.abs(moved - landmarks).max() < 0.3 * np.ptp(landmarks[:, 0])
  assert np.abs(first.astype(float) - photo).mean() > 2
  assert synthetic.voice_of("lfw_003~1") == synthetic.voice_of("lfw_003~1")
  assert synthetic.voice_of("lfw_003~1") != synthetic.voice_of("lfw_003")
  # Its face is still found, where its landmarks are.
  box = face_recognition.face_locations(first)
  assert box and _iou(max(box, key=lambda b: b[2] - b[0]),
                      [moved[:, 1].min(), moved[:, 0].max(), moved[:, 1].max(),
                       moved[:, 0].min()]) > 0.3
  with pytest.raises(ValueError, match="derived identity"):
    synthetic._identity("lfw_003~x")


def test_voices_cover_continuous_registers():
  voices = [synthetic.voice_of(name)
            for name in synthetic.with_variants(synthetic.SPEAKERS + synthetic.BYSTANDERS, 3)]
  f0 = np.array([v.f0_hz for v in voices])
  assert 95 <= f0.min() and f0.max() <= 240
  assert len(np.unique(np.round(f0))) > 60
  assert 0.2 < np.mean(f0 > 160) < 0.6
  assert all(0.9 <= v.rate_scale <= 1.1 and 0.9 <= v.tilt_scale <= 1.1 for v in voices)


def test_plan_balances_emotions_and_keeps_the_fractions():
  planned = synthetic._plan(105, 0, 0.35, 0.35, (0.7, 0.15, 0.15), synthetic.SPEAKERS,
                            synthetic.BYSTANDERS)
  assert len(planned) == 105
  for split in SPLITS:
    items = [p for p in planned if p.split.split == split]
    m = len(items)
    faces = collections.Counter(p.face_emotion for p in items)
    voices = collections.Counter(p.voice_emotion for p in items)
    assert set(faces) == set(voices) == set(emotions.EMOTIONS)
    assert max(faces.values()) - min(faces.values()) <= 1
    assert max(voices.values()) - min(voices.values()) <= 1
    assert sum(p.face_emotion != p.voice_emotion for p in items) == round(0.35 * m)
    assert sum(p.bystander is not None for p in items) == round(0.35 * m)
    ids = [(p.dialogue, p.utterance) for p in items]
    assert len(set(ids)) == m  # each row names its own file


def test_plan_splits_clips_when_too_few_speakers_to_hold_out():
  planned = synthetic._plan(20, 0, 0.35, 0.35, (0.7, 0.15, 0.15), ("grace_hopper", "astronaut"),
                            ("lfw_002",))
  counts = collections.Counter(p.split.split for p in planned)
  assert counts == {"train": 14, "validation": 3, "test": 3}
  assert {p.speaker for p in planned if p.split.split == "test"} <= {"grace_hopper", "astronaut"}
  assert {p.bystander for p in planned} == {"lfw_002", None}


def test_plan_is_deterministic_and_depends_on_the_seed():
  args = (40, 0.35, 0.35, (0.7, 0.15, 0.15), synthetic.SPEAKERS, synthetic.BYSTANDERS)
  first = synthetic._plan(args[0], 3, *args[1:])
  assert first == synthetic._plan(args[0], 3, *args[1:])
  assert first != synthetic._plan(args[0], 4, *args[1:])


# --- clips --------------------------------------------------------------------------------------


def test_clips_decode_with_the_expected_frames_and_audio(corpus):
  root, records = corpus
  for record in records[:4]:
    path = root / record["path"]
    frames, samples = _decode(path)
    assert len(frames) == record["num_frames"] == 50
    assert frames[0].shape == (record["height"], record["width"], 3)
    assert record["num_samples"] == 32000
    # AAC adds priming and pads the last frame: at most two 1024-sample frames more.
    assert record["num_samples"] <= samples <= record["num_samples"] + 2048
    assert media.load_audio(path).size == record["num_samples"]


def test_boxes_and_mouths_have_one_value_per_frame(corpus):
  _, records = corpus
  assert any(r["bystander_identity"] for r in records)
  assert any(not r["bystander_identity"] for r in records)
  for record in records:
    n = record["num_frames"]
    assert len(record["speaker_boxes"]) == len(record["bystander_boxes"]) == n
    assert len(record["speaker_mouth"]) == n
    for top, right, bottom, left in record["speaker_boxes"]:
      assert 0 <= top < bottom <= record["height"] and 0 <= left < right <= record["width"]
    if record["bystander_identity"]:
      assert all(box is not None for box in record["bystander_boxes"])
      assert len(record["bystander_mouth"]) == n
    else:
      assert record["bystander_boxes"] == [None] * n and record["bystander_mouth"] is None
    assert 0 <= min(record["speaker_mouth"]) <= max(record["speaker_mouth"]) <= 1
    assert record["congruent"] == (record["face_emotion"] == record["voice_emotion"])


def test_same_seed_gives_the_same_clip(tmp_path):
  args = ("fear", "sad", "lfw_003", "lfw_002")
  a = synthetic.make_clip(tmp_path / "a.mp4", *args, duration_s=1.0, seed=11)
  b = synthetic.make_clip(tmp_path / "b.mp4", *args, duration_s=1.0, seed=11)
  c = synthetic.make_clip(tmp_path / "c.mp4", *args, duration_s=1.0, seed=12)
  def strip(record):
    return {k: v for k, v in record.items() if k not in ("clip_id", "path")}

  assert strip(a) == strip(b)
  assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
  assert strip(a) != strip(c)
  assert not np.array_equal(media.load_audio(tmp_path / "a.mp4"),
                            media.load_audio(tmp_path / "c.mp4"))


def test_speech_is_deterministic_for_a_seed():
  a = synthetic.synthesize_speech("happy", 1.5, synthetic.HIGH_VOICE, seed=5)
  b = synthetic.synthesize_speech("happy", 1.5, synthetic.HIGH_VOICE, seed=5)
  c = synthetic.synthesize_speech("happy", 1.5, synthetic.HIGH_VOICE, seed=6)
  assert np.array_equal(a.audio, b.audio) and np.array_equal(a.envelope, b.envelope)
  assert not np.array_equal(a.audio, c.audio)
  assert a.audio.dtype == np.float32 and a.audio.size == 24000
  assert np.abs(a.audio).max() <= 1.0


def test_large_two_person_clip_for_benchmarks(tmp_path):
  record = synthetic.make_clip(tmp_path / "big.mp4", "happy", "angry", "grace_hopper", "lfw_005",
                               duration_s=1.0, width=640, height=360, seed=2)
  info = media.probe(tmp_path / "big.mp4")
  assert (info.width, info.height) == (640, 360)
  assert len(_decode(tmp_path / "big.mp4")[0]) == record["num_frames"] == 25
  for speaker_box, bystander_box in zip(record["speaker_boxes"], record["bystander_boxes"]):
    assert _iou(speaker_box, bystander_box) == 0  # side by side, no overlap
    # The bystander is the smaller face.
    assert (speaker_box[2] - speaker_box[0]) > 1.3 * (bystander_box[2] - bystander_box[0])


@pytest.mark.slow
def test_sixty_second_benchmark_clip(tmp_path):
  record = synthetic.make_clip(tmp_path / "long.mp4", "sad", "happy", "astronaut", "lfw_011",
                               duration_s=60.0, width=640, height=360, seed=0)
  info = media.probe(tmp_path / "long.mp4")
  assert (info.width, info.height) == (640, 360)
  assert info.duration_s == pytest.approx(60.0, abs=0.1)
  assert record["num_frames"] == 1500 and record["num_samples"] == 960000


@pytest.mark.parametrize("kwargs, message", [
    (dict(face_emotion="joyful"), "unknown face emotion 'joyful'"),
    (dict(voice_emotion="calm"), "unknown voice emotion 'calm'"),
    (dict(speaker="nobody"), "unknown identity 'nobody'"),
    (dict(speaker="lfw_150"), "unknown identity 'lfw_150'"),
    (dict(bystander="lfw_003"), "bystander must differ from the speaker"),
    (dict(width=321), "even"),
    (dict(duration_s=0.0), "positive"),
])
def test_bad_input_raises_naming_the_file(tmp_path, kwargs, message):
  args = dict(face_emotion="sad", voice_emotion="sad", speaker="lfw_003")
  args.update(kwargs)
  path = tmp_path / "bad.mp4"
  with pytest.raises(ValueError, match=message) as error:
    synthetic.make_clip(path, **args)
  assert str(path) in str(error.value)
  assert not path.exists()


def test_corpus_rejects_bad_options(tmp_path):
  with pytest.raises(ValueError, match="incongruent_fraction"):
    synthetic.make_demo_corpus(tmp_path, n_clips=3, incongruent_fraction=1.5, progress=False)
  with pytest.raises(ValueError, match="fractions must be three"):
    synthetic.make_demo_corpus(tmp_path, n_clips=3, fractions=(0.5, 0.5, 0.5), progress=False)
  with pytest.raises(ValueError, match="both speaker and bystander: lfw_003"):
    synthetic.make_demo_corpus(tmp_path, n_clips=3, bystanders=("lfw_003",), progress=False)


# --- voices ---------------------------------------------------------------------------------------


def _prosody(audio: np.ndarray, sample_rate: int = 16000) -> dict[str, float]:
  """Median F0 (YIN), level (dB), spectral centroid and vowel rate of the loud frames."""
  hop = 256
  rms = librosa.feature.rms(y=audio, frame_length=1024, hop_length=hop)[0]
  loud = rms > 0.3 * rms.max()
  f0 = librosa.yin(audio, fmin=60, fmax=500, sr=sample_rate, frame_length=1024, hop_length=hop)
  centroid = librosa.feature.spectral_centroid(y=audio, sr=sample_rate, n_fft=1024,
                                               hop_length=hop)[0]
  # Vowel nuclei: peaks of the energy below 1 kHz (consonant noise lies above).
  low = scipy.signal.sosfilt(scipy.signal.butter(4, 1000, fs=sample_rate, output="sos"), audio)
  energy = np.sqrt(np.convolve(low ** 2, np.ones(320) / 320, "same"))[::160]
  peaks, _ = scipy.signal.find_peaks(energy, height=0.25 * energy.max(), distance=8,
                                     prominence=0.15 * energy.max())
  return {"f0": float(np.median(f0[loud[:f0.size]])),
          "level_db": float(20 * np.log10(np.sqrt(np.mean(rms[loud] ** 2)))),
          "centroid": float(np.median(centroid[loud[:centroid.size]])),
          "rate": len(peaks) / (audio.size / sample_rate)}


def test_voice_profiles_differ_measurably():
  measured = {e: [_prosody(synthetic.synthesize_speech(e, 3.0, synthetic.LOW_VOICE, seed=s).audio)
                  for s in range(3)] for e in ("angry", "sad", "neutral")}
  mean = {e: {k: np.mean([m[k] for m in ms]) for k in ms[0]} for e, ms in measured.items()}
  # Banse & Scherer / Juslin & Laukka: anger is higher, louder, brighter and faster than sadness.
  assert mean["angry"]["f0"] > 1.3 * mean["sad"]["f0"]
  assert mean["sad"]["f0"] < mean["neutral"]["f0"] < mean["angry"]["f0"]
  assert mean["angry"]["level_db"] - mean["sad"]["level_db"] > 9.0
  assert mean["angry"]["centroid"] > 1.2 * mean["sad"]["centroid"]
  assert min(m["rate"] for m in measured["angry"]) > max(m["rate"] for m in measured["sad"])


@pytest.mark.parametrize("emotion, voice", [("neutral", synthetic.LOW_VOICE),
                                            ("fear", synthetic.HIGH_VOICE)])
def test_reported_f0_is_the_f0_in_the_audio(emotion, voice):
  speech = synthetic.synthesize_speech(emotion, 2.0, voice, seed=1)
  estimated, voiced, _ = librosa.pyin(speech.audio, fmin=60, fmax=600, sr=16000,
                                      frame_length=1024, hop_length=256)
  assert np.nanmedian(estimated[voiced]) == pytest.approx(np.median(speech.f0[speech.f0 > 0]),
                                                          rel=0.03)


# --- faces ----------------------------------------------------------------------------------------


def test_mouth_follows_the_voice_not_the_bystander(corpus):
  root, records = corpus
  moving_bystanders = 0
  for record in records:
    audio = media.load_audio(root / record["path"])
    rms = features.rms_envelope(audio, 16000, np.arange(record["num_frames"]) / record["fps"])
    speaker = np.corrcoef(rms, record["speaker_mouth"])[0, 1]
    assert speaker > 0.5, record["clip_id"]
    if record["bystander_mouth"] and np.ptp(record["bystander_mouth"]) > 0:
      moving_bystanders += 1
      bystander = np.corrcoef(rms, record["bystander_mouth"])[0, 1]
      assert bystander < speaker - 0.25, record["clip_id"]
  assert moving_bystanders >= 1  # the corpus has a bystander who moves their lips


def test_video_shows_the_mouth_opening(corpus):
  root, records = corpus
  record = records[0]
  frames, _ = _decode(root / record["path"])
  gaps = []
  for frame, box in zip(frames, record["speaker_boxes"]):
    points = synthetic._landmarks_68(face_recognition.face_landmarks(frame, [tuple(box)])[0])
    eye_distance = np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0))
    gaps.append((points[65:68, 1].mean() - points[61:64, 1].mean()) / eye_distance)
  assert np.ptp(record["speaker_mouth"]) > 0.3
  assert np.corrcoef(gaps, record["speaker_mouth"])[0, 1] > 0.8


def test_hog_finds_the_speakers_face_where_the_ground_truth_says(corpus):
  root, records = corpus
  chosen = [r for r in records if r["bystander_identity"]][:1]
  chosen += [r for r in records if not r["bystander_identity"]][:2]
  for record in chosen:
    frames, _ = _decode(root / record["path"])
    found = [max((_iou(box, located) for located in face_recognition.face_locations(frame)),
                 default=0.0) > 0.5 for frame, box in zip(frames, record["speaker_boxes"])]
    assert np.mean(found) >= 0.9, (record["clip_id"], np.mean(found))


def test_rig_levels_the_eyes():
  rig = synthetic._rig("lfw_046", 40)  # a tilted head in its photograph
  left, right = rig.points[36:42].mean(0), rig.points[42:48].mean(0)
  assert abs(left[1] - right[1]) < 0.5
  assert np.linalg.norm(right - left) == pytest.approx(40, abs=0.5)


def test_expressions_move_the_landmarks_as_named():
  rig = synthetic._rig("grace_hopper", 40)
  move = {e: rig.expression_offsets(synthetic.EXPRESSIONS[e]) / 40 for e in emotions.EMOTIONS}
  brows, corners, inner_brows = slice(17, 27), [48, 54], [21, 22]
  assert not move["neutral"].any()
  assert move["surprise"][brows, 1].mean() < -0.15  # raised (y points down)
  assert move["angry"][inner_brows, 1].mean() > 0.1  # lowered ...
  assert move["angry"][21, 0] > 0 > move["angry"][22, 0]  # ... and drawn together
  assert move["happy"][corners, 1].mean() < -0.1  # lip corners up
  assert move["sad"][corners, 1].mean() > 0.1  # lip corners down
  assert move["fear"][54, 0] - move["fear"][48, 0] > 0.2  # lips stretched
  assert move["disgust"][51, 1] < -0.05  # upper lip raised
  assert synthetic.EXPRESSIONS["surprise"].jaw > 0.5  # jaw dropped
  assert set(synthetic.EXPRESSIONS) == set(synthetic.VOICE_PROFILES) == set(emotions.EMOTIONS)


def test_fold_guard_scales_down_only_what_would_fold():
  rig = synthetic._rig("lfw_003", 40)
  jaw = rig.jaw_offsets()
  happy = rig.expression_offsets(synthetic.EXPRESSIONS["happy"])
  assert synthetic._fold_free_scale(rig, happy, [0 * jaw, jaw]) == 1.0
  crushing = np.zeros_like(rig.points)
  crushing[17:27, 1] = 1.5 * 40  # brows pushed 1.5 eye distances down, through the eyes
  scale = synthetic._fold_free_scale(rig, crushing, [0 * jaw])
  assert 0 < scale < 0.5
  areas = synthetic._signed_areas(rig.points + scale * crushing, rig.triangles)
  rest = synthetic._signed_areas(rig.points, rig.triangles)
  assert (areas / rest).min() >= synthetic._MIN_AREA_RATIO

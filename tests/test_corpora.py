"""Corpus readers against the real test data and small generated layouts."""

import collections
import json
import logging
import pathlib

import pytest

from conftest import shared_path
from data_prep.corpora import READERS
from data_prep.corpora import meld
from data_prep.corpora import read_corpus
from data_prep.corpora import splits
from data_prep.corpora.base import ClipSpec
from kd_mh import emotions

MELD_ROWS = {"train": 9989, "dev": 1109, "test": 2610}


def touch(root: pathlib.Path, *relative: str) -> None:
  """Empty placeholder files: readers only check that media exist, they never decode."""
  for name in relative:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(b"")


def by_id(specs):
  return {s.clip_id: s for s in specs}


# ---------------------------------------------------------------------------------------------
# Registry.


def test_registry_names_and_clear_errors(tmp_path):
  assert set(READERS) == {"meld", "cremad", "ravdess", "folder", "faces", "demo"}
  with pytest.raises(ValueError, match="unknown corpus 'iemocap'"):
    read_corpus("iemocap", tmp_path)
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    read_corpus("ravdess", tmp_path / "absent")
  with pytest.raises(ValueError, match="no option.*colour.*its options are calm"):
    read_corpus("ravdess", tmp_path, colour="red")


def test_repeated_clip_ids_get_fresh_ids_and_a_reason(tmp_path):
  # The same recording as .wav and .flac in one actor folder is one clip id twice.
  touch(tmp_path, "Actor_01/03-01-03-01-01-01-01.wav", "Actor_01/03-01-03-01-01-01-01.flac")
  specs = read_corpus("ravdess", tmp_path)
  assert sorted(s.clip_id for s in specs) == ["Actor_01/03-01-03-01-01-01-01",
                                              "Actor_01/03-01-03-01-01-01-01-2"]
  assert [bool(s.error) for s in sorted(specs, key=lambda s: s.clip_id)] == [False, True]
  assert "duplicate clip id" in specs[1].error and specs[0].path in specs[1].error


# ---------------------------------------------------------------------------------------------
# Speaker-independent splits.


def _speaker_specs(speakers):
  return [ClipSpec(clip_id=f"{s}/{i}", corpus="t", path="x", speaker_id=s)
          for s in speakers for i in range(3)]


def test_splits_are_speaker_independent_deterministic_and_follow_fractions():
  specs = _speaker_specs([f"s{i:02d}" for i in range(20)])
  out = splits.assign_splits(specs)
  assert [s.clip_id for s in out] == [s.clip_id for s in specs]
  per_speaker = collections.defaultdict(set)
  for s in out:
    per_speaker[s.speaker_id].add(s.split)
  assert all(len(v) == 1 for v in per_speaker.values())
  counts = collections.Counter(next(iter(v)) for v in per_speaker.values())
  assert counts == {"train": 16, "validation": 2, "test": 2}
  assert out == splits.assign_splits(list(specs))
  assert out != splits.assign_splits(specs, seed=1)


def test_split_assignment_uses_a_stable_hash():
  # Known answer: Python's hash() of str changes per process, SHA-256 does not.
  out = splits.assign_splits(_speaker_specs("abcdefghij"))
  assert {s.speaker_id: s.split for s in out if s.split != "train"} == {
      "b": "validation", "j": "test"}


def test_every_split_gets_a_speaker_from_three_on():
  for n, expected in ((1, {"train": 1}), (2, {"train": 2}),
                      (3, {"train": 1, "validation": 1, "test": 1})):
    out = splits.assign_splits(_speaker_specs([f"s{i}" for i in range(n)]))
    assert collections.Counter(s.split for s in out) == {k: 3 * v for k, v in expected.items()}
  out = splits.assign_splits(_speaker_specs("abc"), fractions=(0.9, 0.1, 0.0))
  assert collections.Counter(s.split for s in out) == {"train": 6, "validation": 3}


def test_explicit_speaker_lists_override_and_bad_options_fail():
  specs = _speaker_specs("abcdefghij")
  out = splits.assign_splits(specs, test_speakers=["a", "b"], validation_speakers=["j"])
  chosen = {s.speaker_id: s.split for s in out}
  assert [k for k, v in chosen.items() if v == "test"] == ["a", "b"]
  assert [k for k, v in chosen.items() if v == "validation"] == ["j"]
  # Only test pinned: validation still comes from the others, by fraction.
  out = splits.assign_splits(specs, test_speakers=["a"])
  assert collections.Counter(s.split for s in out) == {"train": 24, "validation": 3, "test": 3}
  with pytest.raises(ValueError, match="not in the corpus: zz"):
    splits.assign_splits(specs, test_speakers=["zz"])
  with pytest.raises(ValueError, match="both test and validation: a"):
    splits.assign_splits(specs, test_speakers=["a"], validation_speakers=["a"])
  with pytest.raises(ValueError, match="summing to 1"):
    splits.assign_splits(specs, fractions=(0.5, 0.1, 0.1))


def test_clips_without_speaker_are_split_by_item():
  specs = [ClipSpec(clip_id=f"img{i}", corpus="t", path="x") for i in range(10)]
  out = splits.assign_splits(specs)
  assert collections.Counter(s.split for s in out) == {"train": 8, "validation": 1, "test": 1}


# ---------------------------------------------------------------------------------------------
# RAVDESS (real files).


@pytest.fixture(scope="module")
def ravdess_specs():
  return read_corpus("ravdess", shared_path("ravdess"))


def test_ravdess_reads_all_721_files_with_known_labels(ravdess_specs):
  assert len(ravdess_specs) == 721
  assert not [s for s in ravdess_specs if s.error or not s.path]
  specs = by_id(ravdess_specs)
  for clip_id, name, native in (
      ("Actor_01/03-01-01-01-01-01-01", "neutral", "neutral"),
      ("Actor_02/03-01-02-02-01-01-02", "neutral", "calm"),
      ("Actor_03/03-01-06-01-02-02-03", "fear", "fearful"),
      ("Actor_12/03-01-08-02-02-01-12", "surprise", "surprised"),
      ("Actor_07/03-01-07-01-01-01-07", "disgust", "disgust")):
    assert specs[clip_id].label == emotions.index(name), clip_id
    assert specs[clip_id].label_name == native and specs[clip_id].label_source == "filename"
  assert specs["Actor_01/03-01-01-01-01-01-01"].path.endswith(".wav")
  assert specs["Actor_03/03-01-06-01-02-02-03"].path.endswith(".flac")
  assert dict(specs["Actor_12/03-01-08-02-02-01-12"].extra)["intensity"] == "strong"
  assert {s.label_name for s in ravdess_specs} == set(emotions.RAVDESS_NATIVE_CLASSES)


def test_ravdess_calm_policy():
  specs = read_corpus("ravdess", shared_path("ravdess"), calm="drop")
  calm = [s for s in specs if s.label_name == "calm"]
  assert len(calm) == 96 and all(s.label == emotions.UNLABELLED for s in calm)
  with pytest.raises(emotions.LabelError, match="calm policy"):
    read_corpus("ravdess", shared_path("ravdess"), calm="bored")


def test_ravdess_trusts_the_actor_folder_and_warns_on_mismatch(caplog):
  root = shared_path("ravdess")
  with caplog.at_level(logging.WARNING):
    specs = by_id(read_corpus("ravdess", root))
  moved = specs["Actor_05/03-01-05-01-01-01-02"]
  assert moved.speaker_id == "05" and dict(moved.extra)["filename_actor"] == "02"
  assert specs["Actor_02/03-01-05-01-01-01-02"].speaker_id == "02"
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "says actor 02 but it is in Actor_05" in warnings[0]


def test_ravdess_splits_are_speaker_independent(ravdess_specs):
  splits_of = collections.defaultdict(set)
  for s in ravdess_specs:
    splits_of[s.speaker_id].add(s.split)
  assert sorted(splits_of) == [f"{i:02d}" for i in range(1, 13)]
  assert all(len(v) == 1 for v in splits_of.values())
  assert collections.Counter(next(iter(v)) for v in splits_of.values()) == {
      "train": 10, "validation": 1, "test": 1}
  pinned = read_corpus("ravdess", shared_path("ravdess"), test_speakers=["11", "12"],
                       validation_speakers=["10"])
  assert {s.speaker_id for s in pinned if s.split == "test"} == {"11", "12"}
  assert {s.speaker_id for s in pinned if s.split == "validation"} == {"10"}


def test_ravdess_extensions_in_any_case_and_bad_names(tmp_path):
  touch(tmp_path, "Actor_01/03-01-04-02-01-01-01.WAV", "Actor_02/03-01-05-01-01-01-02.Flac",
        "Actor_03/02-01-05-01-01-01-03.mp4", "Actor_03/notes.wav",
        "Actor_03/03-01-09-01-01-01-03.wav",
        "flat/03-01-03-01-01-01-04.wav", "Actor_03/readme.txt")
  specs = by_id(read_corpus("ravdess", tmp_path))
  assert len(specs) == 6
  assert specs["Actor_01/03-01-04-02-01-01-01"].label == emotions.index("sad")
  assert specs["Actor_02/03-01-05-01-01-01-02"].label == emotions.index("angry")
  assert dict(specs["Actor_03/02-01-05-01-01-01-03"].extra)["modality"] == "video-only"
  assert "not a RAVDESS file name" in specs["Actor_03/notes"].error
  assert specs["Actor_03/notes"].path is None
  assert "unknown RAVDESS emotion code '09'" in specs["Actor_03/03-01-09-01-01-01-03"].error
  # No Actor_XX folder: the file name's actor is the speaker.
  assert specs["Actor_04/03-01-03-01-01-01-04"].speaker_id == "04"


# ---------------------------------------------------------------------------------------------
# CREMA-D (real files).


def test_cremad_six_videos_and_audio_only_clips():
  specs = by_id(read_corpus("cremad", shared_path("cremad")))
  assert len(specs) == 12 and not [s for s in specs.values() if s.error]
  for code in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"):
    video, audio = specs[f"1001_DFA_{code}_XX"], specs[f"1002_DFA_{code}_XX"]
    assert video.path.endswith(f"video/1001_DFA_{code}_XX.flv")
    assert dict(video.extra)["modality"] == "audio-visual"
    assert audio.path.endswith(f"audio/1002_DFA_{code}_XX.wav")
    assert dict(audio.extra)["modality"] == "audio"
    assert dict(audio.extra)["other_files"].endswith(f"1002_DFA_{code}_XX.mp3")
    assert video.label == audio.label == emotions.from_cremad(code)
    assert video.label_source == "filename" and video.speaker_id == "1001"
  assert {s.speaker_id for s in specs.values()} == {"1001", "1002"}


def test_cremad_votes_of_the_incongruent_clips():
  specs = by_id(read_corpus("cremad", shared_path("cremad")))
  index = emotions.index
  for clip_id, voice, face in (("1001_DFA_HAP_XX", "neutral", "happy"),
                               ("1001_DFA_FEA_XX", "fear", "disgust"),
                               ("1001_DFA_DIS_XX", "disgust", "angry"),
                               ("1001_DFA_ANG_XX", "angry", "angry"),
                               ("1001_DFA_NEU_XX", "neutral", "neutral"),
                               ("1001_DFA_SAD_XX", "neutral", "neutral")):
    assert (specs[clip_id].voice_label, specs[clip_id].face_label) == (index(voice), index(face))
  extra = dict(specs["1001_DFA_HAP_XX"].extra)
  assert (extra["voice_vote"], extra["voice_level"], extra["face_vote"], extra["face_level"],
          extra["multimodal_vote"]) == ("N", "75.25", "H", "66.57", "H")
  tie = specs["1002_DFA_SAD_XX"]
  assert tie.face_label == emotions.UNLABELLED and dict(tie.extra)["face_vote"] == "N:S"
  assert tie.label == emotions.index("sad")


def test_cremad_layout_preference_votes_option_and_bad_names(tmp_path):
  touch(tmp_path, "a/1003_IEO_HAP_HI.mp3", "b/1003_IEO_HAP_HI.mp4", "c/1003_IEO_HAP_HI.wav",
        "1004_TIE_XYZ_LO.wav", "1004_TIE_ANG_QQ.wav", "1004-TIE-ANG-LO.wav", "notes.txt")
  specs = by_id(read_corpus("cremad", tmp_path))
  assert len(specs) == 4
  hap = specs["1003_IEO_HAP_HI"]
  assert hap.path.endswith("b/1003_IEO_HAP_HI.mp4") and hap.face_label == emotions.UNLABELLED
  assert dict(hap.extra)["other_files"].count(";") == 1
  assert "unknown label 'XYZ'" in specs["1004_TIE_XYZ_LO"].error
  assert "unknown CREMA-D level 'QQ'" in specs["1004_TIE_ANG_QQ"].error
  assert "not a CREMA-D file name" in specs["1004-TIE-ANG-LO"].error
  votes_csv = shared_path("cremad", "summaryTable.csv")
  voted = by_id(read_corpus("cremad", tmp_path, votes_csv=votes_csv))
  hap = voted["1003_IEO_HAP_HI"]  # summaryTable.csv: voice H 66, face H 79.2
  assert hap.voice_label == hap.face_label == emotions.index("happy")
  assert dict(hap.extra)["face_level"] == "79.2"
  assert dict(voted["1004_TIE_ANG_QQ"].extra)["votes"] == "missing"
  with pytest.raises(FileNotFoundError, match="votes file"):
    read_corpus("cremad", tmp_path, votes_csv=tmp_path / "none.csv")


# ---------------------------------------------------------------------------------------------
# MELD: the real CSVs over generated media layouts.


def test_meld_times():
  assert meld.parse_time("00:16:16,059") == pytest.approx(976.059)
  assert meld.parse_time("0:12:32,632") == pytest.approx(752.632)
  assert meld.parse_time("00:05:11,82") == pytest.approx(311.82)  # two digits: a fraction
  with pytest.raises(ValueError, match="not H:MM:SS,mmm"):
    meld.parse_time("12:32")


def test_meld_every_row_is_accounted_for(tmp_path):
  source = shared_path("meld")
  for split in meld.MELD_SPLITS:
    # Linked, not copied: the real annotations, next to placeholder media.
    (tmp_path / split.csv_name).symlink_to(source / split.csv_name)
  present = ["train_splits/dia0_utt0.mp4", "train_splits/dia0_utt1.mp4",
             "dev_splits_complete/dia0_utt0.mp4", "output_repeated_splits_test/dia0_utt0.mp4",
             "output_repeated_splits_test/dia155_utt3.mp4"]  # the EndTime <= StartTime row
  touch(tmp_path, *present)
  specs = read_corpus("meld", tmp_path)
  assert collections.Counter(s.clip_id.split("/")[0] for s in specs) == MELD_ROWS
  assert len({s.clip_id for s in specs}) == len(specs)
  ok = by_id(s for s in specs if not s.error)
  assert sorted(ok) == ["dev/dia0_utt0", "test/dia0_utt0", "train/dia0_utt0", "train/dia0_utt1"]
  assert all(s.path for s in ok.values())
  first = ok["train/dia0_utt0"]
  assert (first.speaker_id, first.label, first.label_name, first.label_source, first.split) == (
      "Chandler", emotions.index("neutral"), "neutral", "csv", "train")
  assert dict(first.extra)["start_time"] == "00:16:16,059"
  assert ok["dev/dia0_utt0"].split == "validation" and ok["test/dia0_utt0"].split == "test"
  reasons = collections.Counter(
      "not found" if "media file not found" in s.error else s.error.split(": ")[-1]
      for s in specs if s.error)
  assert reasons == {"not found": sum(MELD_ROWS.values()) - 5,
                     "EndTime 0:12:32,632 is not after StartTime 0:12:32,632": 1}
  bad_time = by_id(specs)["test/dia155_utt3"]
  assert bad_time.path.endswith("dia155_utt3.mp4") and "test_sent_emo.csv: line" in bad_time.error
  missing = by_id(specs)["train/dia1_utt0"]
  expected = tmp_path / "train_splits" / "dia1_utt0.mp4"
  assert missing.path is None and missing.error.endswith(f"media file not found: {expected}")


MELD_HEADER = ("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,"
               "Episode,StartTime,EndTime")


def test_meld_broken_rows_get_reasons(tmp_path):
  rows = [
      '1,“Hi.”,Ross,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,50"',
      "2,No id,Ross,joy,positive,x,1,1,1,\"00:00:01,000\",\"00:00:02,000\"",
      '3,Too short,Ross,joy,positive,0,2',
      '4,Bad time,Ross,joy,positive,0,3,1,1,"soon","00:00:02,000"',
      '5,Bad label,Ross,bored,neutral,0,4,1,1,"00:00:01,000","00:00:02,000"',
      '6,Same row again,Ross,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,000"',
  ]
  data = ("\ufeff" + "\r\n".join([MELD_HEADER] + rows) + "\r\n").encode("utf-8")
  data += b'7,\xff bad bytes,Ross,joy,positive,0,5,1,1,"00:00:01,000","00:00:02,000"\r\n'
  (tmp_path / "train_sent_emo.csv").write_bytes(data)
  touch(tmp_path, *(f"train_splits/dia0_utt{u}.mp4" for u in range(6)))
  specs = read_corpus("meld", tmp_path)
  assert len(specs) == 7
  errors = [s.error.split(": line ")[-1] for s in specs]
  assert errors[0] == "" and specs[0].label == emotions.index("happy")
  assert errors[1:5] == ["3: Dialogue_ID 'x' is not a non-negative integer",
                         "4: row has 7 fields, the header has 11",
                         "5: time 'soon' is not H:MM:SS,mmm",
                         "6: unknown label 'bored'"]
  assert specs[5].clip_id == "train/dia0_utt0-2" and "duplicate clip id" in specs[5].error
  assert errors[6] == "8: row is not valid UTF-8"
  with pytest.raises(FileNotFoundError, match="no MELD annotation CSV"):
    read_corpus("meld", tmp_path / "train_splits")


# ---------------------------------------------------------------------------------------------
# A folder of the user's media.


def test_folder_with_labels_csv_and_bad_rows(tmp_path):
  touch(tmp_path, "a/one.mp4", "a/two.wav", "b/three.flac", "b/four.mp4", "b/five.mkv",
        "b/six.mp4", "notes.txt", "unlisted.mp4")
  (tmp_path / "labels.csv").write_text("\n".join([
      "path,label,speaker",
      "a/one.mp4,joy,ann",
      "a/two.wav,Anger,ann",
      "b/three.flac,,bob",
      "b/four.mp4,contempt,bob",
      "b/five.mkv,puzzled,cy",
      "b/missing.mp4,sad,cy",
      "notes.txt,sad,cy",
      "/etc/passwd.mp4,sad,cy",
      "../x.mp4,sad,cy",
      "b/six.mp4",
  ]) + "\n", encoding="utf-8")
  specs = read_corpus("folder", tmp_path)
  assert len(specs) == 10
  got = [(s.clip_id, s.label, s.speaker_id, s.error.split(": line ")[-1]) for s in specs]
  assert got[:4] == [("a/one", emotions.index("happy"), "ann", ""),
                     ("a/two", emotions.index("angry"), "ann", ""),
                     ("b/three", emotions.UNLABELLED, "bob", ""),
                     ("b/four", emotions.UNLABELLED, "bob", "")]
  assert specs[3].label_name == "contempt"
  assert got[4][3] == "6: unknown label 'puzzled'"
  assert got[5][3].startswith("7: media file not found") and specs[5].path is None
  assert "is not a media file" in got[6][3]
  assert "must be relative to the corpus root" in got[7][3]
  assert "must be relative to the corpus root" in got[8][3]
  assert got[9][3] == "11: row has 1 fields, the header has 3"
  assert len({s.clip_id for s in specs}) == 10
  # Speakers given: no speaker in two splits.
  assert len({s.split for s in specs if s.speaker_id == "ann"}) == 1
  mapped = read_corpus("folder", tmp_path, contempt="disgust")
  assert mapped[3].label == emotions.index("disgust")
  with pytest.raises(emotions.LabelError, match="contempt policy"):
    read_corpus("folder", tmp_path, contempt="sometimes")


def test_folder_without_labels_csv_takes_every_media_file(tmp_path):
  touch(tmp_path, "x/clip one.MP4", "x/y/voice.flac", "readme.md", ".hidden.mp4",
        "x/._resource.wav", ".cache/z.mp4")
  specs = read_corpus("folder", tmp_path)
  assert sorted(s.clip_id for s in specs) == ["x/clip_one", "x/y/voice"]
  assert all(s.label == emotions.UNLABELLED and not s.error and s.path for s in specs)


# ---------------------------------------------------------------------------------------------
# A labelled folder of face photographs.


def test_faces_folder_labels_contempt_and_bad_images(tmp_path):
  touch(tmp_path, "happy/S005_001_01.png", "3/S010_002_01.png", "contempt/S011_001_01.jpg",
        "2/S012_001_01.PNG", "misc/S013_001_01.png", "9/S014_001_01.png", "loose.png",
        "happy/notes.txt")
  specs = by_id(read_corpus("faces", tmp_path))
  assert len(specs) == 7 and all(s.kind == "image" for s in specs.values())
  assert specs["happy/S005_001_01"].label == emotions.index("happy")
  assert specs["3/S010_002_01"].label == emotions.index("disgust")
  assert specs["3/S010_002_01"].label_name == "disgust"
  for clip_id in ("contempt/S011_001_01", "2/S012_001_01"):
    assert specs[clip_id].label == emotions.UNLABELLED and not specs[clip_id].error
    assert specs[clip_id].label_name == "contempt"
  assert "folder 'misc' is not a label" in specs["misc/S013_001_01"].error
  assert "unknown CK+ emotion code" in specs["9/S014_001_01"].error
  assert "not inside a <label>/ folder" in specs["loose"].error
  mapped = by_id(read_corpus("faces", tmp_path, contempt="disgust"))
  assert mapped["2/S012_001_01"].label == emotions.index("disgust")
  by_subject = read_corpus("faces", tmp_path, speaker_pattern=r"^(S\d+)_")
  assert {s.speaker_id for s in by_subject} == {f"S0{n}" for n in ("05", "10", "11", "12", "13",
                                                                    "14")} | {""}


# ---------------------------------------------------------------------------------------------
# The synthetic demo corpus (MELD layout + ground_truth.jsonl).


def test_demo_adds_face_and_voice_truth(tmp_path, caplog):
  rows = ['1,a,grace,surprise,positive,0,0,1,1,"00:00:00,000","00:00:03,000"',
          '2,b,astro,sadness,negative,0,1,1,1,"00:00:00,000","00:00:03,000"',
          '3,c,grace,joy,positive,1,0,1,1,"00:00:00,000","00:00:03,000"']
  (tmp_path / "train_sent_emo.csv").write_text("\r\n".join([MELD_HEADER] + rows[:2]) + "\r\n")
  (tmp_path / "test_sent_emo.csv").write_text("\r\n".join([MELD_HEADER] + rows[2:]) + "\r\n")
  touch(tmp_path, "train_splits/dia0_utt0.mp4", "train_splits/dia0_utt1.mp4",
        "output_repeated_splits_test/dia1_utt0.mp4")
  records = [
      # Generated elsewhere, then moved: only the media folder and file name must match.
      {"path": "/elsewhere/demo/train_splits/dia0_utt0.mp4", "face_emotion": "fear",
       "voice_emotion": "surprise", "speaker_identity": "grace_hopper"},
      {"path": "output_repeated_splits_test/dia1_utt0.mp4", "face_emotion": "happy",
       "voice_emotion": "happy", "speaker_identity": "astronaut"},
      {"path": "dev_splits_complete/dia0_utt0.mp4", "face_emotion": "sad",
       "voice_emotion": "sad", "speaker_identity": "lfw_001"},
  ]
  (tmp_path / "ground_truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  with caplog.at_level(logging.WARNING):
    specs = by_id(read_corpus("demo", tmp_path))
  assert sorted(specs) == ["test/dia1_utt0", "train/dia0_utt0", "train/dia0_utt1"]
  first = specs["train/dia0_utt0"]
  assert (first.corpus, first.face_label, first.voice_label, first.label, first.speaker_id,
          first.label_source, first.split, first.error) == (
              "demo", emotions.index("fear"), emotions.index("surprise"),
              emotions.index("surprise"), "grace_hopper", "generator", "train", "")
  test = specs["test/dia1_utt0"]
  assert not test.error, test.error
  assert (test.split, test.face_label, test.voice_label, test.speaker_id) == (
      "test", emotions.index("happy"), emotions.index("happy"), "astronaut")
  assert "no record in ground_truth.jsonl" in specs["train/dia0_utt1"].error
  assert any("1 records match no CSV row" in r.getMessage() for r in caplog.records)
  (tmp_path / "ground_truth.jsonl").write_text('{"path": "train_splits/dia0_utt0.mp4"}\n')
  with pytest.raises(ValueError, match="jsonl: line 1: not a ground-truth record .it needs path"):
    read_corpus("demo", tmp_path)
  (tmp_path / "ground_truth.jsonl").unlink()
  with pytest.raises(FileNotFoundError, match="no ground_truth.jsonl"):
    read_corpus("demo", tmp_path)

"""CREMA-D: `{actor}_{sentence}_{emotion}_{level}.(flv|mp4|wav|mp3)` anywhere under the root.

The label is the emotion the actor was asked to portray (the file name). CREMA-D also released
what raters perceived from the voice alone, the face alone and both (`summaryTable.csv`); when
that table is found under the root (or passed as `votes_csv`), `voice_label` / `face_label` are the
voice-only and face-only majority votes (a tie such as `N:S` leaves that modality unlabelled) and
all raw votes and agreement levels go to `extra`. Where voice and face votes differ, the clip is
real human ground truth for audio-visual incongruence.

One clip may be released as several files (Flash video, MP4, WAV, MP3): the clip is read from the
first of those in `PREFERENCE` (video before audio: the original Flash recording first, then
lossless WAV) and the others are listed in `extra`. A clip with only audio files is audio-only.
The speaker is the actor id; splits are speaker-independent (`splits.py`).
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

from data_prep.corpora import folder
from data_prep.corpora import splits
from data_prep.corpora.base import ClipSpec
from data_prep.media import VIDEO_EXTS
from kd_mh import emotions

VOTES_CSV = "summaryTable.csv"
PREFERENCE: tuple[str, ...] = (".flv", ".mp4", ".wav", ".mp3")
LEVELS: tuple[str, ...] = ("LO", "MD", "HI", "XX")

_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
# summaryTable.csv column -> `extra` key.
_VOTE_COLUMNS = {
    "VoiceVote": "voice_vote", "VoiceLevel": "voice_level", "FaceVote": "face_vote",
    "FaceLevel": "face_level", "MultiModalVote": "multimodal_vote",
    "MultiModalLevel": "multimodal_level",
}


def _rank(path: pathlib.Path) -> tuple[int, int, str]:
  suffix = path.suffix.lower()
  known = PREFERENCE.index(suffix) if suffix in PREFERENCE else len(PREFERENCE)
  return (suffix not in VIDEO_EXTS, known, str(path))


def read_votes(path: str | os.PathLike) -> dict[str, dict[str, str]]:
  """summaryTable.csv -> {clip name: {extra key: raw value}} for the voice / face / AV votes."""
  path = pathlib.Path(path)
  votes = {}
  for line, row, error in folder.read_csv_rows(path, ("FileName", *_VOTE_COLUMNS)):
    if error:
      raise ValueError(f"{path}: line {line}: {error}")
    votes[row["FileName"].strip()] = {key: row[column].strip()
                                      for column, key in _VOTE_COLUMNS.items()}
  return votes


def _vote(raw: str) -> int:
  try:
    return emotions.from_cremad_vote(raw)
  except emotions.LabelError:
    return emotions.UNLABELLED  # an unknown letter is no vote; the raw value stays in `extra`


def _find_votes(root: pathlib.Path, votes_csv: str | os.PathLike | None) -> pathlib.Path | None:
  if votes_csv is not None:
    if not pathlib.Path(votes_csv).is_file():
      raise FileNotFoundError(f"CREMA-D votes file {str(votes_csv)!r} not found")
    return pathlib.Path(votes_csv)
  found = folder.files_under(root, (".csv",))
  return next((p for p in found if p.name == VOTES_CSV), None)


def _clip_spec(name: str, files: list[pathlib.Path], votes: dict[str, dict[str, str]] | None
               ) -> ClipSpec:
  files = sorted(files, key=_rank)
  match = _NAME.match(name)
  actor, sentence, code, level = match.groups()
  extra = {"sentence": sentence, "level": level,
           "modality": "audio-visual" if files[0].suffix.lower() in VIDEO_EXTS else "audio"}
  if len(files) > 1:
    extra["other_files"] = ";".join(str(p) for p in files[1:])
  error = ""
  try:
    label = emotions.from_cremad(code)
  except emotions.LabelError as e:
    label, error = emotions.UNLABELLED, f"{files[0]}: {e}"
  if level not in LEVELS:
    error = error or f"{files[0]}: unknown CREMA-D level {level!r} (expected {', '.join(LEVELS)})"
  face_label = voice_label = emotions.UNLABELLED
  if votes is not None:
    clip_votes = votes.get(name)
    if clip_votes is None:
      extra["votes"] = "missing"
    else:
      extra.update(clip_votes)
      voice_label, face_label = _vote(clip_votes["voice_vote"]), _vote(clip_votes["face_vote"])
  return ClipSpec(
      clip_id=name, corpus="cremad", path=str(files[0]), speaker_id=actor, label=label,
      label_name=code, label_source="filename", face_label=face_label, voice_label=voice_label,
      error=error, extra=tuple(extra.items()))


def read_cremad(
    root: str | os.PathLike,
    votes_csv: str | os.PathLike | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    test_speakers: Iterable[str] | None = None,
    validation_speakers: Iterable[str] | None = None,
) -> list[ClipSpec]:
  """One ClipSpec per CREMA-D clip name under `root` (and one per unparsable media file name)."""
  root = folder.require_dir(root, "cremad")
  votes_path = _find_votes(root, votes_csv)
  votes = read_votes(votes_path) if votes_path else None
  by_name: dict[str, list[pathlib.Path]] = collections.defaultdict(list)
  specs = []
  for path in folder.files_under(root, folder.MEDIA_EXTS):
    if _NAME.match(path.stem):
      by_name[path.stem].append(path)
    else:
      specs.append(ClipSpec(
          clip_id=folder.clip_id_of(path.relative_to(root)), corpus="cremad", path=None,
          error=f"{path}: not a CREMA-D file name (expected ACTOR_SENTENCE_EMOTION_LEVEL)"))
  specs.extend(_clip_spec(name, files, votes) for name, files in sorted(by_name.items()))
  return splits.assign_splits(specs, fractions, seed, test_speakers, validation_speakers)

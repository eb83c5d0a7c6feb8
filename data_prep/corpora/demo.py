"""The synthetic demo corpus (`data_prep/synthetic.py`): MELD's layout plus `ground_truth.jsonl`.

The MELD reader reads the CSVs and media, so splits are the generator's (which keeps speaker
identities apart). Each clip's ground-truth record adds what MELD lacks: the face's and the
voice's own emotion (`face_emotion`, `voice_emotion` -> `face_label`, `voice_label`) and the
speaker's identity (`speaker_identity` -> `speaker_id`). Records match rows by the MELD media
folder and file name of their `path` (`.../train_splits/dia0_utt0.mp4`), so the corpus folder can
move after generation. A row with no record is an error: the clip's truth is unknown.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib

from data_prep.corpora import meld
from data_prep.corpora.base import ClipSpec
from kd_mh import emotions

GROUND_TRUTH = "ground_truth.jsonl"
KEY_FIELD = "path"  # the record's media file; its last two parts are the key
REQUIRED_FIELDS: tuple[str, ...] = (KEY_FIELD, "face_emotion", "voice_emotion", "speaker_identity")


def clip_key(*parts: str) -> str:
  """The key a ground-truth record and a MELD row share: `<media folder>/<file name>`."""
  return "/".join(parts[-2:])


def read_ground_truth(path: pathlib.Path) -> dict[str, dict]:
  """ground_truth.jsonl -> {clip key: record}; a line that is not a usable record raises."""
  records = {}
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{path}: line {line_number}: not JSON ({e})") from None
      if (not isinstance(record, dict) or any(f not in record for f in REQUIRED_FIELDS)
          or not isinstance(record[KEY_FIELD], str)):
        raise ValueError(f"{path}: line {line_number}: not a ground-truth record (it needs "
                         f"{', '.join(REQUIRED_FIELDS)})")
      parts = pathlib.PurePath(record[KEY_FIELD]).parts
      records[clip_key(*parts[-2:])] = record
  return records


def _with_truth(spec: ClipSpec, record: dict | None) -> ClipSpec:
  if spec.error:
    return spec
  if record is None:
    return dataclasses.replace(spec, error=f"{spec.path}: no record in {GROUND_TRUTH}")
  try:
    face, voice = (emotions.from_name(str(record["face_emotion"])),
                   emotions.from_name(str(record["voice_emotion"])))
  except emotions.LabelError as e:
    return dataclasses.replace(spec, error=f"{spec.path}: {GROUND_TRUTH}: {e}")
  return dataclasses.replace(
      spec, speaker_id=str(record["speaker_identity"]), face_label=face, voice_label=voice,
      label_source="generator",
      extra=spec.extra + (("face_emotion", record["face_emotion"]),
                          ("voice_emotion", record["voice_emotion"])))


def read_demo(root: str | os.PathLike) -> list[ClipSpec]:
  """One ClipSpec per row of the demo corpus's MELD CSVs, with the generator's ground truth."""
  specs = meld.read_meld(root, corpus="demo")
  truth_path = pathlib.Path(root) / GROUND_TRUTH
  if not truth_path.is_file():
    raise FileNotFoundError(f"{root}: no {GROUND_TRUTH}; is this a demo corpus?")
  truth = read_ground_truth(truth_path)
  out, used = [], set()
  for spec in specs:
    record = None
    if spec.path:
      key = clip_key(*pathlib.Path(spec.path).parts)
      used.add(key)
      record = truth.get(key)
    out.append(_with_truth(spec, record))
  unused = len(set(truth) - used)
  if unused:
    logging.warning("%s: %d records match no CSV row", truth_path, unused)
  return out

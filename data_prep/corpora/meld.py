"""MELD (Friends TV dialogues): one clip per row of `{train,dev,test}_sent_emo.csv`.

The row `Dialogue_ID=D, Utterance_ID=U` of a split is the file `dia{D}_utt{U}.mp4` in that split's
media folder (`MEDIA_FOLDERS`). Dialogue ids restart in every split, so clip ids carry the CSV's
split name: `train/dia0_utt0`, `dev/dia0_utt0`, `test/dia0_utt0`.

MELD's official splits are kept (train -> train, dev -> validation, test -> test). They are NOT
speaker-independent: the six main characters speak in all three, so a MELD test score measures
new utterances of known speakers, not unseen speakers.

The CSVs are UTF-8 (curly quotes, CRLF, possibly a BOM) with times `H:MM:SS,mmm`; a few rows
have two fraction digits (`00:05:11,82`), read as a decimal fraction (0.82 s). Utterance ids have
gaps; that is not an error. A row whose EndTime is not after its StartTime, whose ids or emotion
cannot be read, or whose media file is missing still yields a ClipSpec, with the reason in `error`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re

from data_prep.corpora import folder
from data_prep.corpora.base import ClipSpec
from kd_mh import emotions


@dataclasses.dataclass(frozen=True)
class MeldSplit:
  name: str  # the CSV's split name, also the clip id prefix
  csv_name: str
  media_folder: str
  split: str  # train | validation | test


MELD_SPLITS: tuple[MeldSplit, ...] = (
    MeldSplit("train", "train_sent_emo.csv", "train_splits", "train"),
    MeldSplit("dev", "dev_sent_emo.csv", "dev_splits_complete", "validation"),
    MeldSplit("test", "test_sent_emo.csv", "output_repeated_splits_test", "test"),
)
COLUMNS: tuple[str, ...] = ("Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
                            "StartTime", "EndTime")

_TIME = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})$")


def parse_time(text: str) -> float:
  """`H:MM:SS,mmm` -> seconds; the digits after the comma are a decimal fraction."""
  match = _TIME.match(text.strip())
  if not match:
    raise ValueError(f"time {text!r} is not H:MM:SS,mmm")
  hours, minutes, seconds, fraction = match.groups()
  return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + float("0." + fraction)


def media_name(dialogue: int, utterance: int) -> str:
  return f"dia{dialogue}_utt{utterance}.mp4"


def _id(row: dict, column: str) -> int:
  value = row[column].strip()
  if not value.isdigit():
    raise ValueError(f"{column} {value!r} is not a non-negative integer")
  return int(value)


def _row_spec(root: pathlib.Path, split: MeldSplit, csv_path: pathlib.Path, line: int, row: dict,
              error: str, corpus: str) -> ClipSpec:
  """The ClipSpec of one CSV row; `error` is the row's reading problem, if any."""
  clip_id, path, label, extra = f"{split.name}/line{line}", None, emotions.UNLABELLED, {}
  if not error:
    try:
      name = media_name(_id(row, "Dialogue_ID"), _id(row, "Utterance_ID"))
      clip_id = f"{split.name}/{name.removesuffix('.mp4')}"
      extra = {"sentiment": row["Sentiment"].strip(), "start_time": row["StartTime"].strip(),
               "end_time": row["EndTime"].strip()}
      media = root / split.media_folder / name
      path = str(media) if media.is_file() else None
      label = emotions.from_meld(row["Emotion"])
      if parse_time(row["EndTime"]) <= parse_time(row["StartTime"]):
        raise ValueError(f"EndTime {extra['end_time']} is not after StartTime "
                         f"{extra['start_time']}")
      if path is None:
        raise ValueError(f"media file not found: {media}")
    except ValueError as e:  # emotions.LabelError is a ValueError too
      error = str(e)
  return ClipSpec(
      clip_id=clip_id, corpus=corpus, path=path, split=split.split,
      speaker_id=(row.get("Speaker") or "").strip(), label=label,
      label_name=(row.get("Emotion") or "").strip().lower(), label_source="csv",
      error=f"{csv_path}: line {line}: {error}" if error else "", extra=tuple(extra.items()))


def read_meld(root: str | os.PathLike, corpus: str = "meld") -> list[ClipSpec]:
  """One ClipSpec per row of every split CSV found in `root` (at least one must be there).

  `corpus` names the ClipSpecs' corpus, for layouts that reuse MELD's (the demo corpus).
  """
  root = folder.require_dir(root, corpus)
  present = [s for s in MELD_SPLITS if (root / s.csv_name).is_file()]
  if not present:
    raise FileNotFoundError(f"{root}: no MELD annotation CSV (expected "
                            f"{', '.join(s.csv_name for s in MELD_SPLITS)})")
  for split in MELD_SPLITS:
    if split not in present:
      logging.warning("%s: %s not found; the %s split is empty", root, split.csv_name, split.split)
  specs = []
  for split in present:
    csv_path = root / split.csv_name
    for line, row, error in folder.read_csv_rows(csv_path, COLUMNS):
      specs.append(_row_spec(root, split, csv_path, line, row, error, corpus))
  return specs

"""RAVDESS: `MM-VV-EE-II-SS-RR-AA.(wav|flac|mp4)` files under `Actor_XX` folders.

Fields: modality (01 audio-visual, 02 video-only, 03 audio-only), vocal channel (01 speech,
02 song), emotion (01-08), intensity (01 normal, 02 strong), statement, repetition, actor (odd =
male). The label maps through `emotions.from_ravdess` (the `calm` policy decides calm), and
`label_name` keeps the native 8-class name so 8-class results stay possible.

Speaker id: the `Actor_XX` folder is trusted; the file name's actor field is used only for a file
that sits in no `Actor_XX` folder. A disagreement is logged as a warning. The folder wins because
the known case (`Actor_05/03-01-05-01-01-01-02`) holds the same samples as
`Actor_05/03-01-05-02-02-01-05`: it is actor 05's recording under a wrong name, and trusting the
name would put a copy of actor 05's voice into actor 02's split. Clip ids are
`Actor_XX/<file stem>` with XX that speaker, so the misnamed file does not collide with actor 02's.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

from data_prep.corpora import folder
from data_prep.corpora import splits
from data_prep.corpora.base import ClipSpec
from kd_mh import emotions

MODALITIES = {"01": "audio-visual", "02": "video-only", "03": "audio-only"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}

_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_ACTOR_FOLDER = re.compile(r"^Actor_(\d{1,2})$", re.IGNORECASE)


def _folder_actor(relative: pathlib.Path) -> str:
  """The actor of the nearest enclosing `Actor_XX` folder, two digits; "" when there is none."""
  for part in reversed(relative.parent.parts):
    match = _ACTOR_FOLDER.match(part)
    if match:
      return f"{int(match.group(1)):02d}"
  return ""


def _parse(stem: str, calm: str) -> tuple[dict[str, str], int, str]:
  """(fields, label, error) of a RAVDESS file stem."""
  match = _NAME.match(stem)
  if not match:
    return {}, emotions.UNLABELLED, "not a RAVDESS file name (expected MM-VV-EE-II-SS-RR-AA)"
  modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
  for what, table, code in (("modality", MODALITIES, modality),
                            ("vocal channel", VOCAL_CHANNELS, channel),
                            ("intensity", INTENSITIES, intensity)):
    if code not in table:
      return {}, emotions.UNLABELLED, f"unknown RAVDESS {what} {code!r}"
  fields = {"modality": MODALITIES[modality], "vocal_channel": VOCAL_CHANNELS[channel],
            "emotion": emotion, "intensity": INTENSITIES[intensity], "statement": statement,
            "repetition": repetition, "actor": actor}
  if not 1 <= int(actor) <= 24:
    return fields, emotions.UNLABELLED, f"RAVDESS actor {actor!r} is outside 01-24"
  try:
    return fields, emotions.from_ravdess(emotion, calm=calm), ""
  except emotions.LabelError as e:
    return fields, emotions.UNLABELLED, str(e)


def _clip_spec(root: pathlib.Path, path: pathlib.Path, calm: str) -> ClipSpec:
  relative = path.relative_to(root)
  fields, label, error = _parse(path.stem, calm)
  speaker = _folder_actor(relative) or fields.get("actor", "")
  if fields and speaker != fields["actor"]:
    logging.warning("%s: the file name says actor %s but it is in Actor_%s; using actor %s",
                    path, fields["actor"], speaker, speaker)
  clip_id = (f"Actor_{speaker}/{folder.clip_id_of(path.name)}" if speaker
             else folder.clip_id_of(relative))
  if error:
    return ClipSpec(clip_id=clip_id, corpus="ravdess", path=None, speaker_id=speaker,
                    error=f"{path}: {error}")
  extra = {key: fields[key] for key in ("modality", "vocal_channel", "intensity", "statement",
                                        "repetition")}
  if speaker != fields["actor"]:
    extra["filename_actor"] = fields["actor"]
  return ClipSpec(
      clip_id=clip_id, corpus="ravdess", path=str(path), speaker_id=speaker, label=label,
      label_name=emotions.RAVDESS_NATIVE[fields["emotion"]], label_source="filename",
      extra=tuple(extra.items()))


def read_ravdess(
    root: str | os.PathLike,
    calm: str = "neutral",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    test_speakers: Iterable[str] | None = None,
    validation_speakers: Iterable[str] | None = None,
) -> list[ClipSpec]:
  """One ClipSpec per media file under `root`; `calm` is the calm policy of `from_ravdess`."""
  root = folder.require_dir(root, "ravdess")
  emotions.from_ravdess("02", calm=calm)  # a bad policy fails here, not once per file
  specs = [_clip_spec(root, path, calm) for path in folder.files_under(root, folder.MEDIA_EXTS)]
  return splits.assign_splits(specs, fractions, seed, test_speakers, validation_speakers)

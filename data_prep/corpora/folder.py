"""A folder of the user's own media, labelled by `labels.csv` or not at all.

With `ROOT/labels.csv` (columns `path,label[,speaker]`, paths relative to ROOT) every row is one
clip; labels go through `emotions.from_name`, so synonyms ("joy", "anger") and the contempt /
boredom / calm policies apply, and an empty label leaves the clip unlabelled. Files under ROOT that
the CSV does not list are not part of the corpus. Without a labels.csv every media file under ROOT
is an unlabelled clip.

Splits are speaker-independent where speakers are given and by item otherwise (`splits.py`).

This module also owns the file walking and CSV reading that the other readers share.
"""

from __future__ import annotations

import csv
import logging
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

from data_prep.corpora import splits
from data_prep.corpora.base import ClipSpec
from data_prep.media import AUDIO_EXTS, VIDEO_EXTS
from kd_mh import emotions

MEDIA_EXTS: tuple[str, ...] = VIDEO_EXTS + AUDIO_EXTS
LABELS_CSV = "labels.csv"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# What errors="surrogateescape" makes of bytes that are not UTF-8.
_UNDECODED = re.compile("[\udc80-\udcff]")


def require_dir(root: str | os.PathLike, corpus: str) -> pathlib.Path:
  """The corpus root as a Path; a clear error when it is not a folder."""
  path = pathlib.Path(root)
  if not path.is_dir():
    raise FileNotFoundError(f"{corpus} corpus root {str(path)!r} is not a folder")
  return path


def files_under(root: pathlib.Path, extensions: Iterable[str]) -> list[pathlib.Path]:
  """Files under `root` whose extension (any case) is in `extensions`, in sorted order.

  Hidden files and folders (a leading dot, e.g. macOS `._x.wav` resource forks) are not inputs;
  linked folders are followed (corpora are often assembled from links).
  """
  wanted = {e.lower() for e in extensions}
  found = []
  seen = set()
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    stat = os.stat(dirpath)
    if (stat.st_dev, stat.st_ino) in seen:  # a link loop: this folder was walked already
      dirnames[:] = []
      continue
    seen.add((stat.st_dev, stat.st_ino))
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    found.extend(pathlib.Path(dirpath, f) for f in filenames
                 if not f.startswith(".") and pathlib.Path(f).suffix.lower() in wanted)
  return sorted(found)


def clip_id_of(relative: str | os.PathLike) -> str:
  """A safe clip id from a relative path: its extension dropped, odd characters made `_`.

  The build writes files named after clip ids, so each `/`-separated part is limited to
  letters, digits, `.`, `_` and `-` and starts with a letter or digit.
  """
  path = pathlib.PurePath(relative)
  parts = list(path.with_suffix("").parts if path.suffix else path.parts)
  safe = []
  for part in parts:
    part = _UNSAFE.sub("_", part)
    safe.append(part if part[:1].isalnum() else "x" + part)
  return "/".join(safe)


def check_policies(policies: dict[str, str]) -> None:
  """Fails fast on a bad label policy instead of flagging every row with the same error."""
  for extra_class in policies:
    emotions.from_name(extra_class, **policies)


def _row_error(row: dict, names: Sequence[str]) -> str:
  """Why a csv.DictReader row is unusable: wrong field count or bytes that are not UTF-8."""
  if None in row or any(row[n] is None for n in names):
    count = sum(row[n] is not None for n in names) + len(row.get(None) or [])
    return f"row has {count} fields, the header has {len(names)}"
  if any(_UNDECODED.search(value) for value in row.values()):
    return "row is not valid UTF-8"
  return ""


def read_csv_rows(path: pathlib.Path, required: Sequence[str]) -> list[tuple[int, dict, str]]:
  """(line number, row, error) for every data row of a UTF-8 CSV (BOM and CRLF allowed).

  A row that cannot be used is kept with its reason, so the caller can report it; a file without
  the `required` columns, or one the csv module cannot split, raises with the file named.
  """
  # surrogateescape keeps a bad byte local to its row instead of failing the whole file.
  with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
    reader = csv.DictReader(f)
    names = [n.strip() for n in (reader.fieldnames or [])]
    missing = [c for c in required if c not in names]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (header: {names})")
    reader.fieldnames = names
    rows = []
    try:
      for row in reader:
        rows.append((reader.line_num, row, _row_error(row, names)))
    except csv.Error as e:
      raise ValueError(f"{path}: line {reader.line_num}: {e}") from None
  return rows


def _locate(root: pathlib.Path, text: str, fallback_id: str) -> tuple[str, str | None, str]:
  """(clip id, path, error) of a labels.csv `path` field."""
  relative = pathlib.PurePath(text)
  if not text:
    return fallback_id, None, "empty path"
  if relative.is_absolute() or ".." in relative.parts:
    return fallback_id, None, f"path {text!r} must be relative to the corpus root, inside it"
  if relative.suffix.lower() not in MEDIA_EXTS:
    return fallback_id, None, f"{text!r} is not a media file (expected {' '.join(MEDIA_EXTS)})"
  try:
    found = (root / relative).is_file()
  except OSError as e:  # a name over the file system's limit: this row's problem, not the CSV's
    return fallback_id, None, f"path {text[:200]!r}: {e.strerror}"
  if not found:
    return clip_id_of(relative), None, f"media file not found: {root / relative}"
  return clip_id_of(relative), str(root / relative), ""


def _labels_csv_specs(root: pathlib.Path, policies: dict[str, str]) -> list[ClipSpec]:
  specs = []
  csv_path = root / LABELS_CSV
  for line, row, error in read_csv_rows(csv_path, ("path", "label")):
    clip_id, path, label = f"{LABELS_CSV}/line{line}", None, emotions.UNLABELLED
    if error:  # none of an unusable row's fields (bytes that are not text) may reach the split
      row = {}
    label_name = (row.get("label") or "").strip()
    if not error:
      clip_id, path, error = _locate(root, (row.get("path") or "").strip(), clip_id)
    if not error and label_name:
      try:
        label = emotions.from_name(label_name, **policies)
      except emotions.LabelError as e:
        error = str(e)
    specs.append(ClipSpec(
        clip_id=clip_id, corpus="folder", path=path, speaker_id=(row.get("speaker") or "").strip(),
        label=label, label_name=label_name, label_source="csv" if label_name else "",
        error=f"{csv_path}: line {line}: {error}" if error else ""))
  listed = {s.path for s in specs if s.path}
  unlisted = sum(str(p) not in listed for p in files_under(root, MEDIA_EXTS))
  if unlisted:
    logging.info("%s: %d media files under %s are not listed and not used", csv_path, unlisted,
                 root)
  return specs


def read_folder(
    root: str | os.PathLike,
    contempt: str = "drop",
    boredom: str = "drop",
    calm: str = "neutral",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    test_speakers: Iterable[str] | None = None,
    validation_speakers: Iterable[str] | None = None,
) -> list[ClipSpec]:
  """One ClipSpec per labels.csv row, or per media file under `root` when there is no CSV."""
  root = require_dir(root, "folder")
  policies = {"contempt": contempt, "boredom": boredom, "calm": calm}
  check_policies(policies)
  if (root / LABELS_CSV).is_file():
    specs = _labels_csv_specs(root, policies)
  else:
    specs = [ClipSpec(clip_id=clip_id_of(p.relative_to(root)), corpus="folder", path=str(p))
             for p in files_under(root, MEDIA_EXTS)]
  return splits.assign_splits(specs, fractions, seed, test_speakers, validation_speakers)

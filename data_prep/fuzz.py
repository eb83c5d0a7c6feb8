"""Bad-input cases made from real clips, and the checks a corpus build must pass on them.

`make_cases(root, data_dir)` writes a folder corpus (ROOT/labels.csv and ROOT/media/) that mixes
unmodified real clips (CREMA-D video and audio, RAVDESS audio, an MP4 re-encoded from CREMA-D) with
broken and unusual copies of them: cut at many offsets, bit-flipped in the header and the payload,
empty, random bytes behind a media extension, WAVs at odd sample rates, stereo, 8-bit and float,
headers that declare absurd sizes or durations, preallocated downloads (the real start of a file,
then gigabytes of sparse zeros, which keep a demuxer busy for minutes), and labels.csv rows that
are wrong in every way a hand-edited CSV can be. Further corpora under ROOT/csv_files/ each have a
labels.csv that is malformed as a whole. Everything is seeded: the same seed writes the same bytes.

`run(work, data_dir)` feeds them through the real build and checks every case against its expected
outcome; `check_output` holds the invariants of any finished build directory (also used after
killed builds).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import shutil
import struct
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from data_prep import build
from data_prep import corpora
from data_prep import media
from data_prep.corpora import folder

# Outcomes a case may expect.
OK, SKIPPED, ANY = "ok", "skipped", "any"
# ... and a whole labels.csv: refused by the reader (an error naming it) or listed row by row.
REFUSED, ROWS = "refused", "rows"

_SPARSE_BYTES = 64 << 30  # a preallocated download: a demuxer reads zeros for many minutes
_HUGE_FIELD = 100_000  # characters: under the csv module's 131,072-character field limit
_CSV_HEADER = ("path", "label", "speaker")


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad (or unusual) input and what the build must make of it."""
  kind: str  # the family: "truncated", "bit flip (header)", "csv row", ...
  detail: str  # what exactly, e.g. "at 1234 of 265922 bytes"
  expect: str  # OK | SKIPPED | ANY for a clip; REFUSED | ROWS | ANY for a whole labels.csv
  file: str  # the file the case is about, relative to the corpus root
  reason: str = ""  # a fragment the skip reason must contain ("" for any reason)


@dataclasses.dataclass(frozen=True)
class Outcome:
  case: Case
  status: str  # ok | skipped | refused (a whole labels.csv the reader would not list)
  reason: str
  problem: str  # "" when the outcome meets the case's expectation


# A recipe writes its case's files under the corpus root and returns the labels.csv row: cells, or
# raw bytes for rows that are not even text. Whole-file CSV recipes write their own corpus.
_Row = tuple[str, ...] | bytes
_Recipe = Callable[[pathlib.Path], _Row]


@dataclasses.dataclass(frozen=True)
class _Sources:
  """The real clips the cases are made from."""
  flv: list[pathlib.Path]  # CREMA-D: VP6 + MP3 in FLV
  wav: list[pathlib.Path]  # CREMA-D: PCM16 16 kHz
  mp3: list[pathlib.Path]  # CREMA-D: MP3 44.1 kHz
  wav48: list[pathlib.Path]  # RAVDESS Actor_01: PCM16 WAV as released
  flac: list[pathlib.Path]  # RAVDESS: FLAC 16 kHz

  @classmethod
  def find(cls, data_dir: pathlib.Path) -> "_Sources":
    found = cls(flv=sorted(data_dir.glob("cremad/video/*.flv")),
                wav=sorted(data_dir.glob("cremad/audio/1001_*.wav")),
                mp3=sorted(data_dir.glob("cremad/audio/*.mp3")),
                wav48=sorted(data_dir.glob("ravdess/Actor_01/*.wav")),
                flac=sorted(data_dir.glob("ravdess/Actor_03/*.flac")))
    empty = [f.name for f in dataclasses.fields(found) if len(getattr(found, f.name)) < 2]
    if empty:
      raise FileNotFoundError(f"{data_dir}: too few real clips to make fuzz cases from "
                              f"({', '.join(empty)}); expected the shared CREMA-D and RAVDESS data")
    return found


def _mp4_from(flv: pathlib.Path, path: pathlib.Path) -> None:
  """A CREMA-D clip re-encoded as H.264 + AAC MP4 (every frame, its audio at 16 kHz)."""
  rate = media.probe(flv).fps
  frames = (f.rgb for f in media.iter_frames(flv, fps=1000.0))  # above the source rate: all
  media.write_video(path, frames, fps=rate, audio=media.load_audio(flv, 16000))


def _new_file(root: pathlib.Path, name: str) -> pathlib.Path:
  (root / name).parent.mkdir(parents=True, exist_ok=True)
  return root / name


def _copy(source: pathlib.Path, name: str,
          transform: Callable[[bytes], bytes] = lambda b: b) -> _Recipe:
  def write(root: pathlib.Path) -> _Row:
    _new_file(root, name).write_bytes(transform(source.read_bytes()))
    return (name, "", "")
  return write


def _flip(rng: np.random.Generator, lo_frac: float, hi_frac: float, n_bits: int):
  """Flips `n_bits` random bits in [lo_frac, hi_frac) of the file (positions drawn now)."""
  draws = rng.random((n_bits, 2))

  def transform(data: bytes) -> bytes:
    out = bytearray(data)
    lo, hi = int(lo_frac * len(out)), max(int(hi_frac * len(out)), int(lo_frac * len(out)) + 1)
    for where, bit in draws:
      out[lo + int(where * (hi - lo))] ^= 1 << int(bit * 8)
    return bytes(out)
  return transform


def _patch(marker: bytes, offset: int, fmt: str, value, after: bytes = b""
           ) -> Callable[[bytes], bytes]:
  """Overwrites the field `offset` bytes into the first `marker` (a box or chunk name) that
  follows the first `after`."""
  def transform(data: bytes) -> bytes:
    at = data.index(marker, data.index(after)) + offset
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]
  return transform


def _bytes(name: str, data: bytes) -> _Recipe:
  def write(root: pathlib.Path) -> _Row:
    _new_file(root, name).write_bytes(data)
    return (name, "", "")
  return write


def _sparse(source: pathlib.Path, name: str, head: int) -> _Recipe:
  """The first `head` bytes of a real file, then zeros up to 64 GB: a preallocated download."""
  def write(root: pathlib.Path) -> _Row:
    with open(_new_file(root, name), "wb") as f:
      f.write(source.read_bytes()[:head])
      f.truncate(_SPARSE_BYTES)  # a hole: no disk blocks
    return (name, "", "")
  return write


def _audio(source: pathlib.Path, name: str, rate: int, channels: int, subtype: str) -> _Recipe:
  """A real recording resampled to `rate`, as `channels` channels of `subtype` samples."""
  def write(root: pathlib.Path) -> _Row:
    import soundfile  # pylint: disable=import-outside-toplevel
    mono = media.load_audio(source, rate)
    # Channels that differ (delayed, quieter), as a real stereo pair would.
    data = np.stack([np.roll(mono, 7 * c) * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    soundfile.write(_new_file(root, name), data, rate, subtype=subtype)
    return (name, "", "")
  return write


def _csv_row(name: str, cells: Sequence[str],
             media_from: Optional[pathlib.Path] = None) -> _Recipe:
  """A labels.csv row; with `media_from`, the file its path names is a copy of that real clip."""
  def write(root: pathlib.Path) -> _Row:
    if media_from is not None:
      shutil.copy(media_from, _new_file(root, name))
    return tuple(cells)
  return write


def _folder_row(root: pathlib.Path) -> _Row:
  (root / "rows" / "folder.wav").mkdir(parents=True)
  return ("rows/folder.wav", "happy", "")


def _raw_row(data: bytes) -> _Recipe:
  return lambda root: data


def _media_cases(src: _Sources, mp4: pathlib.Path, rng: np.random.Generator
                 ) -> list[tuple[Case, _Recipe]]:
  cases: list[tuple[Case, _Recipe]] = []

  def add(kind, detail, expect, name, recipe, reason=""):
    cases.append((Case(kind, detail, expect, name, reason), recipe))

  good = {"flv": src.flv[0], "mp4": mp4, "wav": src.wav[0], "mp3": src.mp3[0],
          "wav48": src.wav48[0], "flac": src.flac[0]}
  for key, source in [*good.items(), ("flv2", src.flv[1]), ("wav2", src.wav[1])]:
    name = f"media/good/{key}{source.suffix}"
    add("good", source.name, OK, name, _copy(source, name))

  # Cut short: a few bytes (nothing usable can survive) and anywhere in the file.
  for key, source in good.items():
    size = source.stat().st_size
    cuts = [(n, SKIPPED) for n in (1, 12)] + [(100, ANY)]
    cuts += [(int(f * size), ANY) for f in np.sort(rng.uniform(0.02, 0.98, 5))]
    for n, expect in cuts:
      name = f"media/truncated/{key}_{n}{source.suffix}"
      add("truncated", f"{source.name} cut at {n} of {size} bytes", expect, name,
          _copy(source, name, lambda b, n=n: b[:n]))

  # Bit flips: in the header region (the first 2%, at least the first bytes) and in the payload.
  for key, source in good.items():
    for i, bits in enumerate((1, 2, 4, 8, 32)):
      name = f"media/flip_header/{key}_{i}{source.suffix}"
      add("bit flip (header)", f"{source.name}: {bits} bits in the first 2%", ANY, name,
          _copy(source, name, _flip(rng, 0.0, 0.02, bits)))
    for i, bits in enumerate((1, 4, 16, 64, 256)):
      name = f"media/flip_payload/{key}_{i}{source.suffix}"
      add("bit flip (payload)", f"{source.name}: {bits} bits after the first 2%", ANY, name,
          _copy(source, name, _flip(rng, 0.02, 1.0, bits)))

  for ext in media.VIDEO_EXTS + media.AUDIO_EXTS:
    name = f"media/empty/empty_{ext[1:]}{ext}"
    add("zero-length", ext, SKIPPED, name, _bytes(name, b""), "empty file")
  for ext in media.VIDEO_EXTS + media.AUDIO_EXTS:
    n = int(rng.integers(1, 200_000))
    noise = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    name = f"media/random/random_{ext[1:]}{ext}"
    add("random bytes", f"{n} bytes as {ext}", SKIPPED, name, _bytes(name, noise))

  # Valid but unusual audio: must all come out ok.
  for rate in (8000, 11025, 22050, 32000, 44100, 96000):
    name = f"media/audio_formats/rate_{rate}.wav"
    add("sample rate", f"{rate} Hz PCM16 mono", OK, name,
        _audio(src.wav[1], name, rate, 1, "PCM_16"))
  for rate, channels, subtype, ext in ((16000, 2, "PCM_16", "wav"), (44100, 2, "PCM_16", "wav"),
                                       (16000, 1, "PCM_U8", "wav"), (11025, 2, "PCM_U8", "wav"),
                                       (16000, 1, "FLOAT", "wav"), (48000, 1, "PCM_24", "wav"),
                                       (16000, 6, "PCM_16", "wav"), (44100, 2, "PCM_16", "flac"),
                                       (96000, 1, "PCM_24", "flac"), (8000, 1, "PCM_S8", "flac")):
    name = f"media/audio_formats/{subtype.lower()}_{channels}ch_{rate}_{ext}.{ext}"
    add("sample format", f"{subtype} {channels} channel(s) {rate} Hz {ext}", OK, name,
        _audio(src.wav[1], name, rate, channels, subtype))

  # Headers that declare absurd sizes. WAV: the RIFF and data sizes 4 bytes into their chunks;
  # in "fmt ": channels at 10, sample rate at 12, bits per sample at 22.
  wav = src.wav[2]
  for detail, expect, transform in (
      ("RIFF and data chunks claim 4 GB", ANY,
       lambda b: _patch(b"data", 4, "<I", 0xFFFFFFF0)(_patch(b"RIFF", 4, "<I", 0xFFFFFFFF)(b))),
      ("data chunk claims 0 bytes", ANY, _patch(b"data", 4, "<I", 0)),
      ("sample rate 0", SKIPPED, _patch(b"fmt ", 12, "<I", 0)),
      ("sample rate 4294967295", ANY, _patch(b"fmt ", 12, "<I", 0xFFFFFFFF)),
      ("0 channels", SKIPPED, _patch(b"fmt ", 10, "<H", 0)),
      ("65535 channels", ANY, _patch(b"fmt ", 10, "<H", 0xFFFF)),
      ("0 bits per sample", ANY, _patch(b"fmt ", 22, "<H", 0))):
    name = f"media/declared/wav_{len(cases)}.wav"
    add("absurd header", f"{wav.name}: {detail}", expect, name, _copy(wav, name, transform))
  # MP4: the avc1 sample entry's width / height at +28 / +30 (the "avc1" after "stsd", not the
  # brand in ftyp), tkhd's width / height at +80 / +84, the first stts entry's frame duration at
  # +16 (version 0 boxes).
  for detail, expect, transform, reason in (
      ("avc1 declares 65535x65535", ANY,
       lambda b: _patch(b"avc1", 30, ">H", 0xFFFF, b"stsd")(
           _patch(b"avc1", 28, ">H", 0xFFFF, b"stsd")(b)), ""),
      ("tkhd declares 32767x32767", ANY,
       lambda b: _patch(b"tkhd", 84, ">I", 0x7FFF0000)(_patch(b"tkhd", 80, ">I", 0x7FFF0000)(b)),
       ""),
      ("stts declares 2^31 ticks per frame", ANY, _patch(b"stts", 16, ">I", 0x7FFFFFFF), "")):
    name = f"media/declared/mp4_{len(cases)}.mp4"
    add("absurd header", f"{mp4.name}: {detail}", expect, name, _copy(mp4, name, transform),
        reason)
  # FLV onMetaData: AMF0 doubles after the property name and a type byte.
  for prop, value in ((b"width", 1e9), (b"height", -1.0), (b"duration", 1e12)):
    name = f"media/declared/flv_{prop.decode()}.flv"
    add("absurd header", f"{src.flv[2].name}: onMetaData {prop.decode()} = {value:g}", ANY, name,
        _copy(src.flv[2], name, _patch(prop, len(prop) + 1, ">d", value)))
  # The demuxers (MP3 resync, FLV tags, WAV chunks after "data") walk the zeros a few bytes at a
  # time: only the time limit ends these.
  for source in (src.mp3[1], src.flv[3], src.wav[3]):
    name = f"media/preallocated/{source.stem}_{source.suffix[1:]}{source.suffix}"
    head = source.stat().st_size * 3 // 4
    add("preallocated download", f"{source.name}: first {head} bytes, zeros to 64 GB", SKIPPED,
        name, _sparse(source, name, head), "timed out")

  # Names as long as the file system allows (255 bytes): the outputs add to them.
  for letter, source in (("v", src.flv[5]), ("a", src.wav[5])):
    name = f"media/long_names/{letter * (255 - len(source.suffix))}{source.suffix}"
    add("long file name", f"{source.name} as a 255-byte name", ANY, name, _copy(source, name))

  # A container behind another container's extension.
  for source, ext in ((src.flv[4], ".mp4"), (src.wav[4], ".mp3"), (src.mp3[2], ".wav"),
                      (mp4, ".mkv"), (src.flac[1], ".wav")):
    name = f"media/renamed/{source.stem}_{source.suffix[1:]}{ext}"
    add("wrong extension", f"{source.name} named {ext}", ANY, name, _copy(source, name))
  return cases


def _row_cases(src: _Sources, rng: np.random.Generator) -> list[tuple[Case, _Recipe]]:
  """labels.csv rows that are wrong (or odd but right) in themselves; each keeps its own record."""
  cases: list[tuple[Case, _Recipe]] = []
  clip = src.wav[5]

  def add(detail, expect, cells, own_file=True, reason=""):
    name = cells[0] if own_file else ""
    cases.append((Case("csv row", detail, expect, name or folder.LABELS_CSV, reason),
                  _csv_row(name, cells, clip if own_file else None)))

  for i, label in enumerate(("42", "3.5", "happy;sad", "xyzzy", "-1")):
    add(f"label {label!r}", SKIPPED, (f"rows/label_{i}.wav", label, ""), reason="label")
  for i, label in enumerate(("  ANGRY ", "joy", "", "contempt", "Neutral")):
    add(f"label {label!r}", OK, (f"rows/label_ok_{i}.wav", label, ""))
  add("absolute path", SKIPPED, (str(clip), "happy", ""), own_file=False)
  add("path leaving the root", SKIPPED, ("../outside.wav", "happy", ""), own_file=False)
  add("missing media file", SKIPPED, ("rows/missing.wav", "happy", ""), own_file=False,
      reason="not found")
  cases.append((Case("csv row", "path of a folder", SKIPPED, "rows/folder.wav"), _folder_row))
  add("not a media file", SKIPPED, ("rows/notes.txt", "happy", ""), own_file=False)
  add("empty path", SKIPPED, ("", "happy", ""), own_file=False)
  add("spaces and accents in the path", OK, ("rows/café olé 1.wav", "sad", "s1"))
  add("newline inside a quoted path", SKIPPED, ("rows/two\nlines.wav", "sad", ""), own_file=False)
  add("file name over 255 bytes", SKIPPED, ("rows/" + "a" * 300 + ".wav", "sad", ""),
      own_file=False)
  add("path of 100,000 characters", SKIPPED, ("rows/" + "b/" * (_HUGE_FIELD // 2) + "x.wav",
                                              "sad", ""), own_file=False)
  add("label of 100,000 characters", SKIPPED, ("rows/huge_label.wav", "h" * _HUGE_FIELD, ""))
  add("speaker of 100,000 characters", OK, ("rows/huge_speaker.wav", "happy", "s" * _HUGE_FIELD))
  add("five fields", SKIPPED, ("rows/five.wav", "happy", "s1", "extra", "more"), reason="fields")
  add("one field", SKIPPED, ("rows/one.wav",), reason="fields")
  # A good clip's file: good clips are in every sample of the cases (`_sample`).
  add("the same file twice", SKIPPED, ("media/good/wav.wav", "joy", ""), own_file=False,
      reason="duplicate")
  for detail, data in (
      ("Latin-1 bytes", "rows/latin1.wav,colère,s1\n".encode("latin-1")),
      ("NUL bytes", b"rows/nul\x00.wav,happy\x00,s1\n"),
      ("binary garbage", bytes(b for b in rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
                               if b not in b'"\r\n') + b"\n")):
    cases.append((Case("csv row", detail, SKIPPED, folder.LABELS_CSV), _raw_row(data)))
  return cases


def _csv_file_cases(src: _Sources, rng: np.random.Generator
                    ) -> list[tuple[Case, Callable[[pathlib.Path], None]]]:
  """Whole labels.csv files that are malformed: each is its own corpus with one real clip."""
  row = "clip.wav,happy,s1"
  garbage = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
  files = (
      ("missing columns (file,emotion)", REFUSED, b"file,emotion\nclip.wav,happy\n"),
      ("empty file", REFUSED, b""),
      ("header only", ROWS, b"path,label,speaker\n"),
      ("UTF-16 with a BOM", REFUSED, f"path,label,speaker\n{row}\n".encode("utf-16")),
      ("Latin-1 throughout", ROWS, "path,label,speaker\nclip.wav,colère,s1\n".encode("latin-1")),
      ("binary garbage", ANY, garbage),
      ("a field over the csv module's limit", REFUSED,
       f"path,label,speaker\n{row}\nclip.wav,{'x' * 200_000},s\n".encode()),
      ("an unclosed quote that swallows the rest", ANY,
       f'path,label,speaker\n"clip.wav,happy,s1\n{row}\n'.encode()),
      ("semicolon-separated", REFUSED, f"path;label;speaker\n{row.replace(',', ';')}\n".encode()),
      ("CR line ends only", ROWS, f"path,label,speaker\r{row}\r".encode()),
      ("BOM, CRLF, quoted fields", ROWS,
       '\ufeffpath,label,speaker\r\n"clip.wav","happy","s1"\r\n'.encode()),
      ("a repeated header column", ANY, f"path,label,label\n{row}\n".encode()),
      ("500 rows of the same clip", ROWS,
       ("path,label,speaker\n" + f"{row}\n" * 500).encode()),
  )
  cases = []
  for i, (detail, expect, data) in enumerate(files):
    def write(root: pathlib.Path, data=data) -> None:
      root.mkdir(parents=True)
      shutil.copy(src.wav[0], root / "clip.wav")
      (root / folder.LABELS_CSV).write_bytes(data)
    cases.append((Case("csv file", detail, expect, f"csv_files/{i:02d}/{folder.LABELS_CSV}"),
                  write))
  return cases


def _sample(cases: list, n: int, rng: np.random.Generator) -> list:
  """n of the cases (in their order): every good clip and one of each kind, then a seeded draw."""
  if n >= len(cases):
    return cases
  first, seen = [], set()
  for i, (case, _) in enumerate(cases):
    if case.kind == "good" or case.kind not in seen:
      first.append(i)
      seen.add(case.kind)
  taken = set(first)
  rest = [i for i in rng.permutation(len(cases)) if i not in taken]
  return [cases[i] for i in sorted(first + rest[:max(0, n - len(first))])]


def make_cases(root: str | os.PathLike, data_dir: str | os.PathLike,
               n_cases: Optional[int] = None, seed: int = 0) -> list[Case]:
  """Writes n_cases of the ~220 cases (all by default; at least every good clip and one case of
  each kind) under `root`, a new folder, and returns them.

  Media and row cases form the folder corpus `root` (labels.csv lists them in order); each
  whole-file CSV case is a corpus of its own at root/csv_files/NN.
  """
  root = pathlib.Path(root)
  root.mkdir(parents=True)
  src = _Sources.find(pathlib.Path(data_dir))
  rng = np.random.default_rng(seed)
  mp4 = root / "sources" / "cremad.mp4"
  mp4.parent.mkdir()
  _mp4_from(src.flv[5], mp4)
  in_corpus = _media_cases(src, mp4, rng) + _row_cases(src, rng)
  csv_files = _csv_file_cases(src, rng)
  chosen = _sample(in_corpus + csv_files, n_cases or len(in_corpus + csv_files), rng)
  lines = [",".join(_CSV_HEADER).encode() + b"\n"]
  for case, recipe in chosen:
    if case.kind == "csv file":
      recipe(root / pathlib.Path(case.file).parent)
      continue
    row = recipe(root)
    if isinstance(row, tuple):
      text = io.StringIO()
      csv.writer(text, lineterminator="\n").writerow(row)
      row = text.getvalue().encode()
    lines.append(row)
  (root / folder.LABELS_CSV).write_bytes(b"".join(lines))
  return [case for case, _ in chosen]


def check_output(out: str | os.PathLike, clip_ids: Sequence[str]) -> list[str]:
  """What is wrong with a finished build directory: [] when the manifest has exactly one whole
  line per clip, each ok clip has its record, and the shards hold each ok record exactly once."""
  out = pathlib.Path(out)
  problems = []
  lines: dict[str, dict[str, Any]] = {}
  raw = (out / "manifest.jsonl").read_bytes().decode("ascii", "replace").splitlines()
  for number, text in enumerate(raw, 1):
    try:
      line = json.loads(text)
    except json.JSONDecodeError:
      problems.append(f"manifest line {number} is not JSON: {text[:80]!r}")
      continue
    if line["clip_id"] in lines:
      problems.append(f"manifest: clip {line['clip_id']!r} has more than one line")
    lines[line["clip_id"]] = line
  missing = sorted(set(clip_ids) - set(lines))
  extra = sorted(set(lines) - set(clip_ids))
  if missing:
    problems.append(f"manifest: {len(missing)} clip(s) lost, e.g. {missing[:3]}")
  if extra:
    problems.append(f"manifest: {len(extra)} clip(s) not in the corpus, e.g. {extra[:3]}")
  ok = sorted(i for i, l in lines.items() if l["status"] == "ok")
  record_of = {}
  for clip_id in ok:
    path = out / "clips" / f"{clip_id}.pb"
    if not path.exists():
      problems.append(f"clip {clip_id!r} is ok in the manifest but has no record")
    else:
      record_of[path.read_bytes()] = clip_id
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  counts = {clip_id: 0 for clip_id in ok}
  for shard in sorted(out.glob("tfds/*/*/*.tfrecord-*")):
    for record in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator():
      clip_id = record_of.get(record)
      if clip_id is None:
        problems.append(f"{shard.name}: a record that is no ok clip's record")
      else:
        counts[clip_id] += 1
  wrong = {i: n for i, n in counts.items() if n != 1}
  if wrong:
    problems.append(f"shards: {len(wrong)} ok clip(s) not held exactly once, e.g. "
                    f"{sorted(wrong.items())[:3]}")
  return problems


def _judge(case: Case, status: str, reason: str, files: Sequence[str]) -> str:
  """'' when a clip's outcome meets its case, else what is wrong; the reason must name a file."""
  if case.expect not in (ANY, status):
    return f"expected {case.expect}, got {status} {reason!r}"[:300]
  if status != "skipped":
    return ""
  if not any(f in reason for f in files):
    return f"the reason names none of {files}: {reason[:200]!r}"
  if "crashed" in reason or "unexpected" in reason:
    return f"not handled as a bad input: {reason[:200]}"
  if case.reason and case.reason not in reason:
    return f"reason lacks {case.reason!r}: {reason[:200]!r}"
  if "timed out" in reason and case.reason != "timed out":
    return f"a clip that should not hang timed out: {reason[:200]}"
  return ""


def _run_csv_file(case: Case, root: pathlib.Path, out: pathlib.Path) -> Outcome:
  csv_path = root / case.file
  try:
    specs = corpora.read_corpus("folder", str(csv_path.parent))
  except (ValueError, OSError) as e:
    problem = "" if str(csv_path) in str(e) else f"the error does not name {csv_path}: {e}"
    if case.expect == ROWS:
      problem = f"expected its rows to be listed, the reader refused: {e}"[:300]
    return Outcome(case, "refused", str(e)[:300], problem)
  if case.expect == REFUSED:
    return Outcome(case, "rows", "", "expected the reader to refuse the file")
  # Its one media file is a good clip: built in this process (worker start-up costs more).
  summary = build.build(specs, out, workers=1, corpus="folder", progress=False)
  lines = build.read_manifest(out / "manifest.jsonl")
  problems = check_output(out, [s.clip_id for s in specs])
  for spec in specs:
    line = lines.get(spec.clip_id)
    files = [str(csv_path)] + ([spec.path] if spec.path else [])
    problem = line and _judge(dataclasses.replace(case, expect=ANY), line["status"],
                              line["reason"], files)
    if problem:
      problems.append(f"{spec.clip_id}: {problem}")
  return Outcome(case, "rows", f"{summary['ok']} ok, {summary['skipped']} skipped",
                 "; ".join(problems))


def run(work: str | os.PathLike, data_dir: str | os.PathLike, n_cases: Optional[int] = None,
        seed: int = 0, workers: int = 2, time_limit_s: float = 20.0) -> list[Outcome]:
  """Makes the cases in work/cases, builds them into work/out*, and judges each one.

  The preallocated downloads keep a decoder busy for far longer than `time_limit_s` (the build's
  per-clip limit), which must stop them.
  """
  work = pathlib.Path(work)
  root = work / "cases"
  cases = make_cases(root, data_dir, n_cases, seed)
  in_corpus = [c for c in cases if c.kind != "csv file"]
  specs = corpora.read_corpus("folder", str(root))
  if len(specs) != len(in_corpus):
    raise AssertionError(f"{root / folder.LABELS_CSV}: the reader gave {len(specs)} clips for "
                         f"{len(in_corpus)} rows")
  build.build(specs, work / "out", workers=workers, corpus="folder", progress=False,
              time_limit_s=time_limit_s)
  lines = build.read_manifest(work / "out" / "manifest.jsonl")
  outcomes = []
  whole = check_output(work / "out", [s.clip_id for s in specs])
  if whole:
    outcomes.append(Outcome(Case("build", "the corpus build's output", OK, "out"), "ok", "",
                            "; ".join(whole)))
  for case, spec in zip(in_corpus, specs):
    line = lines.get(spec.clip_id)
    if line is None:
      outcomes.append(Outcome(case, "missing", "", "no manifest line"))
      continue
    files = [str(root / folder.LABELS_CSV)] + ([spec.path] if spec.path else [])
    outcomes.append(Outcome(case, line["status"], line["reason"],
                            _judge(case, line["status"], line["reason"], files)))
  for i, case in enumerate(c for c in cases if c.kind == "csv file"):
    outcomes.append(_run_csv_file(case, root, work / f"out_csv{i:02d}"))
  return outcomes

"""A detection report (`kd_mh.detect.detect_video`) as files: report.json, PNG plots, report.html.

  paths = report.write(detect.detect_video(video, threshold), "out/clip")

report.html is self-contained (the PNGs are embedded as base64 data, no scripts, no outside
links): the verdict and its reason, the research-tool disclaimer, the parameters, four plots over
time (face emotions, voice emotions, valence/arousal of both, divergence against the threshold;
flagged segments shaded in each) and tables of the flagged segments and of every window. The same
plots are also written as PNG files next to it. Plots use matplotlib's object API (no pyplot
state), so reports can be written from any thread.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import pathlib
from typing import Any, Mapping, Optional

import matplotlib.figure
import numpy as np

from kd_mh import detect
from kd_mh import divergence
from kd_mh.emotions import EMOTIONS, NUM_CLASSES

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PLOTS = {  # file stem -> title
    "face_emotions": "Face emotions (teacher, calibrated)",
    "voice_emotions": "Voice emotions (student, calibrated)",
    "valence_arousal": "Valence and arousal of face and voice",
    "divergence": "Divergence per window against the threshold",
}
# One fixed colour per emotion (EMOTIONS order) across every plot.
COLOURS = ("#d62728", "#8c564b", "#9467bd", "#ffbf00", "#1f77b4", "#17becf", "#7f7f7f")
_FLAG_COLOUR = "#e45756"
_VERDICT_COLOURS = {detect.FLAGGED: "#b00020", detect.NOT_FLAGGED: "#1b7837",
                    detect.INSUFFICIENT: "#6b6b6b"}


def _series(report: Mapping[str, Any], key: str) -> np.ndarray:
  """[W, 7] per-window probabilities, NaN rows where a window has none."""
  rows = [w[key] if w[key] is not None else [np.nan] * NUM_CLASSES for w in report["windows"]]
  return np.asarray(rows, np.float64).reshape(-1, NUM_CLASSES)


def _centres(report: Mapping[str, Any]) -> np.ndarray:
  return np.asarray([(w["start_s"] + w["end_s"]) / 2 for w in report["windows"]], np.float64)


def _shade_segments(ax, report: Mapping[str, Any], label: bool = False) -> None:
  for i, segment in enumerate(report["segments"]):
    ax.axvspan(segment["start_s"], segment["end_s"], color=_FLAG_COLOUR, alpha=0.15, lw=0,
               label="flagged segment" if label and i == 0 else None)


def _finish(ax, report: Mapping[str, Any]) -> None:
  ax.set_xlim(0.0, max(report["duration_s"], 1e-3))
  ax.set_xlabel("time (s, window centres)")
  ax.grid(alpha=0.3)


def _valence_arousal(probs: np.ndarray) -> np.ndarray:
  out = np.full(probs.shape[:-1] + (2,), np.nan)
  rows = ~np.isnan(probs).any(axis=-1)
  if rows.any():
    out[rows] = divergence.valence_arousal(probs[rows])
  return out


def figures(report: Mapping[str, Any]) -> dict[str, matplotlib.figure.Figure]:
  """The plots of a report with windows, keyed as `PLOTS`; {} without windows."""
  if not report["windows"]:
    return {}
  t = _centres(report)
  usable = np.asarray([w["usable"] for w in report["windows"]], bool)
  out = {}
  for key, probs_key in (("face_emotions", "face_probs"), ("voice_emotions", "voice_probs")):
    fig = matplotlib.figure.Figure(figsize=(9, 3.2), layout="constrained")
    ax = fig.add_subplot()
    probs = _series(report, probs_key)
    _shade_segments(ax, report)
    for k, name in enumerate(EMOTIONS):
      ax.plot(t, probs[:, k], "-o", ms=3, lw=1.5, color=COLOURS[k], label=name)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("probability")
    ax.set_title(PLOTS[key])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    _finish(ax, report)
    out[key] = fig

  fig = matplotlib.figure.Figure(figsize=(9, 4.6), layout="constrained")
  axes = fig.subplots(2, 1, sharex=True)
  face_va = _valence_arousal(_series(report, "face_probs"))
  voice_va = _valence_arousal(_series(report, "voice_probs"))
  for i, (ax, name) in enumerate(zip(axes, ("valence", "arousal"))):
    _shade_segments(ax, report)
    ax.plot(t, face_va[:, i], "-o", ms=3, color="#1f77b4", label="face (teacher)")
    ax.plot(t, voice_va[:, i], "--s", ms=3, color="#ff7f0e", label="voice (student)")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_ylim(-1.0, 1.0)
    ax.set_ylabel(name)
    _finish(ax, report)
  axes[0].set_title(PLOTS["valence_arousal"])
  axes[0].legend(loc="upper right", fontsize=8, frameon=False)
  axes[0].set_xlabel("")
  out["valence_arousal"] = fig

  fig = matplotlib.figure.Figure(figsize=(9, 3.2), layout="constrained")
  ax = fig.add_subplot()
  values = np.asarray([np.nan if w["divergence"] is None else w["divergence"]
                       for w in report["windows"]], np.float64)
  _shade_segments(ax, report, label=True)
  ax.plot(t, values, "-", color="#444444", lw=1)
  ax.plot(t[usable], values[usable], "o", ms=4, color="#444444", label="usable window")
  if (~usable).any():
    ax.plot(t[~usable], values[~usable], "o", ms=4, mfc="none", color="#999999",
            label="unusable window (face or speech missing)")
  ax.axhline(report["threshold"], color=_FLAG_COLOUR, ls="--",
             label=f"threshold {report['threshold']:.3g}")
  ax.set_ylim(bottom=0.0)
  ax.set_ylabel(report["divergence"])
  ax.set_title(PLOTS["divergence"])
  ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
  _finish(ax, report)
  out["divergence"] = fig
  return out


def _png(fig: matplotlib.figure.Figure) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  return buffer.getvalue()


def _fmt(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def _e(value: Any) -> str:
  return html.escape(_fmt(value))


def _table(rows: list[tuple[str, Any]]) -> str:
  return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                             for k, v in rows) + "</table>"


def _top(probs: Optional[list[float]]) -> str:
  if probs is None:
    return "-"
  k = int(np.argmax(probs))
  return f"{EMOTIONS[k]} {probs[k]:.2f}"


def render_html(report: Mapping[str, Any], pngs: Mapping[str, bytes]) -> str:
  """report.html: one page, the plots inlined as base64 PNG data."""
  colour = _VERDICT_COLOURS.get(report["verdict"], "#000000")
  parameters = [("video", report["video"]), ("duration (s)", report["duration_s"]),
                ("divergence", report["divergence"]), ("threshold", report["threshold"]),
                ("threshold rule", report.get("rule")),
                ("window / hop (s)", f"{report['window_s']:g} / {report['hop_s']:g}")]
  parameters += [(f"models: {k}", v) for k, v in report["models"].items()]
  parameters += [(f"rule: {k}", v) for k, v in report["parameters"].items()]
  if report.get("eval_workdir"):
    parameters.append(("evaluation workdir", report["eval_workdir"]))
  evidence = list(report["evidence"].items())
  fraction = "-" if report["flagged_fraction"] is None else f"{report['flagged_fraction']:.1%}"
  plots = "".join(
      f'<figure><img alt="{html.escape(PLOTS[k])}" src="data:image/png;base64,'
      f'{base64.b64encode(pngs[k]).decode("ascii")}"></figure>' for k in PLOTS if k in pngs)
  if not plots:
    plots = "<p>No windows to plot: the video gave no face track or audio to window.</p>"
  segments = "".join(
      f"<tr><td>{_e(s['start_s'])}</td><td>{_e(s['end_s'])}</td><td>{_e(s['n_windows'])}</td>"
      f"<td>{_e(s['mean_divergence'])}</td><td>{_e(s['max_divergence'])}</td></tr>"
      for s in report["segments"])
  segments = (("<table><tr><th>start (s)</th><th>end (s)</th><th>windows</th>"
               f"<th>mean {_e(report['divergence'])}</th><th>max</th></tr>{segments}</table>")
              if segments else "<p>None.</p>")
  windows = "".join(
      f"<tr{' class=flag' if w['flagged'] else ''}><td>{_e(w['start_s'])}</td><td>{_e(w['end_s'])}"
      f"</td><td>{html.escape(_top(w['face_probs']))}</td>"
      f"<td>{html.escape(_top(w['voice_probs']))}</td><td>{_e(w['divergence'])}</td>"
      f"<td>{_e(w['face_fraction'])}</td><td>{_e(w['speech_fraction'])}</td>"
      f"<td>{'yes' if w['usable'] else 'no'}</td><td>{'yes' if w['flagged'] else 'no'}</td></tr>"
      for w in report["windows"])
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>kd_mh detection report: {html.escape(os.path.basename(report['video']))}</title>
<style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
h1 {{ color: {colour}; }}
.disclaimer {{ border: 1px solid #c9a400; background: #fff8dc; padding: 0.6em 1em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
tr.flag td {{ background: #fde8e8; }}
img {{ max-width: 100%; }}
figure {{ margin: 1em 0; }}
</style></head><body>
<p class="disclaimer"><strong>Research tool, not a diagnosis.</strong>
{_e(report['disclaimer'])}</p>
<h1>{_e(report['verdict'])}</h1>
<p><strong>Reason:</strong> {_e(report['reason'])}</p>
<p><strong>Flagged fraction of usable windows:</strong> {fraction}</p>
<h2>Plots</h2>
{plots}
<h2>Flagged segments</h2>
{segments}
<h2>Evidence</h2>
{_table(evidence)}
<h2>Parameters</h2>
{_table(parameters)}
<details><summary>Every window</summary>
<table><tr><th>start (s)</th><th>end (s)</th><th>face (top)</th><th>voice (top)</th>
<th>{_e(report['divergence'])}</th><th>face frames</th><th>speech frames</th><th>usable</th>
<th>flagged</th></tr>{windows}</table></details>
</body></html>
"""


def write(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Writes report.json, the PNGs and report.html into `out_dir` (created); returns their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"json": out / REPORT_JSON}
  # allow_nan=False: a NaN slipping into the report is a bug, not something to write as JSON.
  paths["json"].write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
  pngs = {key: _png(fig) for key, fig in figures(report).items()}
  for key, data in pngs.items():
    paths[key] = out / f"{key}.png"
    paths[key].write_bytes(data)
  paths["html"] = out / REPORT_HTML
  paths["html"].write_text(render_html(report, pngs), encoding="utf-8")
  return paths

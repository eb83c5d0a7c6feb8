"""Privacy mode (`kd-mh prep --store=embeddings`): records without face pixels, and the student
training, evaluation and refusals that work from them.

The demo corpus is built a second time as embeddings of the tiny teacher run (`tiny_runs`), so
every result can be compared with the same clips' pixel records and the same frozen teacher.
"""

import json
import pathlib
import subprocess
import sys

from conftest import face_pixel_files
from conftest import face_rows
from conftest import load_config
import jax
import numpy as np
import pytest

from data_prep import build
from data_prep import corpora
from kd_mh import evaluate
from kd_mh import inference
from kd_mh import input_pipeline
from kd_mh import records
from kd_mh import train
from kd_mh.models import pooling

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAME = "kd_mh_demo"


@pytest.fixture(scope="module")
def private(demo_corpus, tiny_runs, tmp_path_factory):
  """The demo corpus built again as embeddings of the tiny teacher run."""
  out = tmp_path_factory.mktemp("private") / "prepared"
  config = build.PrepConfig(store="embeddings", teacher=str(tiny_runs["teacher"]))
  summary = build.build(corpora.read_corpus("demo", str(demo_corpus["root"])), out, config,
                        workers=1, corpus="demo", progress=False)
  assert summary["splits"] == {"train": 14, "validation": 3, "test": 3}
  return {"prepared": out, "data_dir": summary["tfds_data_dir"]}


def _clip_records(prepared: pathlib.Path, feats) -> dict[str, dict]:
  return {p.relative_to(prepared / "clips").as_posix()[:-3]:
          records.parse_example(p.read_bytes(), feats)
          for p in sorted((prepared / "clips").rglob("*.pb"))}


def test_records_hold_the_teachers_frame_outputs_instead_of_faces(demo_corpus, tiny_runs,
                                                                  private):
  teacher = train.load_teacher_run(str(tiny_runs["teacher"]))
  split = input_pipeline.open_split(private["data_dir"], NAME, "train")
  assert records.store(split.features) == "embeddings"
  assert "faces" not in split.features.keys()
  assert split.metadata == records.embeddings_metadata(
      str(pathlib.Path(tiny_runs["teacher"]).absolute()), teacher.step, (64, 64, 1))
  prep_config = json.loads((private["prepared"] / "prep_config.json").read_text())
  assert (prep_config["store"], prep_config["teacher"], prep_config["teacher_step"]) == (
      "embeddings", split.metadata["teacher"], teacher.step)

  pixels = _clip_records(demo_corpus["prepared"], records.features())
  private_records = _clip_records(private["prepared"], split.features)
  apply = jax.jit(teacher.model.apply)  # the whole teacher, faces in, as in a pixel-record step
  assert sorted(private_records) == sorted(pixels) and len(pixels) == 20
  for clip_id, example in private_records.items():
    pixel = pixels[clip_id]
    assert not any(np.asarray(v).dtype == np.uint8 for v in example.values()), clip_id
    np.testing.assert_array_equal(example["face_mask"], pixel["face_mask"])
    np.testing.assert_array_equal(example["face_timestamps"], pixel["face_timestamps"])
    mask = pixel["face_mask"]
    assert example["face_logits"].shape == (len(mask), 7)
    assert example["face_embedding"].shape == (len(mask), 128)
    # Known answer: the whole teacher on the pixel record's faces.
    out = apply(teacher.variables, pixel["faces"][None], mask[None])
    np.testing.assert_allclose(example["face_logits"][mask], out["frame_logits"][0][mask],
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pooling.masked_mean(example["face_embedding"][None], mask[None]),
                               out["embedding"], atol=1e-5, rtol=1e-5)
    assert not example["face_logits"][~mask].any() and not example["face_embedding"][~mask].any()


def test_no_face_pixels_anywhere_in_the_private_build(demo_corpus, private):
  pixels = _clip_records(demo_corpus["prepared"], records.features())
  rows = [row for ex in pixels.values() for row in face_rows(ex["faces"], ex["face_mask"])]
  assert len(rows) > 100
  # The search finds the faces where they are: in every shard and record of the pixel build.
  found = face_pixel_files(demo_corpus["prepared"], rows)
  assert any(".tfrecord" in f for f in found) and len([f for f in found if ".pb" in f]) == 20
  # ... and nowhere in the embeddings build: shards, records, tracks, manifest, metadata.
  assert face_pixel_files(private["prepared"], rows) == []
  features_json = next(private["prepared"].rglob("features.json")).read_text()
  assert '"faces"' not in features_json and '"face_logits"' in features_json


def _student(data_dir, teacher, **overrides):
  config = load_config("student_kd", f"runlocal,data_dir={data_dir},teacher={teacher}")
  config.update_from_flattened_dict(overrides)
  return config


def test_student_from_embeddings_matches_pixels(demo_corpus, tiny_runs, private, tmp_path):
  runs = {}
  for kind, data_dir in (("pixels", demo_corpus["data_dir"]), ("embeddings", private["data_dir"])):
    train.train_and_evaluate(_student(data_dir, tiny_runs["teacher"]), str(tmp_path / kind))
    runs[kind] = train.read_scalars(str(tmp_path / kind))
  assert set(runs["pixels"]) == set(runs["embeddings"])
  for tag in ("train/loss", "train/kd", "train/align", "train/ce", "eval/kd", "eval/align",
              "eval/agreement", "eval/teacher_accuracy"):
    assert sorted(runs["pixels"][tag]) == sorted(runs["embeddings"][tag]), tag
    for step, value in runs["pixels"][tag].items():
      assert runs["embeddings"][tag][step] == pytest.approx(value, rel=1e-5, abs=1e-5), (tag, step)
  assert len(runs["pixels"]["train/loss"]) == 4
  # The checkpoint keeps the real teacher, so the run can still meet faces (detect).
  trained = train.load_trained(str(tmp_path / "embeddings"))
  teacher = train.load_teacher_run(str(tiny_runs["teacher"]))
  assert jax.tree.all(jax.tree.map(np.array_equal, trained.teacher_variables["params"],
                                   teacher.variables["params"]))


def test_evaluation_from_embeddings_matches_pixels(demo_corpus, tiny_runs, private, tmp_path):
  trained = train.load_trained(str(tiny_runs["student"]))
  outputs = {kind: inference.predict(trained, input_pipeline.open_split(d, NAME, "test"))
             for kind, d in (("pixels", demo_corpus["data_dir"]),
                             ("embeddings", private["data_dir"]))}
  for key, value in outputs["pixels"].items():
    np.testing.assert_allclose(outputs["embeddings"][key], value, atol=1e-5, rtol=1e-5,
                               err_msg=key)
  # Evaluation reads nothing else of the records, so the same outputs make the same evaluation;
  # the whole of it runs on the embeddings corpus.
  config = load_config("evaluate", f"student={tiny_runs['student']},runlocal")
  config.min_calibration_examples = 3
  config.data.data_dir = private["data_dir"]
  result = evaluate.evaluate(config, str(tmp_path))
  truth = [json.loads(line) for line in
           (demo_corpus["root"] / "ground_truth.jsonl").read_text().splitlines() if line]
  test = [r for r in truth if r["split"] == "test"]
  assert result["threshold"]["data"]["pairs"]["congruent"] == sum(r["congruent"] for r in test)
  assert result["metrics"]["calibration"]["teacher"]["n"] == 3
  assert 0 <= result["metrics"]["auc"] <= 1


def test_runs_that_need_pixels_or_another_teacher_are_refused(demo_corpus, tiny_runs, private,
                                                              tmp_path):
  data_dir = private["data_dir"]
  finetune = load_config("teacher_finetune", f"runlocal,data_dir={data_dir},init=random")
  with pytest.raises(ValueError, match="holds no face pixels.*--store=pixels"):
    train.train_and_evaluate(finetune, str(tmp_path / "teacher"))
  with pytest.raises(ValueError, match="were made by teacher .*tiny_runs"):
    train.train_and_evaluate(_student(data_dir, "random"), str(tmp_path / "other"))
  assert not (tmp_path / "teacher" / "checkpoints").exists()

  specs = corpora.read_corpus("demo", str(demo_corpus["root"]))
  with pytest.raises(build.BuildError, match="different options .*store.*teacher"):
    build.build(specs, private["prepared"], progress=False)
  with pytest.raises(build.BuildError, match="not a teacher run"):
    build.build(specs, tmp_path / "o", build.PrepConfig(store="embeddings",
                                                        teacher=str(tiny_runs["student"])))
  with pytest.raises(build.BuildError, match="PrepConfig.teacher"):
    build.build(specs, tmp_path / "o", build.PrepConfig(store="embeddings"))


def test_fer2013_is_the_default_teacher_and_another_teacher_cannot_resume(tiny_runs, private,
                                                                          tmp_path):
  from kd_mh.models import pretrained  # pylint: disable=import-outside-toplevel
  try:
    pretrained.load_teacher_variables()
  except pretrained.PretrainedUnavailableError as e:
    pytest.skip(f"FER2013 weights unavailable offline: {e}")
  config = build.resolve_teacher(build.PrepConfig(store="embeddings", teacher="fer2013"))
  assert (config.teacher, config.teacher_step) == ("fer2013", -1)
  feats, metadata = build.schema(config)
  assert metadata["teacher"] == "fer2013" and metadata["face_shape"] == [64, 64, 1]
  assert feats["face_logits"].shape == (None, 7) and feats["face_embedding"].shape == (None, 128)
  with pytest.raises(build.BuildError, match="different options .*teacher"):
    build.build([], private["prepared"], config, progress=False)
  with pytest.raises(build.BuildError, match="takes faces of"):
    build.resolve_teacher(build.PrepConfig(store="embeddings", teacher="fer2013",
                                           face=build.faces.FaceConfig(crop_size=48)))


def test_command_line_store_flags(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", "prep", "--corpus=folder",
                           f"--root={tmp_path}", f"--out={tmp_path / 'o'}", *args],
                          capture_output=True, text=True, cwd=ROOT)

  misuse = run("--teacher_workdir=runs/teacher")
  assert misuse.returncode == 2 and "--store=embeddings only" in misuse.stderr
  missing = run("--store=embeddings", f"--teacher_workdir={tmp_path / 'none'}")
  assert missing.returncode == 2 and "holds no config.json" in missing.stderr

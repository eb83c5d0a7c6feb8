import numpy as np
import pytest

from kd_mh import emotions


def test_fer2013_order_and_index():
  assert emotions.EMOTIONS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
  assert [emotions.index(n) for n in emotions.EMOTIONS] == list(range(7))
  with pytest.raises(emotions.LabelError, match="unknown emotion"):
    emotions.index("contempt")


def test_valence_arousal_covers_every_class_with_plausible_signs():
  assert set(emotions.VALENCE_AROUSAL) == set(emotions.EMOTIONS)
  va = emotions.VALENCE_AROUSAL
  assert va["happy"][0] > 0 > va["sad"][0]
  assert va["angry"][1] > va["neutral"][1] > va["sad"][1]
  assert all(-1 <= v <= 1 and -1 <= a <= 1 for v, a in va.values())


@pytest.mark.parametrize("code,expected", [
    ("01", "neutral"), ("03", "happy"), ("04", "sad"), ("05", "angry"), ("06", "fear"),
    ("07", "disgust"), ("08", "surprise")])
def test_ravdess_codes(code, expected):
  assert emotions.from_ravdess(code) == emotions.index(expected)


def test_explicit_policies_for_classes_outside_fer2013():
  assert emotions.from_ravdess("02") == emotions.index("neutral")
  assert emotions.from_ravdess("02", calm="drop") == emotions.UNLABELLED
  assert emotions.from_emodb("L") == emotions.UNLABELLED
  assert emotions.from_emodb("L", boredom="neutral") == emotions.index("neutral")
  assert emotions.from_ckplus("2") == emotions.UNLABELLED
  assert emotions.from_ckplus("2.0000000e+00", contempt="disgust") == emotions.index("disgust")
  assert emotions.from_name("Contempt", contempt="disgust") == emotions.index("disgust")
  with pytest.raises(emotions.LabelError, match="policy"):
    emotions.from_ravdess("02", calm="bored")


def test_corpus_maps():
  assert emotions.from_meld("joy") == emotions.index("happy")
  assert emotions.from_meld(" Sadness ") == emotions.index("sad")
  assert emotions.from_cremad("FEA") == emotions.index("fear")
  assert emotions.from_cremad_vote("N:S") == emotions.UNLABELLED
  assert emotions.from_cremad_vote("D") == emotions.index("disgust")
  assert emotions.from_emodb("W") == emotions.index("angry")
  assert emotions.from_ckplus("7") == emotions.index("surprise")
  with pytest.raises(emotions.LabelError):
    emotions.from_meld("bored")


def test_class_sets_fold_onto_the_seven():
  assert emotions.class_set("") == emotions.EMOTIONS
  ravdess = emotions.class_set("ravdess")
  folded = emotions.fold_onto_fer(ravdess)
  assert [emotions.EMOTIONS[k] for k in folded] == [
      "neutral", "neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
  with pytest.raises(emotions.LabelError, match="unknown class set"):
    emotions.class_set("emodb")
  with pytest.raises(emotions.LabelError, match="missing"):
    emotions.fold_onto_fer(("neutral", "happy"))


def test_the_fold_matrix_sums_calm_and_neutral():
  folded = emotions.fold_matrix(emotions.fold_onto_fer(emotions.class_set("ravdess")))
  p = np.full(8, 1 / 8)
  np.testing.assert_allclose((p @ folded)[emotions.index("neutral")], 2 / 8)
  np.testing.assert_allclose(folded.sum(axis=1), 1.0)

"""Label-free selection scores (pipeline/metrics/label_free.py) on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax

from pipeline.data.manifest import ImageSet
from pipeline.metrics.label_free import (batch_nuclear_norm, class_ami, class_share_max, information_maximization,
                                         mean_entropy, soft_neighborhood_density)
from pipeline.task.classification import label_free_scores
from pipeline.task.models import build_task_model
from tinydata import CLASSES, SIZE, tiny_prepared

K = 4


def one_hot(labels, k: int = K) -> np.ndarray:
    return np.eye(k)[np.asarray(labels)]


def test_uniform_predictions_have_zero_im_and_maximal_entropy():
    probs = np.full((12, K), 1 / K)
    assert information_maximization(probs) == pytest.approx(0.0, abs=1e-12)
    assert mean_entropy(probs) == pytest.approx(math.log(K))


def test_confident_predictions_spread_evenly_have_im_log_k_and_zero_entropy():
    probs = one_hot(np.arange(12) % K)
    assert information_maximization(probs) == pytest.approx(math.log(K))
    assert mean_entropy(probs) == pytest.approx(0.0, abs=1e-12)
    assert class_share_max(probs.argmax(1), K) == pytest.approx(1 / K)


def test_every_image_on_one_class_is_collapse_im_zero_share_one():
    probs = one_hot([2] * 12)
    assert information_maximization(probs) == pytest.approx(0.0, abs=1e-12)
    assert mean_entropy(probs) == pytest.approx(0.0, abs=1e-12)
    assert class_share_max(probs.argmax(1), K) == 1.0


def test_im_lies_between_zero_and_log_k_and_accepts_torch():
    probs = np.random.default_rng(0).dirichlet(np.ones(K), 50)
    im = information_maximization(probs)
    assert 0.0 < im < math.log(K)
    assert information_maximization(torch.tensor(probs, dtype=torch.float32)) == pytest.approx(im, rel=1e-5)
    assert mean_entropy(torch.tensor(probs)) == pytest.approx(mean_entropy(probs))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        mean_entropy(np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        information_maximization(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        soft_neighborhood_density(np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="temperature"):
        soft_neighborhood_density(one_hot([0, 1]), temperature=0)


def clustered_and_scattered(n: int = 300, k: int = 3, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    clustered = softmax(6 * np.eye(k)[np.arange(n) % k] + rng.normal(0, 0.3, (n, k)), axis=1)
    scattered = [rng.dirichlet(np.ones(k), n), softmax(rng.normal(0, 3, (n, k)), axis=1)]
    return clustered, scattered


def test_snd_is_higher_for_clustered_confident_predictions_than_for_noise():
    clustered, scattered = clustered_and_scattered()
    snd = soft_neighborhood_density(clustered)
    for noise in scattered:
        assert snd > soft_neighborhood_density(noise) + 0.05
    # IM ranks them the same way (scattered but peaked predictions are confident, so IM is closer)
    assert all(information_maximization(clustered) > information_maximization(noise) + 0.3 for noise in scattered)


def test_snd_of_identical_predictions_is_log_n_minus_one():
    """Each image's neighbour distribution is uniform over the other N - 1 (the collapse caveat)."""
    assert soft_neighborhood_density(one_hot([1] * 20)) == pytest.approx(math.log(19))
    # K equal, perfectly separated clusters of size m: entropy log(m - 1) per image
    assert soft_neighborhood_density(one_hot(np.arange(20) % K)) == pytest.approx(math.log(20 / K - 1), rel=1e-6)


def test_snd_subsamples_with_a_seed():
    probs = np.random.default_rng(1).dirichlet(np.ones(K), 300)
    a = soft_neighborhood_density(probs, max_samples=100, seed=3)
    assert a == soft_neighborhood_density(probs, max_samples=100, seed=3)
    assert a != soft_neighborhood_density(probs, max_samples=100, seed=4)
    assert a != soft_neighborhood_density(probs)


# ------------------------------------------------------------------------------------------------
# label_free_scores on a model
# ------------------------------------------------------------------------------------------------


def tiny_sets(tmp_path):
    prepared = tiny_prepared(tmp_path, n=32)
    target = ImageSet(prepared / "target" / "train", CLASSES, 1, SIZE, labels=False)
    source_train = ImageSet(prepared / "source" / "train", CLASSES, 1, SIZE)
    source_val = ImageSet(prepared / "source" / "val", CLASSES, 1, SIZE)
    return target, source_train, source_val


def test_label_free_scores_keys_ranges_and_mode(tmp_path):
    target, _, source_val = tiny_sets(tmp_path)
    torch.manual_seed(0)
    model = build_task_model("small_cnn", 1, len(CLASSES), width=4).train()
    scores = label_free_scores(model, target, source_val, "cpu", seed=0, limit=10)
    predicted = scores.pop("target_predicted")
    assert set(scores) == {"source_val_acc", "target_entropy", "target_im", "target_snd", "target_class_share_max",
                           "target_bnm", "target_class_ami"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    assert len(predicted) == 10 and set(predicted) <= {0, 1}
    assert max(predicted.count(0), predicted.count(1)) / 10 == scores["target_class_share_max"]
    assert 0.0 <= scores["source_val_acc"] <= 1.0 and 0.5 <= scores["target_class_share_max"] <= 1.0
    assert 0.0 <= scores["target_im"] <= math.log(2) + 1e-9
    assert 0.0 <= scores["target_snd"] <= math.log(10 - 1) + 1e-9       # limit=10 target images
    assert model.training                                                # mode restored
    assert label_free_scores(model, target, source_val, "cpu", seed=0, limit=10) == {**scores, "target_predicted": predicted}


def test_label_free_scores_refuses_labelled_target(tmp_path):
    target, source_train, source_val = tiny_sets(tmp_path)
    model = build_task_model("small_cnn", 1, len(CLASSES), width=4)
    with pytest.raises(ValueError, match="labels=False"):
        label_free_scores(model, source_train, source_val, "cpu", seed=0)


def test_a_trained_model_scores_better_than_an_untrained_one(tmp_path):
    """Trained on the synthetic images, the model is right on their validation split and confident
    and diverse on the real ones; the untrained one is neither."""
    target, source_train, source_val = tiny_sets(tmp_path)
    torch.manual_seed(0)
    untrained = build_task_model("small_cnn", 1, len(CLASSES), width=8)
    trained = build_task_model("small_cnn", 1, len(CLASSES), width=8)
    trained.load_state_dict(untrained.state_dict())
    opt = torch.optim.Adam(trained.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(source_train, batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    trained.train()
    for _ in range(12):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(trained(x), y).backward()
            opt.step()
    before = label_free_scores(untrained, target, source_val, "cpu", seed=0)
    after = label_free_scores(trained, target, source_val, "cpu", seed=0)
    assert after["source_val_acc"] > before["source_val_acc"]
    assert after["target_im"] > before["target_im"] + 0.1
    assert after["target_class_share_max"] < before["target_class_share_max"]
    assert after["target_entropy"] < before["target_entropy"]


def test_batch_nuclear_norm_rewards_confident_diverse_predictions():
    eye = np.eye(4)
    confident_diverse = np.repeat(eye, 5, axis=0)                # 20 one-hot rows over 4 classes
    collapsed = np.tile(eye[:1], (20, 1))                        # every row the same class
    uniform = np.full((20, 4), 0.25)
    assert batch_nuclear_norm(confident_diverse) == pytest.approx(4 * math.sqrt(5) / 20)
    assert batch_nuclear_norm(collapsed) == pytest.approx(math.sqrt(20) / 20)
    assert batch_nuclear_norm(confident_diverse) > batch_nuclear_norm(collapsed) > batch_nuclear_norm(uniform) - 1e-12


def test_class_ami_is_high_when_predictions_follow_the_feature_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 5
    labels = np.repeat(np.arange(3), 30)
    features = centres[labels] + rng.normal(0, 0.3, (90, 3))
    assert class_ami(features, labels, 3) > 0.9
    assert class_ami(features, rng.permutation(labels), 3) < 0.1

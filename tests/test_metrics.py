"""Domain-gap metrics (Fréchet distance, proxy A-distance) and classification metrics."""

import numpy as np
import pytest

from pipeline.metrics.classification import classification_report, confusion_counts, gap_closed, plot_confusion_matrix
from pipeline.metrics.domain_gap import frechet_distance, proxy_a_distance


def test_frechet_distance_zero_for_identical_sets():
    feats = np.random.default_rng(0).normal(size=(200, 4))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_grows_with_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    base = rng.normal(size=(4000, 3))
    distances = []
    for d in [0.0, 1.0, 2.0, 4.0]:
        shift = np.array([d, 0.0, 0.0])
        distances.append(frechet_distance(a, base + shift))
        # equal covariances: FD ~ ||mu_a - mu_b||^2
        assert distances[-1] == pytest.approx(d**2, abs=0.1 + 0.05 * d**2)
    assert all(b > a for a, b in zip(distances, distances[1:]))


def test_frechet_distance_handles_singular_covariance():
    rng = np.random.default_rng(0)
    a = np.zeros((50, 3))
    a[:, 0] = rng.normal(size=50)
    b = np.zeros((50, 3))
    b[:, 0] = rng.normal(size=50) + 1.0
    assert np.isfinite(frechet_distance(a, b))


def test_proxy_a_distance_same_vs_separated():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5))
    b = rng.normal(size=(300, 5))
    assert proxy_a_distance(a, b, seed=0) < 0.3
    far = rng.normal(size=(300, 5)) + 6.0
    assert proxy_a_distance(a, far, seed=0) > 1.8
    assert 0.0 <= proxy_a_distance(a, b, seed=1) <= 2.0


def test_classification_report_hand_example():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 0, 1]
    report = classification_report(y_true, y_pred, ["a", "b", "c", "d"])
    assert report["n"] == 6
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert report["confusion_matrix"] == [
        [2, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
    ]
    assert report["per_class_accuracy"] == {"a": pytest.approx(2 / 3), "b": 0.5, "c": 0.0, "d": None}
    # per-class F1 = 2PR/(P+R): a: P=2/3 R=2/3 -> 2/3; b: P=1/3 R=1/2 -> 0.4; c, d: 0
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0 + 0) / 4)


def test_gap_closed():
    assert gap_closed(0.75, 0.5, 1.0) == pytest.approx(0.5)
    assert gap_closed(0.4, 0.5, 1.0) < 0
    assert gap_closed(0.7, 0.6, 0.6) is None


def test_plot_confusion_matrix_writes_png(tmp_path):
    path = tmp_path / "plots" / "cm.png"
    plot_confusion_matrix([[3, 1], [0, 2]], ["x", "y"], path, title="test")
    data = path.read_bytes()
    assert len(data) > 0 and data.startswith(b"\x89PNG")


def test_confusion_counts_match_scikit_learn():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    y_pred[:7] = 9                                     # a prediction outside the classes is not counted
    counts = confusion_counts(y_true, y_pred, 5)
    np.testing.assert_array_equal(counts, confusion_matrix(y_true, y_pred, labels=list(range(5))))
    assert counts.sum() == 293 and counts.dtype == np.int64

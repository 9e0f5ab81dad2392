import numpy as np

from pipeline.config import RenderParams
from pipeline.data.digits import real_digits, rendered_digits


def _render(count, seed, split="train", size=16, channels=1, **kw):
    pairs = list(rendered_digits(count, seed, split, RenderParams(**kw), size, channels))
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def test_renderer_is_deterministic_for_a_seed():
    a, la = _render(30, seed=3)
    b, lb = _render(30, seed=3)
    c, lc = _render(30, seed=4)
    assert a.dtype == np.uint8 and a.shape == (30, 16, 16, 1)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    v, _ = _render(30, seed=3, split="val")
    assert not np.array_equal(v, a)


def test_renderer_balances_classes_and_supports_rgb():
    imgs, labels = _render(50, seed=0, channels=3)
    assert imgs.shape == (50, 16, 16, 3)
    assert np.bincount(labels, minlength=10).tolist() == [5] * 10
    assert np.array_equal(imgs[..., 0], imgs[..., 1])


def test_rendered_labels_match_the_drawn_digit():
    """A nearest-neighbour classifier fitted on one seed's renders reads another seed's renders.

    With clean renders (no rotation, blur, noise or clutter), a mismatch between image and label
    would drop this to chance (10%).
    """
    from sklearn.neighbors import KNeighborsClassifier

    clean = dict(rotation_deg=0.0, translate=0.0, blur_prob=0.0, noise_prob=0.0, clutter_prob=0.0,
                 italic_prob=0.0, scale=(0.8, 0.8), thickness=(2, 2), foreground=(255, 255), background=(0, 0))
    xa, ya = _render(400, seed=1, **clean)
    xb, yb = _render(200, seed=2, **clean)
    knn = KNeighborsClassifier(n_neighbors=1).fit(xa.reshape(len(xa), -1), ya)
    assert knn.score(xb.reshape(len(xb), -1), yb) > 0.9


def test_real_digits_are_the_bundled_scans():
    images, labels = real_digits(size=16, channels=1)
    assert images.shape == (1797, 16, 16, 1) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    assert images.max() == 255 and images.min() == 0

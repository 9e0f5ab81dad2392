"""Each adaptation method moves its own loss the right way on a toy problem where the answer is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pipeline import methods
from pipeline.methods.base import MethodContext, StepBatch
from pipeline.methods.self_training import align_distribution, ramp_weight
from pipeline.task.kinds import KINDS


class LinearNet(nn.Module):
    """``x -> (x, W x + b)``: the features are the 2-D inputs themselves."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        return x, self.head(x)


def blobs(n: int, shift: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs (std 0.5) at x = -2 (class 0) and x = +2 (class 1), moved right by ``shift``."""
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=generator) * 0.5
    x[:, 0] += (y.float() * 4 - 2) + shift
    return x, y


class LiftedNet(LinearNet):
    """``x -> (x + (0, 4), W x + b)``: features lifted off the origin, so that their directions (what
    clustering compares) separate the blobs as their positions do, like pooled ReLU features."""

    def forward(self, x):
        return x + torch.tensor([0.0, 4.0]), self.head(x)


def train(method_name: str, raw_params: dict, steps: int = 400, net_class: type = LinearNet) -> float:
    """Train a linear classifier on the source blobs with ``method``; accuracy on the shifted target blobs."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    xs, ys = blobs(512, 0.0, g)
    xt, yt = blobs(512, 1.6, g)          # the source boundary x = 0 cuts through the target's class-0 blob
    real = TensorDataset(xt, -torch.ones(512))
    net = net_class()
    cls = methods.get(method_name)
    method = cls(methods.parse_params(method_name, raw_params, "params"), MethodContext(2, 2, torch.device("cpu"), KINDS["classification"]))
    optimizer = torch.optim.Adam([*net.parameters(), *(p for m in method.modules().values() for p in m.parameters())],
                                 lr=0.05)
    for step in range(steps):
        i = torch.randint(0, 512, (64,), generator=g)
        j = torch.randint(0, 512, (64,), generator=g)
        views = {"weak": xt[j], "strong": xt[j] + 0.3 * torch.randn(64, 2, generator=g), "target": xt[j]}
        method.before_step(net, step, real)
        out = method.loss(net, StepBatch(xs[i], ys[i], {k: views[k] for k in method.target_views()},
                                         {k: xs[i] for k in method.source_views()}), step / steps)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((net(xt)[1].argmax(1) == yt).float().mean())


def test_self_training_raises_target_accuracy_where_source_only_fails():
    source_only = train("supervised", {})
    self_trained = train("self_training", {"weak": None, "strong": "strong", "ramp": 0.2, "pseudo_labels": "prediction"})
    assert source_only < 0.92                      # the shifted class-0 blob straddles the source boundary
    assert self_trained > 0.97 and self_trained > source_only + 0.05


def test_self_training_on_cluster_labels_raises_target_accuracy_too():
    source_only = train("supervised", {}, net_class=LiftedNet)
    self_trained = train("self_training", {"weak": None, "strong": "strong", "ramp": 0.2, "refresh": 20},
                         net_class=LiftedNet)
    assert source_only < 0.92 and self_trained > 0.97


def test_cluster_centroids_refresh_every_n_steps_and_survive_a_checkpoint():
    ctx = MethodContext(2, 2, torch.device("cpu"), KINDS["classification"])
    method = methods.get("self_training")(methods.parse_params("self_training", {"refresh": 3}, "params"), ctx)
    g = torch.Generator().manual_seed(0)
    xt, yt = blobs(64, 0.0, g)
    net = LiftedNet()
    with torch.no_grad():      # a head that is right on the blobs: the clusters are the classes
        net.head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        net.head.bias.zero_()
    real = TensorDataset(xt, -torch.ones(64))
    seen = []
    for step in range(7):
        method.before_step(net, step, real)
        seen.append(method.centroids)
    assert [seen[k] is seen[k - 1] for k in range(1, 7)] == [True, True, False, True, True, False]

    def nearest(centroids):
        f = torch.nn.functional.normalize(net(xt)[0], dim=1)
        return (f @ centroids.t()).argmax(1)

    assert torch.equal(nearest(seen[-1]), yt)
    resumed = methods.get("self_training")(method.params, ctx)
    resumed.load_state_dict(method.state_dict())
    torch.testing.assert_close(resumed.centroids, seen[-1])
    resumed.before_step(net, 7, real)                 # not a refresh step: the restored centroids are kept
    torch.testing.assert_close(resumed.centroids, seen[-1])
    # the unlabelled loss teaches each real image the class of its nearest centroid, not the prediction
    with torch.no_grad():
        net.head.weight.mul_(-1)                        # now every prediction is the wrong class
    weak = strong = xt[:8]
    out = method.loss(net, StepBatch(xt[:8], yt[:8], {"weak": weak, "strong": strong}, {"weak": xt[:8]}), 0.9)
    logits = net(strong)[1]
    expected = torch.nn.functional.cross_entropy(logits, yt[:8], reduction="none")
    assert out.stats["mask_rate"] == 1.0
    torch.testing.assert_close(out.terms["unlabelled"], expected.mean())


class FeatureNet(nn.Module):
    """``x -> (f, h(f))`` with a trainable feature map ``f = tanh(A x + a)``."""

    def __init__(self):
        super().__init__()
        self.features, self.head = nn.Linear(2, 4), nn.Linear(4, 2)

    def forward(self, x):
        f = torch.tanh(self.features(x))
        return f, self.head(f)


def test_dann_makes_the_domains_indistinguishable_in_feature_space():
    """Early on the discriminator separates source and shifted target features; through the gradient
    reversal the feature map then aligns them, and the discriminator falls back towards chance."""
    torch.manual_seed(0)
    net = FeatureNet()
    method = methods.get("dann")(methods.parse_params("dann", {"hidden": 16}, "params"),
                                 MethodContext(2, 4, torch.device("cpu"), KINDS["classification"]))
    g = torch.Generator().manual_seed(1)
    xs, ys = blobs(512, 0.0, g)
    xt, _ = blobs(512, 6.0, g)
    optimizer = torch.optim.Adam([*net.parameters(), *method.discriminator.parameters()], lr=0.01)
    accuracies = []
    for step in range(1000):
        i = torch.randint(0, 512, (64,), generator=g)
        out = method.loss(net, StepBatch(xs[i], ys[i], {"target": xt[i]}), step / 1000)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        accuracies.append(out.stats["domain_acc"])
    early, late = sum(accuracies[5:25]) / 20, sum(accuracies[-100:]) / 100
    assert early > 0.9 and late < early - 0.15, (early, late)
    assert out.stats["lambda"] > 0.99 and method.learning_rate(1.0, 0.5) < 1.0
    with torch.no_grad():
        assert float((net(xs)[1].argmax(1) == ys).float().mean()) > 0.95     # the source is not destroyed


def test_distribution_alignment_balances_pseudo_labels_and_ramp_goes_0_to_1():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    aligned = align_distribution(probs, probs.mean(0))
    assert torch.allclose(aligned.sum(1), torch.ones(3))
    assert aligned[:, 1].mean() > probs[:, 1].mean()            # the under-predicted class gains
    assert ramp_weight(0.0, 0.5) == 0.0 and ramp_weight(0.25, 0.5) == pytest.approx(0.5)
    assert ramp_weight(0.5, 0.5) == 1.0 and ramp_weight(0.9, 0.5) == 1.0 and ramp_weight(0.3, 0.0) == 1.0


def test_registry_lists_the_built_in_methods_and_refuses_unknown_ones():
    from pipeline.config import ConfigError

    assert {"supervised", "dann", "self_training"} <= set(methods.available())
    with pytest.raises(ConfigError, match="variants.x.method: unknown method 'nope'"):
        methods.get("nope", "variants.x.method")
    assert math.isclose(methods.parse_params("dann", {"gamma": 5}, "v.params").gamma, 5.0)


def test_relative_threshold_is_measured_on_the_weak_view_of_the_labelled_images():
    """AdaMatch's tau: on weak source views, where the model is sure of the renders, not on the strongly
    augmented labelled batch (where it may not be, and tau would fall to let every real image be taught)."""
    ctx = MethodContext(2, 2, torch.device("cpu"), KINDS["classification"])
    method = methods.get("self_training")(methods.parse_params("self_training", {"threshold": 0.9}, "params"), ctx)
    assert method.source_views() == {"weak": None}
    net = LinearNet()
    with torch.no_grad():
        net.head.weight.copy_(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
        net.head.bias.zero_()
    y = torch.arange(8) % 2
    weak_source = (y.float() * 4 - 2)[:, None] * torch.tensor([[1.0, 0.0]])   # far from the boundary: confident
    strong_source = torch.zeros(8, 2)                                           # on the boundary: p = 0.5
    real = torch.randn(4, 2)
    out = method.loss(net, StepBatch(strong_source, y, {"weak": real, "strong": real}, {"weak": weak_source}), 0.5)
    with torch.no_grad():
        confidence = net(weak_source[:4])[1].softmax(1).max(1).values.mean()
    assert out.stats["threshold"] == pytest.approx(0.9 * float(confidence), rel=1e-5)
    assert out.stats["threshold"] > 0.85        # on the strong views it would be 0.9 * 0.5
    assert out.logits.shape == (8, 2)           # train accuracy is read on the labelled batch as given


def test_source_seeds_are_running_class_means_of_the_renders_and_seed_the_clusters():
    from pipeline.task.clustering import cluster_labels

    ctx = MethodContext(2, 2, torch.device("cpu"), KINDS["classification"])
    method = methods.get("self_training")(methods.parse_params("self_training", {"seeds": "source"}, "params"), ctx)
    method.update_source_means(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0, 1]))
    torch.testing.assert_close(method.source_means, torch.eye(2))
    method.update_source_means(torch.tensor([[0.0, 5.0]]), torch.tensor([0]))     # class 1 absent: kept
    expected = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1], [0.0, 1.0]]), dim=1)
    torch.testing.assert_close(method.source_means, expected)
    resumed = methods.get("self_training")(method.params, ctx)
    resumed.load_state_dict(method.state_dict())
    torch.testing.assert_close(resumed.source_means, expected)
    # seeds given: the predictions do not place the centroids (here they point the other way)
    x = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    wrong = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    labels, centroids = cluster_labels(x, wrong, iterations=0, init=torch.eye(2))
    assert labels.tolist() == [0, 1] and torch.equal(centroids, torch.eye(2))
    assert cluster_labels(x, wrong, iterations=0)[0].tolist() == [1, 0]


def test_the_readme_method_example_registers_validates_and_trains(tmp_path):
    """The README's "Adding a method" code, as written: one file that registers itself, whose params
    are checked with the dotted key, and whose loss trains a classifier on the README's variant."""
    import re
    from pathlib import Path

    import yaml

    from pipeline.config import ConfigError, parse_params

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Adding a method", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    try:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        assert "entropy_min" in methods.available()
        raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
        entry = yaml.safe_load(re.search(r"then a variant: `my_variant: (\{.*?\})`", section).group(1))
        raw["variants"]["my_variant"] = entry
        params = parse_params(raw)
        assert params.variant("my_variant").method == "entropy_min"
        raw["variants"]["my_variant"] = {**entry, "params": {"weight": -1}}
        with pytest.raises(ConfigError, match=r"variants\.my_variant\.params\.weight: expected a number >= 0"):
            parse_params(raw)

        generator = torch.Generator().manual_seed(0)
        x, y = blobs(32, 0.0, generator)
        real, _ = blobs(32, 1.0, generator)
        ctx = MethodContext(num_classes=2, feature_dim=2, device=torch.device("cpu"), kind=KINDS["classification"])
        method = methods.get("entropy_min")(methods.parse_params("entropy_min", {"weight": 0.1}, "p"), ctx)
        assert method.target_views() == {"real": "default"}
        net = LinearNet()
        out = method.loss(net, StepBatch(x, y, {"real": real}), 0.5)
        out.loss.backward()
        assert set(out.terms) == {"task", "entropy"} and net.head.weight.grad.abs().sum() > 0
    finally:
        methods.unregister("entropy_min")


class NormedNet(LinearNet):
    """``x -> (x, W BN(x) + b)``: a network with buffers (BatchNorm statistics) for the mean teacher."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x):
        return x, self.head(self.norm(x))


def test_mean_teacher_follows_the_student_by_its_momentum_and_survives_a_checkpoint():
    ctx = MethodContext(2, 2, torch.device("cpu"), KINDS["classification"])
    parse = lambda raw: methods.parse_params("self_training", raw, "params")   # noqa: E731
    method = methods.get("self_training")(parse({"teacher_momentum": 0.75, "pseudo_labels": "prediction"}), ctx)
    student = NormedNet()
    method.before_step(student, 0, None)                         # the first step copies the student
    assert method.teacher is not student
    assert all(torch.equal(a, b) for a, b in zip(method.teacher.state_dict().values(), student.state_dict().values()))
    assert not any(p.requires_grad for p in method.teacher.parameters())
    before = method.teacher.head.weight.clone()
    with torch.no_grad():
        student.head.weight.add_(4.0)
        student.norm.running_mean.fill_(3.0)
    method.before_step(student, 1, None)
    torch.testing.assert_close(method.teacher.head.weight, 0.75 * before + 0.25 * student.head.weight)
    assert torch.equal(method.teacher.norm.running_mean, student.norm.running_mean)   # buffers copied

    # resumed from its state, the next update gives the teacher of the uninterrupted run
    resumed = methods.get("self_training")(method.params, ctx)
    resumed.load_state_dict(method.state_dict())
    with torch.no_grad():
        student.head.weight.mul_(-1)
    method.before_step(student, 2, None)
    resumed.before_step(student, 2, None)
    for key, value in method.teacher.state_dict().items():
        torch.testing.assert_close(resumed.teacher.state_dict()[key], value)


def test_with_a_mean_teacher_the_pseudo_labels_are_the_teachers():
    ctx = MethodContext(2, 2, torch.device("cpu"), KINDS["classification"])
    params = methods.parse_params("self_training", {"teacher_momentum": 0.99, "pseudo_labels": "prediction",
                                                    "alignment": False, "threshold": 0.1}, "params")
    method = methods.get("self_training")(params, ctx)
    net = LinearNet()
    with torch.no_grad():
        net.head.weight.copy_(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
        net.head.bias.zero_()
    method.before_step(net, 0, None)                  # the teacher: right on the blobs
    with torch.no_grad():
        net.head.weight.mul_(-1)                       # the student: wrong on every image
    g = torch.Generator().manual_seed(0)
    xt, yt = blobs(8, 0.0, g)
    out = method.loss(net, StepBatch(xt, yt, {"weak": xt, "strong": xt}, {"weak": xt}), 0.9)
    expected = torch.nn.functional.cross_entropy(net(xt)[1], yt)
    assert out.stats["mask_rate"] == 1.0
    torch.testing.assert_close(out.terms["unlabelled"], expected)
    with pytest.raises(Exception, match=r"params\.teacher_momentum"):
        methods.parse_params("self_training", {"teacher_momentum": 1.0}, "params")


def test_self_training_with_a_mean_teacher_still_adapts():
    source_only = train("supervised", {}, net_class=LiftedNet)
    self_trained = train("self_training", {"weak": None, "strong": "strong", "ramp": 0.2, "refresh": 20,
                                           "teacher_momentum": 0.9}, net_class=LiftedNet)
    assert source_only < 0.92 and self_trained > 0.97

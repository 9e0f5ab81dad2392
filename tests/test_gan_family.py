"""The translation family (issue 23): f-constancy, perceptual similarity, DistanceGAN and the
one-sided (SimGAN) mode: each term's formula on known values, where its gradients go, and a
one-sided run that trains no F and no D_source."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import deep_update
from pipeline.config import ConfigError, DiscriminatorParams, GanParams, GeneratorParams, LossWeights, parse_params
from pipeline.gan.losses import (constancy_loss, distance_loss, freeze, pairwise_l1, perceptual_loss,
                                 self_distance_loss)
from pipeline.gan.cycle_gan import CycleGan, Networks, Precision
from pipeline.task.kinds import KINDS
from pipeline.task.models import build_task_model, intermediate_features
from test_gan_training import project, run_stage, write_params  # noqa: F401  (project: a fixture)

FAMILY = {"constancy": 1.0, "perceptual": 0.2, "distance": 0.5, "self_distance": 0.5}


def pixels(*values: float) -> torch.Tensor:
    """A batch of 1x1x1 images with these values."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)


# -- the formulas --------------------------------------------------------------------------------


def test_constancy_is_the_mean_squared_feature_difference():
    x, g_x = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert constancy_loss(lambda t: t.flatten(1), x, g_x).item() == pytest.approx(1.0)
    encoder = lambda t: 3 * t.flatten(1)   # noqa: E731
    assert constancy_loss(encoder, x, 0.5 * g_x).item() == pytest.approx(1.5 ** 2)
    assert constancy_loss(encoder, x, x).item() == 0


def test_perceptual_sums_the_mean_squared_difference_of_every_map():
    x, g_x = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    layers = lambda t: [t, 2 * t[..., :2, :2]]   # noqa: E731
    assert perceptual_loss(layers, x, g_x).item() == pytest.approx(1 + 4)
    with pytest.raises(ValueError, match="perceptual_loss"):
        perceptual_loss(lambda t: [], x, g_x)


def test_distance_matches_a_hand_computed_batch():
    # x: 0, 1, 3 -> pair distances (0,1)=1, (0,2)=3, (1,2)=2; G(x): 0, 2, 3 -> 2, 3, 1.
    assert pairwise_l1(pixels(0, 1, 3)).tolist() == [1, 3, 2]
    # standardised: z_x = (-1, 1, 0) * sqrt(3/2), z_G = (0, 1, -1) * sqrt(3/2); mean |z_x - z_G| = sqrt(2/3)
    assert distance_loss(pixels(0, 1, 3), pixels(0, 2, 3)).item() == pytest.approx(math.sqrt(2 / 3), rel=1e-5)


def test_distance_is_zero_for_a_map_that_scales_distances():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    assert distance_loss(x, 0.3 * x - 0.2).item() == pytest.approx(0, abs=1e-5)
    assert self_distance_loss(x, 0.3 * x - 0.2).item() == pytest.approx(0, abs=1e-5)
    # the same pixel shuffle for every image keeps every distance; G(x_i) = x_pi(i) does not
    assert distance_loss(x, x[:, :, torch.randperm(8, generator=g)]).item() == pytest.approx(0, abs=1e-5)
    shuffled = x[torch.tensor([1, 2, 3, 4, 5, 0])]
    assert distance_loss(x, shuffled).item() > 0.05 and self_distance_loss(x, shuffled).item() > 0.05


def test_self_distance_compares_left_and_right_halves():
    # 1x2 images [a, b]: the self-distance is |a - b|. x: 0, 1, 2 -> standardised (-1, 0, 1) * sqrt(3/2)
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]]).view(3, 1, 1, 2)
    same_order = torch.tensor([[0.0, 0.5], [0.0, 0.7], [0.0, 0.9]]).view(3, 1, 1, 2)
    reversed_order = torch.tensor([[0.0, 2.0], [0.0, 1.0], [0.0, 0.0]]).view(3, 1, 1, 2)
    assert self_distance_loss(x, same_order).item() == pytest.approx(0, abs=1e-5)
    assert self_distance_loss(x, reversed_order).item() == pytest.approx(2 * 2 * math.sqrt(1.5) / 3, rel=1e-5)


# -- gradients: into G, never into the frozen network ------------------------------------------


@pytest.mark.parametrize("term", ["constancy", "perceptual", "distance", "self_distance"])
def test_gradients_reach_the_generator_and_never_the_frozen_task_model(term):
    torch.manual_seed(0)
    task = freeze(build_task_model("small_cnn", 1, 10, width=4))
    before = {k: v.clone() for k, v in task.state_dict().items()}
    G = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    kind = KINDS["classification"]
    loss = {"constancy": lambda: constancy_loss(lambda t: kind.gap_features(task, t), x, G(x)),
            "perceptual": lambda: perceptual_loss(lambda t: kind.encoder_layers(task, t), x, G(x)),
            "distance": lambda: distance_loss(x, G(x)),
            "self_distance": lambda: self_distance_loss(x, G(x))}[term]()
    loss.backward()
    assert G.weight.grad is not None and G.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.parameters())
    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())   # BN statistics too


def test_small_cnn_maps_are_its_three_blocks():
    model = build_task_model("small_cnn", 1, 10, width=4)
    maps = intermediate_features(model, torch.zeros(2, 1, 16, 16))
    assert [tuple(m.shape) for m in maps] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]


# -- the one-sided mode --------------------------------------------------------------------------


def gan(structure: str = "cycle", **weights: float) -> GanParams:
    cycle = {} if structure == "cycle" else {"cycle": 0.0}
    return GanParams(generator=GeneratorParams(4, 1, 2), discriminator=DiscriminatorParams(4, 2),
                     structure=structure, batch_size=4, pool_size=2,
                     weights=dataclasses.replace(LossWeights(), **cycle, **weights))


def model(params: GanParams) -> CycleGan:
    torch.manual_seed(0)
    task = build_task_model("small_cnn", 1, 10, width=4)
    return CycleGan(params, 1, task, KINDS["classification"], Precision(torch.device("cpu")), seed=0)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(4, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 10, (4,), generator=g),
            torch.rand(4, 1, 16, 16, generator=g) * 2 - 1)


def test_one_sided_trains_g_and_d_real_only():
    m = model(gan("one_sided", **FAMILY))
    assert m.nets.F is None and m.nets.D_source is None and [n for n, _ in m.nets.items()] == ["G", "D_real"]
    optimised = {id(p) for group in (m.opt_G, m.opt_D) for g in group.param_groups for p in g["params"]}
    assert optimised == {id(p) for _, net in m.nets.items() for p in net.parameters()}
    before = {name: [p.clone() for p in net.parameters()] for name, net in m.nets.items()}
    terms = m.train_step(*batch())
    assert set(terms) == {"adv_g", "identity_real", "similarity", "task", *FAMILY, "g_total", "d_real", "lp_real",
                          "d_total"}
    assert all(torch.isfinite(v) for v in terms.values())
    for name, net in m.nets.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), f"{name} did not train"


def test_one_sided_state_round_trips_and_refuses_a_two_sided_checkpoint():
    one = model(gan("one_sided"))
    one.train_step(*batch())
    state = one.state_dict()
    assert set(state["networks"]) == {"G", "D_real"} and state["pools"]["source"] is None
    fresh = model(gan("one_sided"))
    fresh.load_state_dict(state)
    x, labels, y = batch(1)
    assert torch.equal(fresh.train_step(x, labels, y)["g_total"], one.train_step(x, labels, y)["g_total"])
    with pytest.raises(ValueError, match="gan.structure"):
        model(gan("cycle")).load_state_dict(state)


def test_cycle_mode_builds_its_networks_as_before():
    """Same seed, same four networks in the same order: the new option leaves the default's numbers alone."""
    torch.manual_seed(3)
    nets = Networks.build(gan("cycle"), 1)
    torch.manual_seed(3)
    one = Networks.build(gan("one_sided"), 1)
    assert [n for n, _ in nets.items()] == ["G", "F", "D_real", "D_source"]
    assert all(torch.equal(a, b) for a, b in zip(nets.G.state_dict().values(), one.G.state_dict().values()))


def test_new_terms_are_computed_only_when_weighted():
    terms = model(gan("cycle")).train_step(*batch())
    assert not set(FAMILY) & set(terms)
    terms = model(gan("cycle", **FAMILY)).train_step(*batch())
    assert set(FAMILY) <= set(terms) and {"adv_f", "cycle_source", "d_source", "lp_source"} <= set(terms)


@pytest.mark.parametrize("raw, key", [
    ({"gan": {"structure": "one_sided"}}, "gan.weights.cycle"),
    ({"gan": {"structure": "both"}}, "gan.structure"),
    ({"gan": {"batch_size": 2, "weights": {"distance": 1.0}}}, "gan.batch_size"),
    ({"gan": {"weights": {"perceptual": -1.0}}}, "gan.weights.perceptual"),
])
def test_config_errors_name_the_key(tiny_raw, raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_params(deep_update(tiny_raw, raw))


def test_one_sided_stage_run_exports_g_and_diagnostics_without_f(project, tiny_raw):
    write_params(project, tiny_raw, structure="one_sided", weights={"cycle": 0.0, **FAMILY})
    run_stage(project)
    metrics = json.loads((project / "reports/gan/metrics.json").read_text())
    assert metrics["finished"] is True and not any(k.startswith(("d_source/", "loss/d_source", "loss/adv_f"))
                                                   for k in metrics)
    for key in ("loss/constancy", "loss/perceptual", "loss/distance", "loss/self_distance", "d_real/acc_fake",
                "task/acc_translated_val", "gap/fd_translated_real"):
        assert np.isfinite(metrics[key]), key
    checkpoint = torch.load(project / "checkpoints/gan/last.pt", weights_only=True)
    assert set(checkpoint["networks"]) == {"G", "D_real"}
    from pipeline.gan.export import load_generator
    generator, _ = load_generator(project / "models/gan/generator.pt")
    assert generator(torch.zeros(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    # the sample grid has four rows (source, G(source), real, G(real)) of 16 px images, 2 px apart, scale 3
    from PIL import Image
    assert Image.open(project / "reports/gan/samples.png").size[1] == (4 * (16 + 2) + 2) * 3


@pytest.mark.parametrize("term", ["constancy", "perceptual"])
def test_detection_kind_gives_the_frozen_detector_s_features_with_gradients_to_g(term):
    from pipeline.config import DetectorParams
    from pipeline.detection.models import build_detector

    torch.manual_seed(0)
    detector = freeze(build_detector(DetectorParams(width=8), 1, 3, 32))
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    kind, G, x = KINDS["detection"], nn.Conv2d(1, 1, 3, padding=1), torch.rand(2, 1, 32, 32) * 2 - 1
    if term == "constancy":
        loss = constancy_loss(lambda t: kind.gap_features(detector, t), x, G(x))
    else:
        assert len(kind.encoder_layers(detector, x)) == 2   # the body's last two levels
        loss = perceptual_loss(lambda t: kind.encoder_layers(detector, t), x, G(x))
    loss.backward()
    assert G.weight.grad.abs().sum() > 0 and all(p.grad is None for p in detector.parameters())
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())


def test_one_sided_epoch_log_names_no_d_source(project, tiny_raw, caplog):
    write_params(project, tiny_raw, structure="one_sided", weights={"cycle": 0.0})
    with caplog.at_level("INFO", logger="pipeline.gan.trainer"):
        run_stage(project)
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 2 and all("D_real acc" in m and "D_source" not in m and "nan" not in m for m in epochs)


def test_one_sided_run_is_tracked_in_mlflow_with_its_structure_and_no_d_source(project, tiny_raw, monkeypatch):
    """With MLflow on (as users run it): the train_gan run records gan.structure and the new weights,
    G's and D_real's metrics, no D_source metric, and a sample grid per epoch."""
    import mlflow

    write_params(project, tiny_raw, structure="one_sided", weights={"cycle": 0.0, "distance": 0.5})
    uri = f"sqlite:///{project / 'mlflow.db'}"
    for key, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "one-sided",
                       "SIM2REAL_TRACKING": "on", "DVC_EXP_NAME": "one-sided"}.items():
        monkeypatch.setenv(key, value)
    run_stage(project)

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["one-sided"])
    gan_run = runs[runs["tags.stage"] == "train_gan"].iloc[0]
    assert gan_run["params.gan.structure"] == "one_sided" and float(gan_run["params.gan.weights.distance"]) == 0.5
    assert np.isfinite(gan_run["metrics.loss/distance"]) and np.isfinite(gan_run["metrics.d_real/acc_fake"])
    assert not [c for c in runs.columns if c.startswith(("metrics.d_source/", "metrics.loss/adv_f"))]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(gan_run["run_id"], "samples")}
    assert "samples/epoch_001.png" in artifacts

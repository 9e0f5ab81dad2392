"""AdaBN: a variant with ``target_bn: true`` exports BatchNorm statistics of the real training images."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.task.batchnorm import adapt_batchnorm
from pipeline.task.export import load_task_model
from pipeline.task.train import export_task_model
from tinydata import RecordingTracker, train_tiny_variant


def test_statistics_become_those_of_the_images_and_weights_stay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 1), nn.Dropout(0.9), nn.BatchNorm2d(3))
    model[0].running_mean.fill_(5.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = torch.randn(64, 2, 4, 4) * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) + torch.tensor([3.0, -1.0]).view(1, 2, 1, 1)
    model.train()
    assert adapt_batchnorm(model, TensorDataset(x, torch.zeros(64)), batch_size=64) == 2
    assert model.training and model[0].momentum == 0.1          # mode and momentum restored
    flat = x.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(model[0].running_mean, flat.mean(1))
    torch.testing.assert_close(model[0].running_var, flat.var(1, unbiased=True))
    with torch.no_grad():                                        # the second layer sees the first's output, without dropout
        z = model[1](model[0].eval()(x)).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(model[3].running_mean, z.mean(1), rtol=1e-4, atol=1e-5)
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert adapt_batchnorm(model, TensorDataset(torch.randn(8, 3), torch.zeros(8))) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("target_bn", [False, True])
def test_variant_flag_exports_real_image_statistics(tmp_path, target_bn):
    result, prepared = train_tiny_variant(tmp_path, target_bn=target_bn)
    export_task_model(result, tmp_path / "model", RecordingTracker())
    model, _ = load_task_model(tmp_path / "model" / "model.pt")
    first = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # the first BatchNorm follows a convolution without bias: its running mean is the real images'
    # mean response of that convolution when (and only when) target_bn is on
    from pipeline.data.manifest import ImageSet
    from tinydata import CLASSES, SIZE
    real = torch.stack([x for x, _ in ImageSet(prepared / "target" / "train", CLASSES, 1, SIZE, labels=False)])
    with torch.no_grad():
        expected = model.features[0](real).transpose(0, 1).reshape(first.num_features, -1).mean(1)
    assert torch.allclose(first.running_mean, expected, atol=1e-5) is target_bn
    assert result.metrics["target_bn"] is target_bn
    assert result.metrics.get("target_bn_layers", 0) == (3 if target_bn else 0)


def test_statistics_of_class_sorted_images_are_those_of_the_whole_set():
    """prepare writes an imagefolder target sorted by class: batches walked in order then hold one
    class each. The statistics must still be the whole set's (mean 0, variance 1 here), not the
    average of within-batch variances (about 0) nor weighted by a short last batch."""
    x = torch.cat([torch.full((300, 1, 2, 2), -1.0), torch.full((200, 1, 2, 2), 1.5)])   # sorted by class
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1))
    nn.init.constant_(model[1].weight, 2.0)
    adapt_batchnorm(model, TensorDataset(x, torch.zeros(500)), batch_size=256)
    values = x.flatten().double()
    mean, var = values.mean(), values.var(unbiased=True)
    torch.testing.assert_close(model[0].running_mean.double(), mean.view(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(model[0].running_var.double(), var.view(1), rtol=1e-5, atol=1e-6)
    # the second layer sees the first one's output with its new statistics: 2 (x - mean) / sqrt(var + eps)
    z = 2 * (values - mean) / torch.sqrt(var + model[0].eps)
    torch.testing.assert_close(model[2].running_mean.double(), z.mean().view(1), rtol=0, atol=1e-5)
    torch.testing.assert_close(model[2].running_var.double(), z.var(unbiased=True).view(1), rtol=1e-4, atol=1e-5)


def test_statistics_do_not_depend_on_the_order_of_the_images():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    x = torch.cat([torch.randn(150, 1, 8, 8) - 2, torch.randn(150, 1, 8, 8) * 3 + 1])
    adapt_batchnorm(model, TensorDataset(x, torch.zeros(300)), batch_size=64)
    sorted_stats = [b.clone() for b in model.buffers()]
    adapt_batchnorm(model, TensorDataset(x[torch.randperm(300)], torch.zeros(300)), batch_size=64)
    for before, after in zip(sorted_stats, model.buffers()):
        torch.testing.assert_close(before.double(), after.double(), rtol=1e-5, atol=1e-5)

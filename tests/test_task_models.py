"""Task model construction (small CNN and timm), feature/head split and rebuild from config."""

import pytest
import torch

from pipeline.task.models import (
    SmallCNN,
    build_task_model,
    classify_features,
    extract_features,
    feature_dim,
    model_from_config,
)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_small_cnn_output_shape(channels, size):
    torch.manual_seed(0)
    model = build_task_model("small_cnn", channels, 10, width=8)
    assert isinstance(model, SmallCNN)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 10)
    assert feature_dim(model) == 32


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_features_and_head_compose_to_forward(name):
    torch.manual_seed(0)
    model = build_task_model(name, 1, 10, width=8).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        features = extract_features(model, x)
        logits = classify_features(model, features)
        direct = model(x)
    assert features.shape == (2, feature_dim(model))
    assert direct.shape == (2, 10)
    assert torch.allclose(logits, direct, atol=1e-5)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError) as err:
        build_task_model("no_such_net_42", 1, 10)
    message = str(err.value)
    assert "task.model" in message and "no_such_net_42" in message
    assert "timm.list_models()" in message


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_model_from_config_rebuilds_same_architecture(name):
    torch.manual_seed(0)
    model = build_task_model(name, 3, 5, width=8)
    assert model.sim2real_config == {"name": name, "in_channels": 3, "num_classes": 5, "width": 8}
    rebuilt = model_from_config(dict(model.sim2real_config))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval(), rebuilt.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), rebuilt(x))

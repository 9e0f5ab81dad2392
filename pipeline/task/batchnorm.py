"""Target BatchNorm statistics (AdaBN, Li et al. 2016, "Revisiting Batch Normalization for Practical
Domain Adaptation").

A network with BatchNorm normalises each channel ``c`` by running statistics collected on its
training images. AdaBN replaces them with the statistics of the unlabelled target images, every
learned weight unchanged. They are computed exactly, over the whole set, layer after layer: with
``z_c(x, p)`` the input of BatchNorm channel ``c`` at position ``p`` of image ``x`` (the network in
eval mode, every earlier BatchNorm layer already using its new statistics),

    mu_c      = mean_{x, p}  z_c(x, p)
    sigma2_c  = sum_{x, p} (z_c(x, p) - mu_c)^2 / (N - 1)    (N = images x positions values; unbiased,
                                                            as torch keeps running_var)

so the statistics are those of the activations the exported model will see on the real images, and
they do not depend on the order of the images. (Averaging per-batch statistics over batches walked in
order, the textbook one-pass recipe, underestimates the variance when the images come sorted by
class, as prepare writes an imagefolder target: each batch then holds one or two classes and the
variance between classes is lost; and a short last batch would weigh as much as a full one.)

It needs no labels and one forward pass per BatchNorm layer, each stopped at that layer; a variant
asks for it with ``target_bn: true``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.task.clustering import ordered_batches


class _Reached(Exception):
    """Raised by the hook once the layer being measured has seen its input: the rest of the forward is not needed."""


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics, in the order ``model.modules()`` lists them."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _in_forward_order(layers: list[nn.Module], model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """``layers`` in the order one forward of ``x`` reaches them (a layer the forward never reaches is
    left out: it sees no image, so it has no statistics to take)."""
    order: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda module, _inputs: order.append(module)) for m in layers]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


def _channel_moments(layer: nn.Module, model: nn.Module, images: Dataset, device, batch_size: int,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, sigma2)`` per channel of ``layer``'s input over every image and position (float64 sums)."""
    sums: list[torch.Tensor] = []

    def hook(_module, inputs):
        z = inputs[0].detach().double().transpose(0, 1).flatten(1)      # (C, N * positions)
        moments = torch.stack([torch.full_like(z[:, 0], z.shape[1]), z.sum(1), (z * z).sum(1)])
        sums.append(moments)
        raise _Reached

    handle = layer.register_forward_pre_hook(hook)
    try:
        for x in ordered_batches(images, batch_size):
            try:
                model(x.to(device))
            except _Reached:
                pass
    finally:
        handle.remove()
    if not sums:
        raise ValueError(f"AdaBN: a BatchNorm layer saw no input ({len(images)} images)")
    count, total, squares = torch.stack(sums).sum(0)
    mean = total / count
    return mean, ((squares - count * mean * mean) / (count - 1).clamp_min(1.0)).clamp_min(0.0)


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, images: Dataset, device: torch.device | str = "cpu",
                    batch_size: int = 256) -> int:
    """Replace every BatchNorm layer's running mean and variance by the statistics of ``images``
    (formulas in the module docstring), in place; the model is measured in eval mode and gets its
    own mode back. Returns the number of BatchNorm layers updated (0: the model has none)."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    was_training = model.training
    model.eval()
    try:
        first = next(ordered_batches(images, min(batch_size, 2)))
        layers = _in_forward_order(layers, model, first.to(device))
        for layer in layers:
            mean, var = _channel_moments(layer, model, images, device, batch_size)
            layer.running_mean.copy_(mean.to(layer.running_mean))
            layer.running_var.copy_(var.to(layer.running_var))
    finally:
        model.train(was_training)
    return len(layers)

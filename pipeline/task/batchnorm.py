"""Target BatchNorm statistics (AdaBN, Li et al. 2016, "Revisiting Batch Normalization for Practical
Domain Adaptation").

A network with BatchNorm normalises each channel ``c`` by running statistics collected on its
training images. AdaBN replaces them with the statistics of the unlabelled target images:

    mu_c      = mean_b  E_{x in batch b}[ z_c(x) ]          z_c: the input of BatchNorm channel c
    sigma2_c  = mean_b  Var_{x in batch b}[ z_c(x) ]        (the average over batches of the batch
                                                             statistics, in one pass, in order)

with every learned weight unchanged. It needs no labels and one forward pass over the real training
images; a variant asks for it with ``target_bn: true``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, images: Dataset, device: torch.device | str = "cpu",
                    batch_size: int = 256) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance on ``images`` (formula in the
    module docstring), in place; other layers stay in eval mode (no dropout). Returns the number of
    BatchNorm layers updated (0: the model has none and is left as it was)."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    was_training = model.training
    saved = [(m.momentum, m.training) for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None          # cumulative average over the batches
        m.train()
    try:
        for x, _ in DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=0):
            model(x.to(device))
    finally:
        for m, (momentum, training) in zip(layers, saved):
            m.momentum, m.training = momentum, training
        model.train(was_training)
    return len(layers)

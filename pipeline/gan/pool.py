"""History buffer of generated images (Shrivastava et al. 2017; used by CycleGAN).

The discriminator is updated on a mix of the newest fakes and older ones, which damps oscillation.
The pool owns its random generator and is checkpointable, so a resumed run draws exactly what an
uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    """A buffer of up to ``size`` generated images; ``size=0`` makes :meth:`query` a passthrough."""

    def __init__(self, size: int, seed: int = 0) -> None:
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"pool size must be an integer >= 0, got {size!r}")
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch the same shape as ``images`` (detached, on their device).

        Each image is stored and returned while the pool is not full; afterwards, with probability
        0.5 a random stored image is returned and replaced by the new one, otherwise the new one is
        returned unchanged.
        """
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            stored = image.cpu().clone()
            if len(self.images) < self.size:
                self.images.append(stored)
                out.append(image)
            elif torch.rand((), generator=self.generator).item() < 0.5:
                index = int(torch.randint(self.size, (), generator=self.generator))
                out.append(self.images[index].to(device=image.device, dtype=image.dtype))
                self.images[index] = stored
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        """The stored images (CPU clones) and the generator state."""
        return {"images": [image.clone() for image in self.images],
                "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; later queries then match the original pool's exactly."""
        images = list(state["images"])
        if len(images) > self.size:
            raise ValueError(f"state holds {len(images)} images, more than the pool size {self.size}")
        self.images = [image.detach().cpu().clone() for image in images]
        self.generator.set_state(state["rng"].clone())

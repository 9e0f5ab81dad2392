"""A variant of ``params.yaml`` resolved once: its entry, budget, folders, label use and identity.

``Variant.resolve(params, name, prepared)`` looks the name up once (an unknown name is a
:class:`~pipeline.config.ConfigError`) and everything the training loop needs to know about the
variant follows from the resolved object: its optimiser steps (its own ``steps``, else ``task.steps``)
and steps per round (``task.eval_every``), both scaled by ``budget``
(:meth:`~pipeline.config.Params.effective_task`), where its source-val score is measured, whether it
learns from real labels, and the hash of the params that shape it (part of its checkpoint's
fingerprint; ``budget`` counts in it when it is not 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from pipeline.config import Params, VariantParams
from pipeline.data.manifest import label_origin
from pipeline.reproducibility import code_digest, content_digest

PREPARED = Path("data/prepared")
SOURCE_VAL = "source/val"
TARGET_TRAIN = "target/train"
TARGET_LABELLED = "target/labelled"   # a few labelled real images a variant may train on (labelled_batch > 0)
TARGET_PICK = "target/pick"           # labelled real images no variant trains on: the report chooses with them
FINGERPRINT_SECTIONS = ("seed", "data", "augment", "task", "budget")   # budget: hashed only when not 1


@dataclass(frozen=True)
class Variant:
    """One variant, resolved: its ``name``, its ``entry`` of ``params.yaml`` and the prepared data root."""

    name: str
    entry: VariantParams
    steps: int                  # optimiser steps: the entry's own ``steps``, else ``task.steps``, x budget
    eval_every: int             # steps per round: ``task.eval_every`` x budget
    prepared: Path = PREPARED

    @classmethod
    def resolve(cls, params: Params, name: str, prepared: str | Path = PREPARED) -> "Variant":
        entry = params.variant(name)
        effective = params.effective_task(name)
        return cls(name, entry, effective["steps"], effective["eval_every"], Path(prepared))

    @property
    def rounds(self) -> int:
        """Rounds of :attr:`eval_every` steps (the last one may be shorter)."""
        return math.ceil(self.steps / self.eval_every)

    @property
    def val(self) -> Path:
        """Where the source-val score is measured: the entry's own ``val`` (labelled images of the domain
        it trains on, e.g. the translated validation renders), else ``<prepared>/source/val``."""
        return Path(self.entry.val) if self.entry.val else self.prepared / SOURCE_VAL

    def split(self, name: str) -> Path:
        """A prepared split, e.g. ``target/train``."""
        return self.prepared / name

    def label_origins(self) -> list[Optional[str]]:
        """The ``LABEL_ORIGIN`` marks of the train and val folders."""
        return [label_origin(folder) for folder in (self.entry.train, self.val)]

    def uses_target_labels(self) -> Optional[bool]:
        """Whether the variant learns from, or is selected on, labels of real images: True when it reads
        the few labelled real images (``labelled_batch > 0``) or its train or val folder is marked ``real``
        (:data:`~pipeline.data.manifest.LABEL_ORIGIN_FILE`, which prepare writes into every split and
        translate and copies carry along, so a copy or a translation of labelled real images still
        counts, wherever it lies); None when a folder has no mark (unknown: the report never picks such a
        variant); else False."""
        if self.entry.labelled_batch:
            return True
        origins = self.label_origins()
        if "real" in origins:
            return True
        return None if None in origins else False

    def few_target_labels(self) -> bool:
        """True when the only real labels the variant reads are the few of ``target/labelled``: it may be
        chosen (with labels to choose by), unlike the oracle, which needs every real training label."""
        return bool(self.entry.labelled_batch) and "real" not in self.label_origins()

    def params_hash(self, params: Params) -> str:
        """Hash of the params sections that shape training (``budget`` only when not 1, so budget 1 keeps
        the hashes made before it existed) plus the variant's own entry."""
        entry = dataclasses.asdict(self.entry)
        blob = json.dumps({"params": params.fingerprint(*FINGERPRINT_SECTIONS), "variant": self.name, "entry": entry},
                          sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def run_fingerprint(self, params: Params, data_folders: Iterable[str | Path]) -> str:
        """Identity of a training run for its checkpoint: params, the project's code and data contents.

        When any of them changes DVC reruns the stage, and the persisted checkpoint (made from the old
        inputs) must then not be resumed.
        """
        parts = [self.params_hash(params), code_digest(), content_digest(data_folders)]
        return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]

"""The export formats: a module written to bytes, with a runner that runs what was written.

* ``torchscript`` (``<name>.torchscript.pt``, ``torch.jit.load``): traced with :func:`torch.jit.trace` on
  real images. Tracing, not scripting: ``torch.jit.script`` refuses the detector's FPN
  (:mod:`pipeline.detection.models`: a ``Sequence`` annotation, a ModuleList indexed by a variable),
  and a trace of the fixed-size network records every operation it runs. A trace replays the path
  its example took, so the export check (:mod:`pipeline.ship.export`) runs it on other images and
  another batch size before anything is written. The runner is the traced module that is saved: the
  package loads no TorchScript file (nothing in ``pipeline/`` calls ``torch.jit.load``, which
  tests/test_hostile_input.py keeps so); tests/test_ship.py loads the written files.
* ``onnx`` (``<name>.onnx``, onnxruntime): torch's TorchScript-based exporter (``dynamo=False``,
  opset 17; it needs neither ``onnxscript`` nor ``torch.export``, which cannot export torchvision's
  detectors), with a dynamic batch axis for a batched model; the runner is an onnxruntime session on
  the bytes themselves.

A module takes a batch ``(N, C, H, W)`` or, per image, ``(C, H, W)``; a runner returns its outputs as
a tuple of numpy arrays. Everything stays in memory until the check passed: nothing touches the disk here.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.ship.defaults import FORMAT_NAMES

Runner = Callable[[torch.Tensor], tuple[np.ndarray, ...]]
ONNX_OPSET = 17


@dataclass(frozen=True)
class Format:
    name: str       # what --format names
    label: str      # what messages call it
    suffix: str     # the exported file is <name><suffix>
    build: Callable[[nn.Module, torch.Tensor, str, Sequence[str], bool], tuple[bytes, Runner]]


def as_arrays(outputs) -> tuple[np.ndarray, ...]:
    """A module's output (a tensor or a tuple of them) as a tuple of numpy arrays."""
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return tuple(o.detach().cpu().numpy() for o in outputs)


def export_torchscript(module: nn.Module, example: torch.Tensor, input_name: str, output_names: Sequence[str],
                       per_image: bool) -> tuple[bytes, Runner]:
    """``module`` traced on ``example``, saved (``torch.jit.save``) to bytes, and the traced module."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # tracer and deprecation warnings: the export check decides
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, buffer)

    def run(x: torch.Tensor) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            return as_arrays(traced(x))
    return buffer.getvalue(), run


def export_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_names: Sequence[str],
                per_image: bool) -> tuple[bytes, Runner]:
    """``module`` exported to ONNX (a dynamic batch axis unless ``per_image``) as bytes, checked by
    :func:`onnx.checker.check_model`, and an onnxruntime session on them."""
    import onnx

    axes = None if per_image else {name: {0: "batch"} for name in (input_name, *output_names)}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # the legacy exporter's deprecation notice, tracer warnings
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[input_name], output_names=list(output_names), dynamic_axes=axes)
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data, onnx_runner(data)


def onnx_runner(data: bytes) -> Runner:
    """An onnxruntime session (CPU, as many threads as torch uses) on the ONNX file ``data``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()   # as many threads as torch (OMP_NUM_THREADS)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3                           # errors only
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> tuple[np.ndarray, ...]:
        return tuple(np.asarray(o) for o in session.run(None, {name: x.detach().cpu().numpy()}))
    return run


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("torchscript", "TorchScript", ".torchscript.pt", export_torchscript),
    Format("onnx", "ONNX", ".onnx", export_onnx),
)}
assert tuple(FORMATS) == FORMAT_NAMES, "pipeline/ship/defaults.py lists the formats --format accepts"

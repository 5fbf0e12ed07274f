"""The live explorer's pieces: the generator exported to ONNX, and onnxruntime-web packed so that
a page opened from disk (``file://``) can run it.

A page opened from disk may load classic ``<script src>`` files and nothing else: ``fetch``, ES
module imports and WebAssembly streaming are refused for ``file://`` URLs. So everything the
runtime would fetch is written as a script that sets a global:

    explorer/ort/ort.wasm.min.js   onnxruntime-web's WebAssembly-only build (a classic script: ``ort``)
    explorer/ort/glue.js           its Emscripten glue module as text (imported from a blob: URL)
    explorer/ort/wasm.js           its ``.wasm`` binary in base64 (given as ``env.wasm.wasmBinary``)
    explorer/model.js              the generator's ONNX model in base64, and its input layout

The runtime comes from the npm registry (``./setup.sh --dev`` installs the pinned
:data:`ORT_WEB_VERSION` under ``.web/``); :func:`find_runtime` also honours ``$ORT_WEB_DIR``.
The model is the generator synthesis uses (the EMA one when the run has it): input ``x``
(N, input_dim) laid out as :func:`infogan_cells.model.latent.to_input` does (z, one-hot codes,
continuous codes), output ``image`` (N, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from infogan_cells.config import LatentSpec

log = logging.getLogger(__name__)

ORT_WEB_VERSION = "1.31.1"
#: The files of onnxruntime-web's ``dist/`` folder the page needs (single-threaded WebAssembly).
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MODEL_GLOBAL = "INFOGAN_LIVE"
OPSET = 18


def find_runtime() -> Path | None:
    """onnxruntime-web's ``dist/`` folder: ``$ORT_WEB_DIR`` when set, else the one ``./setup.sh --dev``
    installs in the checkout (``.web/node_modules/onnxruntime-web/dist``); None when it lacks a file."""
    env = os.environ.get("ORT_WEB_DIR")
    folder = (
        Path(env)
        if env
        else Path(__file__).resolve().parents[2] / ".web" / "node_modules" / "onnxruntime-web" / "dist"
    )
    return folder if all((folder / name).is_file() for name in RUNTIME_FILES) else None


def export_generator(G: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``G`` (in eval mode, on the CPU) to ``path`` as ONNX: ``x`` (N, input_dim) -> ``image``.

    Raises ImportError when ``onnx``/``onnxscript`` (the ``onnx`` extra) are missing.
    """
    import onnxscript  # noqa: F401  (torch's exporter needs it; fail early with a clear name)

    path = Path(path)
    cpu = _cpu_copy(G)
    x = torch.zeros(2, cpu.spec.input_dim)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter's own deprecation notices, and its log lines about torchvision ops we do not use
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                cpu,
                (x,),
                str(path),
                input_names=["x"],
                output_names=["image"],
                dynamo=True,
                opset_version=OPSET,
                dynamic_shapes={"x": {0: batch}},
                verbose=False,
                external_data=False,
            )
    finally:
        registration.setLevel(level)
    return path


def _cpu_copy(G: torch.nn.Module) -> torch.nn.Module:
    import copy

    cpu = copy.deepcopy(G).cpu().float().eval()
    for p in cpu.parameters():
        p.requires_grad_(False)
    return cpu


def write_live_files(
    G: torch.nn.Module, spec: LatentSpec, data_dir: str | os.PathLike, runtime: Path
) -> dict:
    """Export ``G`` and pack it and the runtime under ``data_dir`` (the report's ``explorer/``).

    Returns what the page needs to know (also written into ``model.js``): the script files to
    load, in order, and the input layout.
    """
    data_dir = Path(data_dir)
    ort_dir = data_dir / "ort"
    ort_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        model = export_generator(G, Path(tmp) / "G.onnx").read_bytes()
    info = {
        "z_dim": spec.z_dim,
        "categorical": list(spec.categorical),
        "n_continuous": spec.n_continuous,
        "range": spec.continuous_range,
        "input_dim": spec.input_dim,
        "img_size": int(G.img_size),
        "channels": int(G.channels),
        "input": "x",
        "output": "image",
        "opset": OPSET,
        "ort_web": ORT_WEB_VERSION,
        "model_bytes": len(model),
    }
    (data_dir / "model.js").write_text(
        f"window.{MODEL_GLOBAL} = {json.dumps(info)};\n"
        f'window.{MODEL_GLOBAL}.model = "{base64.b64encode(model).decode()}";\n'
    )
    (ort_dir / "ort.wasm.min.js").write_bytes((runtime / "ort.wasm.min.js").read_bytes())
    glue = (runtime / "ort-wasm-simd-threaded.mjs").read_text()
    (ort_dir / "glue.js").write_text(f"window.INFOGAN_ORT_GLUE = {json.dumps(glue)};\n")
    wasm = (runtime / "ort-wasm-simd-threaded.wasm").read_bytes()
    (ort_dir / "wasm.js").write_text(f'window.INFOGAN_ORT_WASM = "{base64.b64encode(wasm).decode()}";\n')
    log.info(
        "live explorer: generator exported to ONNX (%.1f kB), onnxruntime-web %s packed (%.1f MB)",
        len(model) / 1e3,
        ORT_WEB_VERSION,
        len(wasm) * 4 / 3 / 1e6,
    )
    return info


#: The scripts of the live explorer, relative to the report folder, in load order.
LIVE_SCRIPTS = (
    "explorer/ort/ort.wasm.min.js",
    "explorer/ort/glue.js",
    "explorer/ort/wasm.js",
    "explorer/model.js",
    "explorer/live.js",
)

__all__ = ["LIVE_SCRIPTS", "ORT_WEB_VERSION", "export_generator", "find_runtime", "write_live_files"]

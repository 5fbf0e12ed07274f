"""infogan-cells: labelled synthetic single-cell images from microscopy, with an InfoGAN.

Stages, each an importable function that works without Snakemake, in sub-packages named after
the pipeline's stages (docs/architecture.md): ``data.simulate.simulate_smears``,
``preprocess.crop.crop``, ``training.loop.train``, ``analysis.analyse.analyse``,
``synthesis.synthesise.synthesise`` / ``synthesis.gather.gather``. Readers of the outputs:
``SyntheticCells`` and ``CropDataset`` (torch Datasets over the synthetic set and the real
crops) and ``read_obs`` (the synthetic set's label table as a DataFrame).
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: importing the package must not import torch (the crop stage does not need it).
    if name in ("SyntheticCells", "CropDataset", "read_obs"):
        from infogan_cells.synthesis import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'infogan_cells' has no attribute {name!r}")

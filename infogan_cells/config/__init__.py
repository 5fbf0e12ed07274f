"""The pipeline's configuration: one frozen dataclass per stage, composed into one ``Config``.

The dataclasses are the single description of every parameter: their field metadata
(``help``, ``choices``, ``ge``/``le``) checks values, writes the JSON schema that Snakemake
validates against (``infogan-cells schema``), and documents each key. One YAML file serves
both ``snakemake --configfile FILE`` and ``infogan-cells <stage> --config FILE``; each stage
reads its own section.

Modules: :mod:`~infogan_cells.config.fields` (``param``), one module per group of stages
(:mod:`~infogan_cells.config.inputs`, :mod:`~infogan_cells.config.training`,
:mod:`~infogan_cells.config.stages`), :mod:`~infogan_cells.config.load` (YAML in and out) and
:mod:`~infogan_cells.config.schema`. Everything is imported from here.

Runtime settings (threads, which GPU) are not experiment config; ``device`` is the one
exception, since it changes numerics.
"""

from infogan_cells.config.fields import param
from infogan_cells.config.inputs import CropConfig, InputConfig, SimulateConfig
from infogan_cells.config.load import (
    dump_config,
    from_mapping,
    load_config,
    parse_set_option,
    read_config_file,
    to_dict,
)
from infogan_cells.config.schema import schema_of
from infogan_cells.config.stages import AnalyseConfig, Config, SynthConfig
from infogan_cells.config.training import AugmentConfig, LatentSpec, TrainConfig
from infogan_cells.errors import ConfigError

__all__ = [
    "AnalyseConfig",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "CropConfig",
    "InputConfig",
    "LatentSpec",
    "SimulateConfig",
    "SynthConfig",
    "TrainConfig",
    "dump_config",
    "from_mapping",
    "load_config",
    "param",
    "parse_set_option",
    "read_config_file",
    "schema_of",
    "to_dict",
]

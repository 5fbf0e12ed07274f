"""The config: unknown keys and bad values are refused by name; the schema and the default
config file stay in step with the dataclasses."""

from __future__ import annotations

import json

import pytest
import yaml

from infogan_cells.cli import main
from infogan_cells.config import Config, ConfigError, LatentSpec, load_config, parse_set_option, schema_of


def test_defaults_load_without_a_file():
    cfg = load_config()
    assert cfg == Config()
    assert LatentSpec(z_dim=62, categorical=[10, 4], n_continuous=2).input_dim == 62 + 14 + 2


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_sise: 64\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: config key 'train\.batch_sise' does not exist"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train": {"batch_size": 0}}, r"'train\.batch_size': 0 must be >= 2"),
        ({"train": {"lr_g": "fast"}}, r"'train\.lr_g': expected a number"),
        ({"train": {"loss": "wasserstein"}}, r"'train\.loss': 'wasserstein' is not one of"),
        ({"crop": {"percentiles": [99, 1]}}, r"'crop\.percentiles': expected \[low, high\]"),
        ({"train": {"latent": {"categorical": [1]}}}, r"'train\.latent\.categorical'"),
        ({"simulate": {"stage_fractions": {"merozoite": 0.1}}}, r"'simulate\.stage_fractions\.merozoite'"),
        ({"train": {"seeds": []}}, r"'train\.seeds'"),
        ({"input": {"segment": "yes"}}, r"'input\.segment': expected true or false"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


# Rules between keys: each is refused when the config is read, naming the keys involved
# (tests/workflow/test_dag.py checks that the workflow refuses them before any job).
CROSS_FIELD = [
    ({"train": {"batch_size": 1}}, r"'train\.batch_size': 1 must be >= 2"),
    (
        {"train": {"q_overcluster": 5, "lambda_pair_mi": 0}},
        r"'train\.q_overcluster': .* set train\.lambda_pair_mi above 0",
    ),
    (
        {"train": {"prior": "learned", "prior_floor": 0.5}},
        r"'train\.prior_floor': 0\.5 x 10 categories exceeds 1 \(with train\.prior: learned",
    ),
    (
        {"train": {"diff_augment": {"rot90": False, "flip": False, "shift": 0}}},
        r"'train\.lambda_pair_mi': needs diff_augment .* every train\.diff_augment transform is off",
    ),
    (
        {"train": {"prior": "learned", "latent": {"categorical": []}, "lambda_pair_mi": 0}},
        r"'train\.prior': 'learned' needs a categorical code \(train\.latent\.categorical is empty\)",
    ),
    (
        {"train": {"latent": {"categorical": []}}},
        r"'train\.lambda_pair_mi': needs a categorical code \(train\.latent\.categorical is empty\)",
    ),
    (
        {"train": {"conditional_d": True, "latent": {"categorical": []}, "lambda_pair_mi": 0}},
        r"'train\.conditional_d': needs a categorical code \(train\.latent\.categorical is empty\)",
    ),
    (
        {"train": {"supervised_fraction": 0.1, "latent": {"categorical": []}, "lambda_pair_mi": 0}},
        r"'train\.supervised_fraction': semi-supervision needs a categorical code",
    ),
]


@pytest.mark.parametrize(("override", "message"), CROSS_FIELD)
def test_cross_field_rules_are_refused_when_the_config_is_read(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(override))
    with pytest.raises(ConfigError, match=r"c\.yaml: config key " + message):
        load_config(path)


@pytest.mark.parametrize(
    "override",
    [
        {"train": {"batch_size": 2}},
        {"train": {"q_overcluster": 50}},  # with lambda_pair_mi at its default (1)
        {"train": {"prior": "learned", "prior_floor": 0.1}},  # 10 categories x 0.1 = 1: allowed
        {"train": {"diff_augment": {"rot90": False, "flip": False, "shift": 0}, "lambda_pair_mi": 0}},
        {"train": {"diff_augment": {"rot90": False, "flip": False, "shift": 0, "brightness": 0.1}}},
    ],
)
def test_cross_field_rules_allow_the_edge_cases(override):
    load_config(overrides=[override])


def test_set_option_parses_yaml_values():
    assert parse_set_option("train.latent.categorical=[4, 6]") == {
        "train": {"latent": {"categorical": [4, 6]}}
    }
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set_option("train.batch_size")


def test_default_config_file_lists_every_key(repo_root):
    """config/config.yaml names every key (a user reads it as the reference) and loads."""
    data = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())

    def keys(schema, prefix=""):
        for name, sub in schema["properties"].items():
            if sub.get("type") == "object" and "properties" in sub:
                yield from keys(sub, f"{prefix}{name}.")
            else:
                yield prefix + name

    for key in keys(schema_of()):
        node = data
        for part in key.split("."):
            assert part in node, f"config/config.yaml lacks {key}"
            node = node[part]
    load_config(repo_root / "config" / "config.yaml")


def test_presets_load(repo_root):
    presets = sorted((repo_root / "config").glob("*.yaml"))
    assert len(presets) >= 1
    for path in presets:
        load_config(path)


def test_schema_file_is_current(repo_root):
    """workflow/schemas/config.schema.json is generated: `infogan-cells schema --out ...`."""
    on_disk = json.loads((repo_root / "workflow" / "schemas" / "config.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(schema_of())), (
        "regenerate with: infogan-cells schema --out workflow/schemas/config.schema.json"
    )


def test_schema_describes_every_key():
    def walk(schema, path="<root>"):
        assert schema.get("description"), f"{path} has no description"
        for name, sub in schema.get("properties", {}).items():
            walk(sub, f"{path}.{name}")

    walk(schema_of())


def test_cli_reports_a_bad_key_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("crop:\n  size: -3\n")
    assert (
        main(["crop", "--config", str(path), "--input", str(tmp_path), "--out", str(tmp_path / "x.h5")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("infogan-cells crop: error:")
    assert "crop.size" in err[-1]
    assert "Traceback" not in "\n".join(err)

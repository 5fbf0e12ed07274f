"""The conda environments of workflow/envs: every rule has one, and each holds what its rules import."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENVS = REPO / "workflow" / "envs"
# pip name -> conda-forge name, where they differ
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}


def rules() -> dict[str, dict[str, str]]:
    """rule name -> its directives' one-line values (conda, script, benchmark), from the .smk files."""
    found = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            found[name] = dict(re.findall(r"^    (conda|script|benchmark):\n\s+\"(.+?)\"", block, re.M))
    return found


def env_packages(path: Path) -> dict[str, str]:
    spec = yaml.safe_load(path.read_text())
    assert spec["channels"][0] == "conda-forge"
    return dict((re.split(r"\s+", dep.strip(), maxsplit=1) + [""])[:2] for dep in spec["dependencies"])


def test_every_rule_with_a_script_has_an_existing_environment():
    found = rules()
    assert {"crop_image", "train", "analyse", "synthesise_shard", "gather_synthesis"} <= set(found)
    for name, directives in found.items():
        assert "conda" in directives, name
        assert (REPO / "workflow" / "rules" / directives["conda"]).resolve().is_file(), name


def test_the_heavy_rules_write_benchmarks():
    found = rules()
    assert {n for n, d in found.items() if "benchmark" in d} == {
        "crop_image",
        "train",
        "analyse",
        "synthesise_shard",
    }


def test_the_torch_environment_holds_every_runtime_dependency_at_the_same_minimum():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = env_packages(ENVS / "torch.yaml")
    for dep in project["dependencies"]:
        name, _, minimum = re.match(r"([A-Za-z0-9_.-]+)(\[.*\])?(.*)", dep).groups()
        if name == "snakemake":
            continue  # runs the workflow; the jobs do not import it
        conda = CONDA_NAMES.get(name, name)
        assert conda in env, f"{conda} missing from workflow/envs/torch.yaml"
        assert env[conda].split(",")[0] == minimum.split(",")[0], (name, env[conda], minimum)


@pytest.mark.parametrize("env_name", ["cells.yaml"])
def test_rules_of_the_environment_without_torch_import_nothing_it_lacks(env_name):
    """Import every script's modules with the packages the environment lacks blocked."""
    env = set(env_packages(ENVS / env_name)) | {"python"}
    torch_env = set(env_packages(ENVS / "torch.yaml"))
    lacking = {({v: k for k, v in CONDA_NAMES.items()}).get(p, p) for p in torch_env - env}
    assert lacking == {"torch", "hdf5plugin"}
    scripts = [d["script"] for d in rules().values() if d.get("conda", "").endswith(env_name)]
    assert len(scripts) >= 3
    modules = sorted(
        {
            m
            for s in scripts
            for m in re.findall(
                r"^from (infogan_cells\S*) import",
                (REPO / "workflow" / "rules" / s).resolve().read_text(),
                re.M,
            )
        }
    )
    code = (
        f"import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {sorted(lacking)!r}: raise ImportError('blocked ' + name)\n"
        f"sys.meta_path.insert(0, Block())\n" + "".join(f"import {m}\n" for m in modules)
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr

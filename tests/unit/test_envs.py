"""The conda envs (`envs/*.yaml`, for `--software-deployment-method conda`) install what pyproject.toml pins."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(specs: list[str]) -> dict[str, str]:
    """Package name -> `extras + version specifier`, normalised so `a>=1,<2` equals `a<2,>=1`."""
    out = {}
    for spec in specs:
        req = Requirement(spec)
        out[req.name.lower().replace("_", "-")] = f"{sorted(req.extras)}{sorted(str(s) for s in req.specifier)}"
    return out


def env(name: str) -> tuple[list[str], list[str]]:
    """(conda packages, pip requirements) of envs/<name>.yaml; pip options such as --extra-index-url left out."""
    deps = yaml.safe_load((ROOT / "envs" / f"{name}.yaml").read_text())["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    return conda, [p for p in pip if not p.startswith("-")]


@pytest.mark.parametrize("name, extras", [("cpu", []), ("gpu", ["gpu"])])
def test_env_pins_what_pyproject_pins(name, extras):
    expected = PYPROJECT["dependencies"] + [r for e in extras for r in PYPROJECT["optional-dependencies"][e]]
    assert requirements(env(name)[1]) == requirements(expected)


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_env_python_satisfies_requires_python(name):
    python = next(d for d in env(name)[0] if d.startswith("python="))
    assert python.split("=", 1)[1] + ".0" in SpecifierSet(PYPROJECT["requires-python"])


def test_gpu_env_adds_cuda_torch_and_transformer_engine():
    conda, pip = env("gpu")
    options = next(d["pip"] for d in yaml.safe_load((ROOT / "envs/gpu.yaml").read_text())["dependencies"] if isinstance(d, dict))
    assert any("download.pytorch.org/whl/cu" in o for o in options)
    assert any(c.startswith("cuda-toolkit") for c in conda)
    assert "transformer-engine" in requirements(pip) and "transformer-engine" not in requirements(env("cpu")[1])

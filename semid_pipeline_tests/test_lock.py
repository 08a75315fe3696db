"""The lock (requirements.lock) pins what pyproject.toml asks for, and installs into a fresh virtualenv.

The install test builds a new virtualenv in a temporary folder (never the project's .venv; the pip
cache may be reused) and installs the package from the lock, as a new machine would. It takes a
minute or two, so the suite runs it only when SEMID_TEST_LOCK_INSTALL=1; `.ci/run` sets it.
"""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
LOCKED_EXTRAS = ("dev", "llm", "vision", "deploy")


def read_lock(path: Path = LOCK) -> dict:
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{path.name}:{n}: not a pin: {line!r}"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def test_lock_pins_every_requirement_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [r for e in LOCKED_EXTRAS for r in project["optional-dependencies"][e]]
    pins = read_lock()
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in requirements.lock: run bash scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}: run bash scripts/lock.sh"
        )
    assert "pip" in pins  # the installer is pinned too (scripts/setup.sh installs it first)


def test_setup_and_images_install_from_the_lock():
    for path in ("scripts/setup.sh", "Dockerfile", "Dockerfile.gpu"):
        text = (ROOT / path).read_text()
        installs = [l for l in text.splitlines() if "pip install" in l and not l.lstrip().startswith("#")]
        assert installs and all("requirements.lock" in l for l in installs), f"{path} installs without the lock: {installs}"


@pytest.mark.skipif(os.environ.get("SEMID_TEST_LOCK_INSTALL") != "1", reason="set SEMID_TEST_LOCK_INSTALL=1 (as .ci/run does) to install the lock into a fresh virtualenv")
def test_lock_installs_into_a_fresh_virtualenv(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "semid_pipeline", src / "semid_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")

    def pip(*args):
        subprocess.run([py, "-m", "pip", "install", "-q", *args], check=True, cwd=src)

    pip(f"pip=={read_lock()[canonicalize_name('pip')]}")
    pip("-c", "requirements.lock", "torch")
    pip("-c", "requirements.lock", ".")  # a wheel, not editable: package data must come along
    out = subprocess.run(
        [py, "-c", "from semid_pipeline.definitions import defs; import semid_pipeline, torch;"
         "print(semid_pipeline.__file__); print(defs.resolve_job_def('demo_pipeline').name); print(torch.__version__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""},
    ).stdout.split()
    assert out[0].startswith(str(venv)) and out[1] == "demo_pipeline" and out[2].startswith("2.13.0")
    subprocess.run([py, "-m", "pip", "check"], check=True)
    frozen = subprocess.run([py, "-m", "pip", "freeze", "--all"], check=True, capture_output=True, text=True).stdout
    pins = read_lock()
    for line in frozen.splitlines():
        name, _, version = line.partition("==")
        name = canonicalize_name(name)
        if name in ("semid-pipeline", "setuptools", "wheel") or not version:
            continue
        assert name in pins, f"{name}=={version} was installed but is not in requirements.lock"
        assert Version(version).public == pins[name].public, f"{name}: installed {version}, locked {pins[name]}"

"""The built wheel carries everything the package reads at run time.

An editable install reads schemas/ from the repository; a plain install (the
Docker image, `pip install stream-app`) has only what the wheel holds. This
test builds the wheel, installs it into an empty folder and imports the codec
from there, outside the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_schemas_and_the_codec_loads_them(tmp_path: Path) -> None:
    # Build from a copy: setuptools reuses a build/ folder left in the checkout.
    source, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("stream_app", "schemas"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(source)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("stream_app-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {Path(n).name for n in zf.namelist() if n.startswith("stream_app/schemas/")}
    assert shipped == {p.name for p in (ROOT / "schemas").glob("*.json")}

    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, cwd=tmp_path)
    probe = ("import stream_app.codec as c; print(c.__file__); "
             "print(len(c.load_schemas(c.SCHEMA_DIR)))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=tmp_path,
                         capture_output=True, text=True, env={"PYTHONPATH": str(target)})
    module_file, count = out.stdout.split()
    assert Path(module_file).is_relative_to(target)  # not the editable checkout
    assert int(count) == len(shipped)


def test_the_processes_tests_start_import_this_checkout(tmp_path: Path) -> None:
    """Two clones share the venv, whose editable install points at one of them: a trainer
    the tests of the other started ran the first clone's code (tests/conftest.py)."""
    probe = "import stream_app; print(stream_app.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=tmp_path,
                         capture_output=True, text=True).stdout.strip()
    assert Path(out).resolve() == ROOT / "stream_app" / "__init__.py"

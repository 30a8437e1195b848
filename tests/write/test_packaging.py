"""The wheel is complete: every subpackage, the shipped demo model, and the rule sets of the top-level rules/
folder (as xcompile/rules) -- so a plain `pip install xcompile` (not editable) has them."""
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_lists_every_subpackage():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "xcompile").rglob("__init__.py")}
    assert found | {"xcompile.rules"} == listed


def test_wheel_ships_rules_and_demo_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob("xcompile-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for rules in (ROOT / "rules").glob("*.toml"):
        assert f"xcompile/rules/{rules.name}" in names
    assert {"xcompile/rules/README.md", "xcompile/data/digits_cnn.onnx", "xcompile/data/digits_heldout.npz",
            "xcompile/backward/ops/linear.py", "xcompile/cli.py", "xcompile/web/page/index.html",
            "xcompile/web/page/app.js"} <= names

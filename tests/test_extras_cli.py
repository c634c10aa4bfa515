"""Every extras/ script runs as `python extras/NAME.py` from any folder (its first lines put the repo root on
sys.path), and the core never imports extras."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, usage", [("extras/metric_study.py", "usage: metric_study.py"),
                                           ("extras/fad.py", "usage: fad.py"),
                                           ("extras/report.py", "usage: report.py"),
                                           ("metrics.py", "usage: metrics.py")])
def test_help_from_another_folder(tmp_path, script, usage):
    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith(usage), done.stderr


def test_core_files_import_no_extras():
    for path in ROOT.glob("*.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+(\S+)", path.read_text(), re.M)
        assert not [m for m in imports if m.split(".")[0] == "extras"], path.name

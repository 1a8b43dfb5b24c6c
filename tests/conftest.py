import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_BENCH = str(ROOT / "run_bench.py")  # tests run it from their scratch folder, never from the checkout
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Caches and build products a test run may leave; everything else in the checkout is the project's.
NOT_PROJECT = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "mae_transfer_bench.egg-info"}


def project_files() -> set[Path]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in NOT_PROJECT]
        out |= {Path(dirpath, f) for f in filenames}
    return out


def pytest_sessionstart(session):
    session.config._files_before = project_files()


@pytest.fixture(autouse=True, scope="session")
def scratch_folder():
    """Tests run from a scratch folder, so relative paths (runs/, datasets/) never land in the checkout.
    Entered after collection (a fixture, not the session start), so that pytest-xdist's workers collect
    ``tests/`` from the checkout first."""
    cwd = os.getcwd()
    os.chdir(tempfile.mkdtemp(prefix="bench-tests-"))
    yield
    os.chdir(cwd)


def pytest_sessionfinish(session, exitstatus):
    new = sorted(project_files() - session.config._files_before)
    if new:
        shown = "\n  ".join(str(p.relative_to(ROOT)) for p in new[:10])
        print(f"\nthe tests wrote {len(new)} files into the repository (a test must write under tmp_path):\n  {shown}")
        session.exitstatus = 1

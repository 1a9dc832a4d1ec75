"""CI is honest: without the MNIST files it fails in one line, not passes with half the tests skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(
        r"^(python -m pip install -e '\.\[dev\]' .*?)\s+# install, run the tests$", readme, re.M
    )
    assert command, "the README's test command"
    assert command.group(1) in (ROOT / ".ci" / "run").read_text().splitlines()


def test_ci_fails_in_one_line_without_the_mnist_directory(tmp_path):
    missing = tmp_path / "no-mnist"
    stubs = tmp_path / "bin"  # were the check missing, no real `pip install -e` would run
    stubs.mkdir()
    for name in ("python", "pip", "pytest", "ruff"):
        (stubs / name).write_text(f"#!/bin/sh\necho {name} was called >&2\nexit 97\n")
        (stubs / name).chmod(0o755)
    env = {**os.environ, "DIGITBOT_MNIST_DIR": str(missing), "PATH": f"{stubs}:{os.environ['PATH']}"}
    done = subprocess.run([ROOT / ".ci" / "run"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"ci: error: no MNIST directory at {missing} (set DIGITBOT_MNIST_DIR to the four IDX files)"
    ]


def test_tests_fail_instead_of_skipping_when_data_is_required(tmp_path):
    env = {**os.environ, "DIGITBOT_MNIST_DIR": str(tmp_path / "no-mnist"), "DIGITBOT_REQUIRE_DATA": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_preprocess.py"]
    command += ["-k", "test_crop_is_mnist_like"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1, done.stdout
    assert (
        "1 error" in done.stdout
        and "MNIST IDX files not found" in done.stdout
        and "skipped" not in done.stdout
    )

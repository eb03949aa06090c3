"""The package as a user gets it: a wheel built from this checkout, installed (not editable) into a fresh environment,
used from a project of the user's own that holds `processing/`, `training/`, `evaluation/` and `conversion/`."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vilamp
from vilamp.testing import build_tiny_model, build_tiny_processor, write_synthetic_video

REPO_ROOT = Path(__file__).resolve().parents[1]
# the files a wheel is built from; copied out first, so that the build writes nothing into the checkout
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "vilamp")
# the folder names of ML projects that the package once claimed as top-level import names
USER_PACKAGES = ("processing", "training", "evaluation", "conversion")
# the README example's checkpoint and video, made here inside the user's project
README_MODEL_DIR, README_VIDEO = "vilamp-7b", "talk.mp4"


def readme_python_example() -> str:
    """The README's first Python block that imports from `vilamp`."""
    blocks = re.findall(r"^```python\n(.*?)^```", (REPO_ROOT / "README.md").read_text(encoding="utf-8"), re.M | re.S)
    examples = [block for block in blocks if "from vilamp import" in block]
    if not examples:
        pytest.fail("README.md has no ```python block with `from vilamp import`: the example this test runs.")
    return examples[0]


def run(command: list, **options) -> subprocess.CompletedProcess:
    """Runs `command`; fails showing its output if it fails."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **options)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel of this checkout installed; it sees the dependencies (not this
    package) through a .pth file naming the current environment's site-packages."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO_ROOT / name, source / name)
    dist = work / "dist"
    # built offline with this environment's setuptools; pip refuses a build constraint (CI pins its lanes' builds
    # with one) together with --no-build-isolation, and this build has no isolated environment to constrain
    build_env = {name: value for name, value in os.environ.items() if name != "PIP_BUILD_CONSTRAINT"}
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source],
        env=build_env,
    )
    (wheel,) = dist.glob("vilamp-*.whl")
    environment = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", environment])
    site_packages = next(environment.glob("lib/python*/site-packages"))
    dependency_dirs = [path for path in sys.path if path.endswith("site-packages")]
    (site_packages / "dependencies.pth").write_text("\n".join(dependency_dirs) + "\n")
    python = environment / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel])
    return environment


@pytest.mark.slow
def test_wheel_installs_one_import_name(environment):
    (dist_info,) = next(environment.glob("lib/python*/site-packages")).glob("vilamp-*.dist-info")
    assert (dist_info / "top_level.txt").read_text().split() == ["vilamp"]
    installed = {line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines()}
    top_level = {path.split("/")[0] for path in installed if not path.startswith(("../", dist_info.name + "/"))}
    # the console scripts `vilamp` and `vilamp-convert` go to bin/, outside site-packages
    assert top_level == {"vilamp"}
    assert (dist_info / "licenses" / "LICENSE").is_file()


@pytest.mark.slow
def test_readme_example_runs_in_a_project_with_its_own_processing_training_evaluation_conversion(
    environment, tmp_path
):
    project = tmp_path / "myproject"
    for name in USER_PACKAGES:
        (project / name).mkdir(parents=True)
        # if the package claimed this name, `from processing import ViLaMPProcessor` inside it would find this module
        (project / name / "__init__.py").write_text(f'OWNER = "myproject.{name}"\n')
    example = readme_python_example()
    assert README_MODEL_DIR in example and README_VIDEO in example, example
    build_tiny_model().save_pretrained(project / README_MODEL_DIR)
    build_tiny_processor().save_pretrained(project / README_MODEL_DIR)
    write_synthetic_video(project / README_VIDEO, num_frames=24)
    checks = textwrap.dedent(
        f"""
        import json
        import vilamp, {", ".join(USER_PACKAGES)}
        print(json.dumps({{
            "answer": answer,
            "vilamp": vilamp.__file__,
            "owners": [{", ".join(f"{name}.OWNER" for name in USER_PACKAGES)}],
            "version": vilamp.__version__,
        }}))
        """
    )
    (project / "example.py").write_text(example + checks, encoding="utf-8")
    result = run([environment / "bin" / "python", "example.py"], cwd=project)
    report = json.loads(result.stdout.splitlines()[-1])
    assert isinstance(report["answer"], str)
    assert Path(report["vilamp"]).is_relative_to(environment), "`vilamp` was not imported from the installed wheel"
    assert report["owners"] == [f"myproject.{name}" for name in USER_PACKAGES]
    assert report["version"] == vilamp.__version__

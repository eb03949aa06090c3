"""transformers' own common tests (ModelTesterMixin, ProcessorTesterMixin), taken from the sdist of the installed release.

The test files are not in the transformers wheel. The sdist of the installed version ships `tests/test_*_common.py`,
so the common tests always match the transformers they run against. The sdist lacks four modules those files import;
they are replaced by stand-ins named below, and the tests that need them are written in this repository instead.
"""

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "transformers_upstream_tests"
CACHE_DIR = Path(
    os.environ.get("VILAMP_TRANSFORMERS_TESTS_DIR", Path.home() / ".cache" / "vilamp" / "transformers-tests")
)


class GenerationTesterMixin:
    """Stand-in for `tests/generation/test_utils.py`, which the sdist does not ship. A test class that inherits it
    declares that it runs generation tests of its own: ViLaMP's are in `tests/modeling/test_generation_vilamp.py`."""


class ExportTesterMixin:
    """Stand-in for `tests/exporters/test_export.py`, which the sdist does not ship: no `torch.export` tests."""


# Stand-in for `tests/utils/test_configuration_utils.py`, which the sdist does not ship: the common fields of every config
# set to values other than their defaults. `ConfigTester.check_config_arguments_init` reads it, and returns before it
# does for a config with sub-configs, as ViLaMP's is.
CONFIG_COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": True,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}


def url_to_local_path(url, *args, **kwargs):
    """Stand-in for `utils/fetch_hub_objects_for_ci.py`: hub files cannot be fetched, so URLs stay URLs."""
    return url


def transformers_tests_dir(version: str = transformers.__version__) -> Path:
    """The directory holding the `tests/*.py` files of transformers `version`, extracted from its sdist on first use."""
    target = CACHE_DIR / version
    if (target / PACKAGE / "test_modeling_common.py").is_file():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as download_dir:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            download_dir,
            f"transformers=={version}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"Could not download the transformers {version} sdist for its common tests ({result.stderr.strip()}); "
                f"put its `tests/*.py` files in {target / PACKAGE} or set VILAMP_TRANSFORMERS_TESTS_DIR."
            )
        (sdist,) = Path(download_dir).glob("transformers-*.tar.gz")
        staging = Path(download_dir) / "staging" / PACKAGE
        staging.mkdir(parents=True)
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (staging / parts[2]).write_bytes(archive.extractfile(member).read())
        (staging / "__init__.py").touch()
        # another test process may have extracted it meanwhile: keep whichever landed first
        if not target.exists():
            staging.parent.rename(target)
    return target


def import_transformers_test_module(name: str) -> types.ModuleType:
    """Imports `tests/<name>.py` of the installed transformers release, e.g. `"test_modeling_common"`."""
    if PACKAGE not in sys.modules:
        root = transformers_tests_dir()
        sys.path.insert(0, str(root))
        stand_ins = {
            f"{PACKAGE}.generation": None,
            f"{PACKAGE}.generation.test_utils": {"GenerationTesterMixin": GenerationTesterMixin},
            f"{PACKAGE}.exporters": None,
            f"{PACKAGE}.exporters.test_export": {"ExportTesterMixin": ExportTesterMixin},
            f"{PACKAGE}.utils": None,
            f"{PACKAGE}.utils.test_configuration_utils": {"config_common_kwargs": CONFIG_COMMON_KWARGS},
            "fetch_hub_objects_for_ci": {"url_to_local_path": url_to_local_path},
        }
        for module_name, attributes in stand_ins.items():
            module = types.ModuleType(module_name)
            if attributes is None:
                module.__path__ = []  # a package, so that its stand-in submodule can be imported
            module.__dict__.update(attributes or {})
            sys.modules[module_name] = module
    return importlib.import_module(f"{PACKAGE}.{name}")


__all__ = ["GenerationTesterMixin", "import_transformers_test_module", "transformers_tests_dir"]

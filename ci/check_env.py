"""Checks that the running environment holds exactly the packages of a CI lane's constraints file.

    python ci/check_env.py CONSTRAINTS
        Exits 1, naming each problem, when an installed distribution is not pinned in CONSTRAINTS, is installed at
        another version or twice, or a pinned one is missing; or when `transformers` or `huggingface_hub` import a
        version other than the pinned one, or from outside this environment. Prints the versions it found.
    python ci/check_env.py --leftovers CONSTRAINTS BASE_CONSTRAINTS
        Prints the installed distributions that BASE_CONSTRAINTS pins and CONSTRAINTS does not: what a copy of the
        BASE_CONSTRAINTS lane still holds that this lane must uninstall.

The project itself (vilamp, installed editable) is not in the constraints files and is left out.
"""

import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

PROJECT = "vilamp"
IMPORTS_CHECKED = ("transformers", "huggingface_hub")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: str) -> dict[str, str]:
    result = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        if not separator or not version.strip():
            sys.exit(f"{path}: '{line}' is not an exact pin NAME==VERSION")
        result[canonical(name)] = version.strip()
    return result


def installed() -> tuple[dict[str, str], list[str]]:
    """Installed distributions in sys.path order (the first one of a name is the one imported), and duplicates."""
    versions, duplicates = {}, []
    for distribution in importlib.metadata.distributions():
        name = canonical(distribution.metadata["Name"])
        if name == PROJECT:
            continue
        if name in versions:
            duplicates.append(f"{name} is installed twice ({versions[name]} and {distribution.version})")
        else:
            versions[name] = distribution.version
    return versions, duplicates


def check(constraints: str) -> int:
    expected = pins(constraints)
    found, problems = installed()
    for name, version in sorted(found.items()):
        if name not in expected:
            problems.append(f"{name}=={version} is installed but not pinned")
        elif expected[name] != version:
            problems.append(f"{name} is {version}, pinned {expected[name]}")
    problems += [
        f"{name}=={version} is pinned but not installed"
        for name, version in sorted(expected.items())
        if name not in found
    ]
    prefix = Path(sys.prefix).resolve()
    for module_name in IMPORTS_CHECKED:
        module = importlib.import_module(module_name)
        location = Path(module.__file__).resolve()
        print(f"{module_name} {module.__version__} from {location}")
        if module.__version__ != expected.get(canonical(module_name)):
            problems.append(
                f"import {module_name} gives {module.__version__}, pinned {expected.get(canonical(module_name))}"
            )
        if prefix not in location.parents:
            problems.append(f"import {module_name} comes from {location}, outside this environment ({prefix})")
    for problem in problems:
        print(f"{constraints}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{len(found)} installed distributions, each pinned in {constraints} at its version")
    return 0


def leftovers(constraints: str, base_constraints: str) -> int:
    lane, base = pins(constraints), pins(base_constraints)
    found, _ = installed()
    print(" ".join(sorted(name for name in found if name in base and name not in lane)))
    return 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if len(arguments) == 1:
        sys.exit(check(arguments[0]))
    if len(arguments) == 3 and arguments[0] == "--leftovers":
        sys.exit(leftovers(arguments[1], arguments[2]))
    sys.exit(__doc__)

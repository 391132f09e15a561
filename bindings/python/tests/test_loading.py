"""How the binding finds libkronfac: KRONFAC_LIBRARY, package folder, build folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kronfac

PRINT_PATH = "import kronfac; print(kronfac.library_path())"


def run_python(code, env_updates, cwd):
    env = dict(os.environ)
    env.pop("KRONFAC_LIBRARY", None)
    env.update(env_updates)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def copy_package(dest):
    """A copy of the installed kronfac package (without any library file) under dest."""
    src = Path(kronfac.__file__).resolve().parent
    shutil.copytree(src, dest / "kronfac",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.so.*", "*.dylib",
                                                  "*.dll"))


def the_library():
    return Path(kronfac.library_path()).resolve()


def test_environment_variable_wins():
    assert os.environ.get("KRONFAC_LIBRARY"), "the suite runs with KRONFAC_LIBRARY set"
    assert Path(kronfac.library_path()) == Path(os.environ["KRONFAC_LIBRARY"])


def test_a_bad_environment_variable_is_an_import_error(tmp_path):
    package_parent = str(Path(kronfac.__file__).resolve().parent.parent)
    r = run_python("import kronfac", {"KRONFAC_LIBRARY": str(tmp_path / "nope.so"),
                                      "PYTHONPATH": package_parent}, tmp_path)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "nope.so" in r.stderr


def test_package_folder(tmp_path):
    copy_package(tmp_path)
    shutil.copy(the_library(), tmp_path / "kronfac" / "libkronfac.so")
    r = run_python(PRINT_PATH, {"PYTHONPATH": str(tmp_path)}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == tmp_path / "kronfac" / "libkronfac.so"


def test_build_folder_of_the_source_tree(tmp_path):
    # The layout of a checkout: <repo>/bindings/python/kronfac and <repo>/build/blas.
    repo = tmp_path / "repo"
    (repo / "bindings" / "python").mkdir(parents=True)
    (repo / "build" / "blas").mkdir(parents=True)
    copy_package(repo / "bindings" / "python")
    shutil.copy(the_library(), repo / "build" / "blas" / "libkronfac.so")
    r = run_python(PRINT_PATH, {"PYTHONPATH": str(repo / "bindings" / "python")}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == repo / "build" / "blas" / "libkronfac.so"


def test_nothing_found_names_every_place_tried(tmp_path):
    copy_package(tmp_path)
    # LD_LIBRARY_PATH cleared so that find_library cannot see a build; an installed system copy
    # would legitimately be found, so the test only asserts when the import failed.
    r = run_python("import kronfac", {"PYTHONPATH": str(tmp_path), "LD_LIBRARY_PATH": ""},
                   tmp_path)
    if r.returncode != 0:
        assert "package folder" in r.stderr and "build folder" in r.stderr
        assert "KRONFAC_LIBRARY" in r.stderr
    else:
        assert "kronfac" in run_python(PRINT_PATH, {"PYTHONPATH": str(tmp_path)}, tmp_path).stdout

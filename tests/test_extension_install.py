"""Installing extensions from a git repository (file://), a folder and a pip wheel; update; remove leaving no
trace; refusal of requirements that would change Inglenook's own dependencies; bad sources.

Everything is offline: wheels are built here with ``pip wheel --no-build-isolation --no-index`` and pip is
pointed at them with PIP_NO_INDEX / PIP_FIND_LINKS (which ``inglenook extensions`` passes on to pip).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import cli

from webui.extensions.host import ExtensionHost
from webui.extensions.install import InstallError, classify, install, remove, update

SHOUT = "from webui.extension_api import hookimpl\n\n@hookimpl\ndef input_modifier(text):\n    return text.upper()\n"


def make_extension(folder: Path, name: str = "shout", code: str = SHOUT, **manifest) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "version": "1.0.0", "description": "shouts", "author": "tests", **manifest}
    (folder / "extension.yaml").write_text(json.dumps(data))
    (folder / "extension.py").write_text(code)
    return folder


def make_host(user_data: Path) -> ExtensionHost:
    host = ExtensionHost(user_data, bundled_dir=None, entry_points=True)
    host.discover()
    return host


def git(*args: str, cwd: Path) -> str:
    env_args = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    return subprocess.run(["git", *env_args, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def build_wheel(source: Path, wheelhouse: Path, name: str, version: str = "1.0.0", entry_point: str = "") -> Path:
    """A real wheel of a tiny package, built offline with the environment's setuptools."""
    module = name.replace("-", "_")
    (source / module).mkdir(parents=True)
    (source / module / "__init__.py").write_text(SHOUT if entry_point else "VALUE = 1\n")
    entry = f'\n[project.entry-points."inglenook.extensions"]\n{entry_point} = "{module}"\n' if entry_point else ""
    (source / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "{version}"
        description = "a test package"
        """)
        + entry
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-index", "--no-deps", "-q"]
    subprocess.run([*command, "-w", str(wheelhouse), str(source)], check=True, capture_output=True)
    return next(wheelhouse.glob(f"{module}-{version}-*.whl"))


@pytest.fixture
def offline_pip(tmp_path, monkeypatch) -> Path:
    """A wheelhouse pip reads instead of the network."""
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    return wheelhouse


def installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def leftovers(user_data: Path) -> list[str]:
    """What is in the installed-extensions folder (staging folders included)."""
    folder = user_data / "extensions"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def no_trace(user_data: Path, name: str) -> None:
    assert not (user_data / "extensions" / name).exists()
    assert leftovers(user_data) == []  # no staging leftovers either
    state = json.loads((user_data / "extensions.json").read_text())
    assert all(name not in state.get(key, {}) for key in ("installed", "enabled", "settings"))


# --------------------------------------------------------------------------- sources


def test_install_from_a_folder_with_the_cli_then_remove(tmp_path):
    source = make_extension(tmp_path / "src" / "shout")
    user_data = tmp_path / "user_data"
    done = cli("extensions", "--user-data", str(user_data), "install", str(source), "--yes")
    assert done.returncode == 0, done.stderr
    assert "installed shout 1.0.0" in done.stdout and "full rights" in done.stderr
    assert (user_data / "extensions" / "shout" / "extension.py").read_text() == SHOUT
    listing = json.loads(cli("extensions", "--user-data", str(user_data), "list", "--json").stdout)
    row = next(r for r in listing["extensions"] if r["name"] == "shout")
    assert row["status"] == "enabled" and row["source"] == f"folder: {source.resolve()}"
    host = make_host(user_data)
    host.start()
    assert host.completion_prompt("hi", None) == "HI"
    done = cli("extensions", "--user-data", str(user_data), "remove", "shout")
    assert done.returncode == 0 and "removed shout" in done.stdout
    no_trace(user_data, "shout")


def test_install_without_yes_asks_and_a_no_installs_nothing(tmp_path):
    source = make_extension(tmp_path / "src" / "shout")
    user_data = tmp_path / "user_data"
    done = cli("extensions", "--user-data", str(user_data), "install", str(source), input="n\n")
    assert done.returncode == 1 and "not installed" in done.stderr
    assert not (user_data / "extensions" / "shout").exists()


def test_install_from_git_is_pinned_to_its_commit_and_update_moves_it(tmp_path):
    repo = make_extension(tmp_path / "repo")
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-qm", "first", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)
    user_data = tmp_path / "user_data"
    host = make_host(user_data)
    assert install(host, f"file://{repo}") == ["shout"]
    record = host.record("shout")
    assert record["source"] == "git" and record["commit"] == first and record["origin"] == f"file://{repo}"
    assert host.source_of(host.get("shout")) == f"git: file://{repo} @ {first[:12]}"

    (repo / "extension.yaml").write_text((repo / "extension.yaml").read_text().replace("1.0.0", "1.1.0"))
    git("commit", "-qam", "second", cwd=repo)
    second = git("rev-parse", "HEAD", cwd=repo)
    assert update(host, "shout") == f"shout updated to 1.1.0 at {second[:12]} (was {first[:12]})"
    assert make_host(user_data).get("shout").manifest.version == "1.1.0"
    assert host.record("shout")["commit"] == second
    remove(host, "shout")
    no_trace(user_data, "shout")


def test_install_from_a_pip_wheel_and_remove_uninstalls_it(tmp_path, offline_pip):
    wheel = build_wheel(tmp_path / "pkg", offline_pip, "inglenook-test-shout-pkg", entry_point="shout_pip")
    user_data = tmp_path / "user_data"
    host = make_host(user_data)
    try:
        assert install(host, str(wheel)) == ["shout_pip"]
        assert installed("inglenook-test-shout-pkg")
        record = host.record("shout_pip")
        assert record["source"] == "pip" and record["pip_added"] == ["inglenook-test-shout-pkg"]
        fresh = make_host(user_data)
        fresh.start()
        assert fresh.get("shout_pip").source == "pip" and fresh.completion_prompt("hi", None) == "HI"
        assert "removed shout_pip and pip packages inglenook-test-shout-pkg" == remove(host, "shout_pip")
        assert not installed("inglenook-test-shout-pkg")
        no_trace(user_data, "shout_pip")
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "inglenook-test-shout-pkg"])


def test_a_folder_extensions_requirements_are_installed_and_removed_with_it(tmp_path, offline_pip):
    build_wheel(tmp_path / "dep", offline_pip, "inglenook-test-dep")
    source = make_extension(
        tmp_path / "src" / "needy", name="needy", requires={"python": ["inglenook-test-dep==1.0.0"]}
    )
    user_data = tmp_path / "user_data"
    host = make_host(user_data)
    try:
        install(host, str(source))
        assert installed("inglenook-test-dep") and host.record("needy")["pip_added"] == ["inglenook-test-dep"]
        fresh = make_host(user_data)
        fresh.start()
        assert fresh.get("needy").active
        remove(host, "needy")
        assert not installed("inglenook-test-dep")
        no_trace(user_data, "needy")
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "inglenook-test-dep"])


# --------------------------------------------------------------------------- refusals


def test_a_requirement_that_would_downgrade_gradio_is_refused_naming_it(tmp_path, offline_pip):
    build_wheel(tmp_path / "fake-gradio", offline_pip, "gradio", version="5.0.0")  # offered, never installed
    have = importlib.metadata.version("gradio")
    source = make_extension(tmp_path / "src" / "old_ui", name="old_ui", requires={"python": ["gradio==5.0.0"]})
    user_data = tmp_path / "user_data"
    done = cli("extensions", "--user-data", str(user_data), "install", str(source), "--yes")
    assert done.returncode == 1
    assert f"would change Inglenook's own dependencies (gradio {have} -> 5.0.0)" in done.stderr
    assert importlib.metadata.version("gradio") == have
    assert leftovers(user_data) == []
    assert not (user_data / "extensions.json").exists()


@pytest.mark.parametrize(
    "manifest, message",
    [
        ({"name": "../x"}, "may not contain path separators"),
        ({"name": "ok", "version": ""}, "missing required field(s): version"),
        ({"name": "ok", "requires": {"inglenook": ">=99"}}, "needs Inglenook >=99"),
    ],
)
def test_bad_manifests_install_nothing(tmp_path, manifest, message):
    source = make_extension(tmp_path / "src" / "x", **manifest)
    user_data = tmp_path / "user_data"
    with pytest.raises(InstallError) as info:
        install(make_host(user_data), str(source))
    assert message in str(info.value)
    assert leftovers(user_data) == []


def test_a_folder_without_a_manifest_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("hello")
    with pytest.raises(InstallError, match="has no extension.yaml"):
        install(make_host(tmp_path / "user_data"), str(tmp_path / "empty"))


def test_a_git_url_that_does_not_exist_is_refused(tmp_path):
    user_data = tmp_path / "user_data"
    done = cli("extensions", "--user-data", str(user_data), "install", f"file://{tmp_path}/no-such-repo", "--yes")
    assert done.returncode == 1 and "error: git clone file://" in done.stderr and "failed" in done.stderr
    assert leftovers(user_data) == []


def test_installing_a_name_twice_is_refused_and_the_first_stays(tmp_path):
    user_data = tmp_path / "user_data"
    host = make_host(user_data)
    install(host, str(make_extension(tmp_path / "a" / "shout")))
    with pytest.raises(InstallError, match="already installed"):
        install(host, str(make_extension(tmp_path / "b" / "shout", code="raise SystemExit\n")))
    assert (user_data / "extensions" / "shout" / "extension.py").read_text() == SHOUT


def test_sources_are_classified_and_nonsense_is_refused(tmp_path):
    assert classify("https://github.com/someone/ext.git") == "git"
    assert classify(f"file://{tmp_path}") == "git"
    assert classify(str(tmp_path)) == "folder"
    assert classify("some-package>=1.0") == "pip"
    with pytest.raises(InstallError, match="no folder"):
        classify("./not/here")
    with pytest.raises(InstallError, match="not a git URL, a folder or a pip requirement"):
        classify("what is this?")


def test_bundled_extensions_cannot_be_removed_only_disabled(tmp_path):
    host = ExtensionHost(tmp_path, entry_points=False)
    host.discover()
    with pytest.raises(InstallError, match="comes with Inglenook"):
        remove(host, "memory")

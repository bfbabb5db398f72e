"""The documentation's fenced blocks, and running its command blocks as a reader would.

Every fence in README.md and docs/*.md names its language. A block fenced ```` ```sh ```` is a
command block a reader is told to run: the docs test runs each document's command blocks, in
order, as one shell script from a scratch directory that holds the repository's files (so that
``.venv/bin/...`` and ``bench/...`` resolve as in a clone). A block fenced ```` ```sh example ````
is shown, not run; its first line is a comment starting ``# example`` that tells the reader why
(it needs a Kubernetes cluster, a GPU, or an hour).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Info strings a fence may carry: commands run, commands shown, and what is not a command.
RUN = "sh"
EXAMPLE = "sh example"
LANGUAGES = frozenset({RUN, EXAMPLE, "text", "json", "python", "yaml", "promql", "toml"})
FENCE = re.compile(r"^(`{3,})(.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its info string and its text."""

    path: Path
    line: int  # of the opening fence, from 1
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def documents(root: Path) -> list[Path]:
    """The documents a reader follows: the README and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order; raises ValueError on an unclosed fence."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        ticks, info = opening.group(1), opening.group(2).strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == ticks), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: fence never closed")
        found.append(Block(path, i + 1, info, "\n".join(lines[i + 1 : end])))
        i = end + 1
    return found


def fence_problems(path: Path) -> list[str]:
    """What is wrong with a document's fences: an unknown or missing language, or an example
    block that does not say why it is not run."""
    problems = []
    for block in blocks(path):
        if block.info not in LANGUAGES:
            problems.append(f"{block.where}: fence info {block.info!r} is not one of {sorted(LANGUAGES)}")
        elif block.info == EXAMPLE and not block.text.lstrip().startswith("# example"):
            problems.append(f"{block.where}: an `sh example` block starts with a `# example ...` comment")
    return problems


def script(path: Path) -> str:
    """The document's command blocks as one bash script that stops at the first failure and
    says, on stderr, which block each command came from."""
    parts = ["set -e"]
    for block in blocks(path):
        if block.info == RUN:
            parts.append(f"echo '>>> {block.where}' >&2")
            parts.append(block.text)
    return "\n".join(parts) + "\n"


def scratch_checkout(root: Path, scratch: Path) -> Path:
    """A directory that looks like the repository's root to the commands (each top-level entry a
    link to the real one) and keeps what they write."""
    scratch.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name != ".git":
            (scratch / entry.name).symlink_to(entry)
    return scratch


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: str
    left_running: list[int]  # processes the script started and did not stop


def run_script(text: str, cwd: Path, env: dict[str, str], timeout_s: float) -> Outcome:
    """Runs the script in a session of its own; afterwards, any process still in that session was
    left running by the commands: it is reported, then killed."""
    log = cwd / "docs-script.log"
    with log.open("w") as out:
        proc = subprocess.Popen([shutil.which("bash") or "/bin/bash", "-c", text], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = -1
    left = _session_members(proc.pid)
    for pid in left:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _session_members(proc.pid):
        _kill(pid, signal.SIGKILL)
    return Outcome(returncode, log.read_text(), left)


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command's closing parenthesis: state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

"""Every ```bash block in README.md runs, as written, in README order.

A block that would take long says in the README, in an HTML comment just above it, how a trial
shortens it (the convention is described in README.md, "Development"); this test applies exactly
those edits and nothing else:

    <!-- ci: add "--limit 16" to "geomprobe cache ..."; replace "M" with "$TINY_MODEL" -->

- ``add "ARGS" to "CMD"[, "CMD2"...]``: append ARGS to each command equal to CMD (or, when CMD ends
  with ``...``, starting with it); a command is one line of the block (continuations joined, the
  trailing ``# comment`` left out) or one part of a ``&&`` chain.
- ``replace "OLD" with "NEW"[, "OLD2" with "NEW2"...]``: OLD as a whole word (or words), after the adds.
- ``exit 1 is fine for "CMD"[, ...]``: a ``--fail-if`` gate may trip there (it exits 1 then).
- ``new folder``: run in an empty folder rather than the one the blocks above wrote into.
- ``skip (reason)``: not run.
A clause that matches nothing is an error, so the comments cannot go stale.

The blocks run with bash -e in a temporary folder laid out like the repository root, with ``geomprobe`` and ``python`` (this
interpreter) first on PATH, ``.venv``, ``dev/`` and ``benchmarks/`` as in a checkout, a private
``$GEOMPROBE_HOME`` (the converted default model linked in) and ``$TINY_MODEL``, ``$TINY_MODEL_2``,
``$TINY_MODEL_3``: tiny random Llama checkpoints of one architecture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tiny import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

# Known failures, each to flip (strict xfail) when its fix merges. Empty: the Stage 4 flow (probe
# train's control set asked the hub for the default model's name) passes offline since the fix.
KNOWN_FAILURES: dict[str, str] = {}


@dataclass
class Block:
    heading: str
    index: int  # the n-th bash block under this heading
    commands: list[str]  # logical lines: continuations joined, comments kept
    directive: str = ""
    skip: str = ""
    new_folder: bool = False
    adds: list[tuple[str, str]] = field(default_factory=list)  # (args, command pattern)
    replaces: list[tuple[str, str]] = field(default_factory=list)
    exit_1_fine: list[str] = field(default_factory=list)  # command patterns

    @property
    def name(self) -> str:
        short = self.heading.split(" (`")[0]  # "Stage 2: AQI cluster indices (`docs/aqi.md`)" -> "Stage 2: AQI cluster indices"
        return short if self.index == 0 else f"{short} ({self.index + 1})"


def _parse_directive(block: Block) -> None:
    for clause in filter(None, (c.strip() for c in block.directive.split(";"))):
        if clause.startswith("skip"):
            block.skip = clause
        elif clause == "new folder":
            block.new_folder = True
        elif m := re.fullmatch(r'add "([^"]+)" to (.+)', clause):
            targets = re.findall(r'"([^"]+)"', m.group(2))
            assert targets, f"README ci comment: no command in {clause!r}"
            block.adds += [(m.group(1), target) for target in targets]
        elif m := re.fullmatch(r"exit 1 is fine for (.+)", clause):
            block.exit_1_fine += re.findall(r'"([^"]+)"', m.group(1))
        elif clause.startswith("replace "):
            pairs = re.findall(r'"([^"]+)" with "([^"]*)"', clause)
            assert pairs, f"README ci comment: cannot read {clause!r}"
            block.replaces += pairs
        else:
            raise AssertionError(f"README ci comment: unknown clause {clause!r} above the block under {block.heading!r}")


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    heading, lines, counts = "", text.splitlines(), {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```") and line.strip() != "```bash":  # another language: skip it
            i = lines.index("```", i + 1)
        elif line.strip() == "```bash":
            end = lines.index("```", i + 1)
            logical: list[str] = []
            for raw in lines[i + 1 : end]:
                if logical and logical[-1].endswith("\\"):
                    logical[-1] = logical[-1][:-1].rstrip() + " " + raw.strip()
                elif raw.strip():
                    logical.append(raw.strip())
            block = Block(heading, counts.get(heading, 0), logical)
            counts[heading] = block.index + 1
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            if m := re.fullmatch(r"\s*<!-- ci: (.*) -->\s*", above):
                block.directive = m.group(1)
                _parse_directive(block)
            blocks.append(block)
            i = end
        i += 1
    return blocks


def _split_comment(command: str) -> tuple[str, str]:
    m = re.search(r"\s+#\s", command)
    return (command[: m.start()], command[m.start() :]) if m else (command, "")


def _matches(command: str, pattern: str) -> bool:
    command = " ".join(command.split())
    if pattern.endswith(" ..."):
        prefix = pattern[:-4]
        return command == prefix or command.startswith(prefix + " ")
    return command == pattern


def trial_script(block: Block) -> str:
    """The block's commands with the README's trial edits applied."""
    used_adds, used_replaces, used_exits = set(), set(), set()
    out = []
    for line in block.commands:
        command, comment = _split_comment(line)
        parts = command.split(" && ")
        for k, part in enumerate(parts):
            for args, pattern in block.adds:
                if _matches(part, pattern):
                    parts[k] = f"{part.rstrip()} {args}"
                    used_adds.add((args, pattern))
            for pattern in block.exit_1_fine:
                if _matches(part, pattern):
                    parts[k] = f"{{ {parts[k]} || [ $? -eq 1 ]; }}"
                    used_exits.add(pattern)
        command = " && ".join(parts)
        for old, new in block.replaces:
            command, n = re.subn(rf"(?<!\S){re.escape(old)}(?!\S)", new.replace("\\", "\\\\"), command)
            if n:
                used_replaces.add((old, new))
        out.append(command + comment)
    stale = [a for a in block.adds if a not in used_adds] + [r for r in block.replaces if r not in used_replaces]
    stale += [e for e in block.exit_1_fine if e not in used_exits]
    assert not stale, f"README ci comment above {block.name!r} matches no command: {stale}"
    return "set -euo pipefail\n" + "\n".join(out) + "\n"


BLOCKS = readme_blocks(README.read_text())


def test_readme_ci_comments_are_read():
    """The parser sees every block and applies the comments (checked against the README's own text)."""
    assert len(BLOCKS) == README.read_text().count("```bash")
    scripts = {b.name: trial_script(b) for b in BLOCKS if not b.skip}
    assert "--limit 16" in scripts["Stage 1: activation cache"]
    assert "--base $TINY_MODEL --aligned $TINY_MODEL_2 --finetuned $TINY_MODEL_3" in scripts["Stage 3: safety-subspace overlap"]
    assert [b.name for b in BLOCKS if b.skip] == ["Two commands (2)"]


@dataclass
class Ran:
    script: str
    returncode: int
    output: str
    seconds: float


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory) -> dict[str, Ran]:
    root = tmp_path_factory.mktemp("readme")
    shims = root / "bin"
    shims.mkdir()
    for name, run in (("geomprobe", f'"{sys.executable}" -m geomprobe'), ("python", f'"{sys.executable}"')):
        (shims / name).write_text(f'#!/bin/sh\nexec {run} "$@"\n')
        (shims / name).chmod(0o755)
    # A private GEOMPROBE_HOME (organisms land there), with the converted default model linked in.
    from geomprobe.models.loading import geomprobe_home

    home = root / "home"
    (home / "models").mkdir(parents=True)
    for converted in (geomprobe_home() / "models").glob("*"):
        if converted.is_dir() and not converted.name.startswith("."):
            (home / "models" / converted.name).symlink_to(converted)
    tiny = [build_tiny_model(root / f"tiny{k}", "llama", seed=k) for k in range(3)]
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(shims), os.environ.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        GEOMPROBE_HOME=str(home),
        TINY_MODEL=str(tiny[0]),
        TINY_MODEL_2=str(tiny[1]),
        TINY_MODEL_3=str(tiny[2]),
    )

    def folder(name: str) -> Path:
        path = root / name
        path.mkdir()
        (path / ".venv").symlink_to(sys.prefix)
        (path / "activations").mkdir()  # in the checkout, with its README.md
        for shared in ("dev", "benchmarks"):
            (path / shared).symlink_to(REPO / shared)
        return path

    shared, runs = folder("work"), {}
    for n, block in enumerate(BLOCKS):
        if block.skip:
            continue
        script = trial_script(block)
        start = time.perf_counter()
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=folder(f"work{n}") if block.new_folder else shared,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        runs[block.name] = Ran(script, proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start)
    print("\nREADME blocks: " + ", ".join(f"{name} {ran.seconds:.0f} s" for name, ran in runs.items()))  # with -s
    return runs


def _param(block: Block):
    marks = [pytest.mark.skip(reason=block.skip)] if block.skip else []
    if block.name in KNOWN_FAILURES:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[block.name]))
    return pytest.param(block.name, marks=marks, id=block.name)


@pytest.mark.slow
@pytest.mark.default_model  # the blocks load the embedded model
@pytest.mark.parametrize("name", [_param(b) for b in BLOCKS])
def test_readme_block_runs(name, readme_runs):
    ran = readme_runs[name]
    assert ran.returncode == 0, (
        f"README block {name!r} exited {ran.returncode} ({ran.seconds:.0f} s):\n{ran.script}\n{ran.output[-3000:]}"
    )

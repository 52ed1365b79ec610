"""Print the fenced commands of README.md's "Quick start" section, one per line (NUL-separated with --nul).

.ci/run executes exactly these, so the README and CI cannot drift: a Quick start whose set-up or test command
breaks on a fresh machine turns CI red. Exactly two commands are expected (set-up + demo, then tests).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def quick_start_commands(readme: str) -> list[str]:
    """The bash code blocks between the ``## Quick start`` heading and the next ``## `` heading."""
    match = re.search(r"^## Quick start[^\n]*\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    if match is None:
        raise SystemExit("README.md has no '## Quick start' section")
    blocks = re.findall(r"^```(?:bash|sh|console)?\n(.*?)^```", match.group(1), flags=re.S | re.M)
    commands = [block.strip() for block in blocks]
    if len(commands) != 2 or not all(commands):
        raise SystemExit(f"README.md's Quick start must hold exactly two fenced commands, found {len(commands)}")
    return commands


if __name__ == "__main__":
    readme = Path(sys.argv[-1] if len(sys.argv) > 1 and sys.argv[-1] != "--nul" else "README.md").read_text()
    separator = "\0" if "--nul" in sys.argv else "\n"
    sys.stdout.write(separator.join(quick_start_commands(readme)) + separator)

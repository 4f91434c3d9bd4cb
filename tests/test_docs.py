"""The guides say what the code does: the README's first block, the flags table."""

from __future__ import annotations

import re

from skysurvey.config import REPO_ROOT
from skysurvey.detect import FLAG_DESCRIPTIONS


def test_readme_starts_with_the_two_commands():
    text = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_flags_table_matches_the_code():
    text = (REPO_ROOT / "data" / "README.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (.+?) \|$", text, re.M)
    documented = {int(value): meaning for _, value, meaning in rows}
    assert documented == {int(k): v for k, v in FLAG_DESCRIPTIONS.items()}
    assert all(int(bit) == int(value).bit_length() - 1 for bit, value, _ in rows)

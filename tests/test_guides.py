"""Every command in the guides exists: script flags, AWS CLI operations, names, the cost table."""

from __future__ import annotations

import re
import shlex

import botocore.session
import pytest
from conftest import load_script

from skysurvey import aws_setup
from skysurvey.config import REPO_ROOT
from skysurvey.cost import estimate

GUIDES = ["README.md", "QUICKSTART.md", "setup_guide.md", "cleanup_guide.md"]
CLI_SERVICES = {"s3api": "s3", "iam": "iam", "lambda": "lambda", "logs": "logs",
                "athena": "athena", "sts": "sts"}


def _commands(prefix):
    for guide in GUIDES:
        for line in (REPO_ROOT / guide).read_text().splitlines():
            line = line.strip()
            if line.startswith(prefix):
                yield guide, line.split("  #")[0]


def _parser(script):
    module = load_script(script)
    return module.build_parser()


def test_every_script_command_names_real_scripts_and_flags():
    seen = 0
    for guide, line in _commands("python scripts/"):
        words = shlex.split(line.rstrip("\\"))
        script = words[1].removeprefix("scripts/").removesuffix(".py")
        assert (REPO_ROOT / "scripts" / f"{script}.py").is_file(), (guide, line)
        flags = {o for a in _parser(script)._actions for o in a.option_strings}
        used = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
        assert used <= flags, (guide, line, used - flags)
        seen += 1
    assert seen >= 15


def test_every_aws_cli_command_is_a_real_operation():
    session = botocore.session.get_session()
    seen = 0
    for guide, line in _commands("aws "):
        words = line.split()
        if words[1] == "s3":  # the high-level s3 commands
            assert words[2] in {"cp", "rm", "ls", "sync", "mb", "rb"}, (guide, line)
            continue
        model = session.get_service_model(CLI_SERVICES[words[1]])
        operations = {re.sub(r"(?<!^)(?=[A-Z])", "-", op).lower() for op in model.operation_names}
        assert words[2] in operations, (guide, line)
        seen += 1
    assert seen >= 15


def test_guides_use_the_names_the_scripts_create():
    text = (REPO_ROOT / "setup_guide.md").read_text() + (REPO_ROOT / "cleanup_guide.md").read_text()
    for name in (aws_setup.ROLE_NAME, aws_setup.POLICY_NAME, aws_setup.FUNCTION_NAME,
                 aws_setup.LOG_GROUP, aws_setup.WORKGROUP, aws_setup.RUNTIME,
                 aws_setup.RAW_PREFIX, aws_setup.CATALOG_PREFIX):
        assert name in text, name


@pytest.mark.parametrize("images", [100, 1500, 100_000])
def test_cost_table_matches_the_cost_module(images):
    e = estimate(images, seconds_per_image=1.0)
    row = (f"| {images:,} | {e.lambda_gb_seconds:,.0f} | ${e.lambda_usd:,.4f} | "
           f"${e.s3_usd:,.4f} | ${e.athena_usd:,.4f} | ${e.logs_usd:,.4f} | "
           f"${e.total_usd:,.4f} |")
    assert row in (REPO_ROOT / "setup_guide.md").read_text()
    if images == 1500:
        assert round(e.lambda_usd, 3) == 0.025  # 1,500 GB-s is about $0.025, not $3

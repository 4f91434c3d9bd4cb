"""Settings shared by every script: buckets, function, Athena names, the env file.

Precedence, highest first: command-line flags, the process environment, the env file that
``scripts/setup_aws.py`` writes (``.skysurvey.env`` in the repository root, or the file named
by ``SKYSURVEY_ENV_FILE``), then the local defaults under ``data/``. A bucket setting is either
``s3://bucket[/prefix]`` or a local folder path. boto3 reads its own settings (``AWS_PROFILE``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``) through its credential chain; we never touch them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA_DIR",
    "DEFAULTS",
    "ENV_FILE_NAME",
    "OUTPUT_DIR",
    "QUEUE_NAME",
    "REPO_ROOT",
    "SAMPLE_DIR",
    "S3Location",
    "env_file_path",
    "get_setting",
    "is_s3_uri",
    "parse_s3_uri",
    "read_env_file",
    "write_env_file",
]

#: The repository root (two levels above this file: src/skysurvey/config.py).
REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
ENV_FILE_NAME = ".skysurvey.env"

DEFAULTS: dict[str, str] = {
    "BUCKET_RAW": str(DATA_DIR / "raw"),
    "BUCKET_CATALOG": str(DATA_DIR / "catalog"),
    "LAMBDA_FUNCTION": "astronomy-source-detection",
    "ATHENA_DATABASE": "astronomy",
    "ATHENA_WORKGROUP": "astronomy-workgroup",
    "ATHENA_OUTPUT": "",  # s3:// location for Athena results; default: the workgroup's
    "REFERENCE_CATALOG": "",  # calibrate against this catalog (path, s3:// URI or HATS folder)
    "REFERENCE_BANDS": "",  # band=column mapping for it, e.g. g=gmag,r=rmag (optional)
}

#: The failed-events queue (SQS) of the deployment: setup creates it, the Lambda function's
#: on-failure destination sends to it, ``invoke_lambda.py --redrive`` reads it.
QUEUE_NAME = "astronomy-failed-events"

#: Where the sample generator writes and where plots and query exports go by default.
SAMPLE_DIR = DATA_DIR / "sample"
OUTPUT_DIR = DATA_DIR / "output"


def env_file_path(environ: Mapping[str, str] | None = None) -> Path:
    """The env file the scripts read (and ``setup_aws.py`` writes).

    Parameters
    ----------
    environ : mapping of str to str, optional
        The environment (default: ``os.environ``); ``SKYSURVEY_ENV_FILE`` names another file.

    Returns
    -------
    pathlib.Path
        ``SKYSURVEY_ENV_FILE``, else ``.env`` at the repository's root.
    """
    environ = os.environ if environ is None else environ
    return Path(environ.get("SKYSURVEY_ENV_FILE") or REPO_ROOT / ENV_FILE_NAME)


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """Parse ``KEY=value`` lines (``export`` prefix, quotes and comments allowed).

    Parameters
    ----------
    path : str or os.PathLike
        The env file.

    Returns
    -------
    dict of str to str
        The settings, in file order; empty when the file does not exist.
    """
    values: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        return values
    for raw in p.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def write_env_file(path: str | os.PathLike, values: Mapping[str, str]) -> Path:
    """Write *values* as ``export KEY=value`` lines (shell- and python-readable).

    Parameters
    ----------
    path : str or os.PathLike
        The env file (replaced).
    values : mapping of str to str
        The settings, written in order.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    p = Path(path)
    lines = ["# Written by scripts/setup_aws.py; read by every script in scripts/."]
    lines += [f"export {k}={v}" for k, v in values.items()]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def get_setting(
    name: str, override: str | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """One setting by the precedence above; *override* is the command-line flag's value.

    Parameters
    ----------
    name : str
        The setting, e.g. ``SKYSURVEY_RAW_BUCKET``.
    override : str, optional
        The command-line flag's value; wins when not None or empty.
    environ : mapping of str to str, optional
        The environment (default: ``os.environ``), then the env file it names.

    Returns
    -------
    str
        The flag, else the environment, else the env file, else the default ("" if none).
    """
    if override not in (None, ""):
        return str(override)
    environ = os.environ if environ is None else environ
    if environ.get(name):
        return environ[name]
    from_file = read_env_file(env_file_path(environ))
    if from_file.get(name):
        return from_file[name]
    return DEFAULTS.get(name, "")


def is_s3_uri(uri: str | os.PathLike) -> bool:
    """Whether *uri* is an S3 location rather than a local path.

    Parameters
    ----------
    uri : str or os.PathLike
        A ``s3://bucket/prefix`` URI or a local path.

    Returns
    -------
    bool
        True when it starts with ``s3://``.
    """
    return str(uri).startswith("s3://")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading slash; '' or ends with '/'

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket/some/prefix`` -> S3Location('bucket', 'some/prefix/')."""
    from .errors import ConfigError

    if not is_s3_uri(uri):
        raise ConfigError(str(uri), "not an s3:// URI")
    rest = str(uri)[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(str(uri), "the s3:// URI names no bucket")
    prefix = prefix.strip("/")
    return S3Location(bucket, f"{prefix}/" if prefix else "")

"""boto3 clients, made lazily and cached once per process (a warm Lambda container reuses them).

boto3 is imported only when AWS is used, so the local mode needs no AWS package at import time.
Settings come from boto3's own chain (``AWS_PROFILE``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL`` for MinIO, LocalStack or a moto server). Retries use botocore's standard
mode (exponential backoff with jitter, throttling and 5xx retried) unless
``AWS_RETRY_MODE`` says ``adaptive``.
"""

from __future__ import annotations

import functools
import os

from .errors import ConfigError, SkySurveyError, StorageError

DEFAULT_REGION = "us-east-1"
MAX_ATTEMPTS = 8


def _settings() -> tuple[str | None, str, str | None, str]:
    profile = os.environ.get("AWS_PROFILE") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    mode = os.environ.get("AWS_RETRY_MODE") or "standard"
    return profile, region, endpoint, mode


def client(service: str, **config_overrides):
    """A cached boto3 client for *service* under the current AWS settings."""
    return _client(service, *_settings(), tuple(sorted(config_overrides.items())))


@functools.cache
def _client(service, profile, region, endpoint, mode, overrides):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile)
    region = region or session.region_name or DEFAULT_REGION
    config = Config(
        retries={"mode": mode, "max_attempts": MAX_ATTEMPTS},
        **dict(overrides),
    )
    return session.client(service, region_name=region, endpoint_url=endpoint, config=config)


def clear_clients() -> None:
    """Forget cached clients (tests start and stop moto around them)."""
    _client.cache_clear()


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def translate(exc: BaseException, source: str) -> SkySurveyError:
    """Turn a botocore exception into the project's one-line error naming *source*."""
    from botocore import exceptions as bx

    if isinstance(exc, SkySurveyError):
        return exc
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ConfigError(
            source, "no AWS credentials found (set AWS_PROFILE or run `aws configure`)"
        )
    if isinstance(exc, bx.ProfileNotFound):
        return ConfigError(source, str(exc))
    if isinstance(exc, bx.EndpointConnectionError):
        return StorageError(source, f"cannot reach the endpoint: {exc}")
    code = error_code(exc)
    if code in ("NoSuchBucket",):
        return StorageError(source, "the bucket does not exist")
    if code in ("NoSuchKey", "404", "NotFound"):
        return StorageError(source, "no such object")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
                "SignatureDoesNotMatch", "ExpiredToken"):
        return StorageError(source, f"access denied ({code})")
    if code:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return StorageError(source, f"{code}: {message}".rstrip(": "))
    return StorageError(source, f"{type(exc).__name__}: {exc}")

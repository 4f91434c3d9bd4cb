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
from collections.abc import Callable

from .errors import ConfigError, SkySurveyError, StorageError, TransientStorageError

__all__ = ["MAX_ATTEMPTS", "NO_REGION", "TRANSIENT_CODES", "botocore_errors", "clear_clients",
           "client", "configured_region", "error_code", "is_transient", "on_clear_clients",
           "s3_filesystem", "translate", "use_region"]

#: Attempts in total per request (the first one included): botocore's ``total_max_attempts``.
#: (Its ``max_attempts`` counts retries only: 8 there would mean 9 attempts.)
MAX_ATTEMPTS = 8
NO_REGION = ("no AWS region: pass --region, set AWS_REGION, or run "
             "`aws configure set region <name>` (the scripts never guess us-east-1)")
_region_override: list[str] = []


def use_region(region: str | None) -> None:
    """Make *region* (a script's ``--region`` flag) win over every other setting."""
    _region_override[:] = [region] if region else []


def configured_region() -> str:
    """The region by precedence: ``--region``, the env file setup wrote, AWS_REGION /
    AWS_DEFAULT_REGION, the profile's config; '' when none says."""
    from .config import env_file_path, read_env_file

    if _region_override:
        return _region_override[0]
    return (read_env_file(env_file_path()).get("AWS_REGION")
            or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "")


def _settings() -> tuple[str | None, str, str | None, str]:
    profile = os.environ.get("AWS_PROFILE") or None
    region = configured_region()
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
    region = region or session.region_name
    if not region:
        raise ConfigError(service, NO_REGION)
    config = Config(
        retries={"mode": mode, "total_max_attempts": MAX_ATTEMPTS},
        **dict(overrides),
    )
    return session.client(service, region_name=region, endpoint_url=endpoint, config=config)


def s3_filesystem():
    """pyarrow's S3 filesystem under the same settings as :func:`client`.

    The same profile, region (:func:`configured_region`: ``--region``, the env file, AWS_REGION
    / AWS_DEFAULT_REGION, then the profile's config), credentials and ``AWS_ENDPOINT_URL``.

    Returns
    -------
    pyarrow.fs.S3FileSystem
        For reading ``s3://`` catalogs with ``pyarrow.dataset`` (DuckDB reads them through it).

    Raises
    ------
    ConfigError
        When no setting names a region (as :func:`client` does).
    """
    import boto3
    from pyarrow import fs

    profile, region, endpoint, _ = _settings()
    session = boto3.session.Session(profile_name=profile)
    region = region or session.region_name
    if not region:
        raise ConfigError("s3", NO_REGION)
    kwargs = {"region": region}
    creds = session.get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key,
                      session_token=frozen.token)
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    return fs.S3FileSystem(**kwargs)


_on_clear: list[Callable[[], None]] = []


def on_clear_clients(forget: Callable[[], None]) -> None:
    """Call *forget* (no arguments) whenever :func:`clear_clients` runs: for per-process
    caches of what AWS holds (Glue partitions already registered), which are only valid for
    the AWS the clients reach."""
    _on_clear.append(forget)


def clear_clients() -> None:
    """Forget cached clients and what was cached about the AWS they reach (tests start and
    stop moto around them)."""
    _client.cache_clear()
    for forget in _on_clear:
        forget()


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


#: Error codes worth retrying later: botocore's throttling and transient codes (its standard
#: retry mode retries the same ones), plus S3's. Matched on the code, never on message text.
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown",
    "EC2ThrottledException", "TransactionInProgressException", "PriorRequestNotComplete",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "InternalFailure",
    "ServiceUnavailable", "ServiceUnavailableException", "500", "502", "503", "504",
})


def botocore_errors() -> tuple[type[BaseException], ...]:
    """The exceptions an AWS call raises for AWS reasons (for ``except`` clauses): botocore's
    ClientError and BotoCoreError and boto3's transfer failures. A bug (TypeError...) is not
    one of them and is never reported as a storage error."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError, S3UploadFailedError, S3TransferFailedError


def is_transient(exc: BaseException) -> bool:
    """True for throttling, 5xx, timeouts and lost connections (by code or exception type)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.HTTPClientError | bx.ConnectionError):
        return True  # timeouts, connection refused or closed, endpoint unreachable
    status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get(
        "HTTPStatusCode", 0)
    return error_code(exc) in TRANSIENT_CODES or int(status or 0) >= 500


def translate(exc: BaseException, source: str) -> SkySurveyError:
    """Turn a botocore exception into the project's one-line error naming *source*.

    Transient failures become :class:`TransientStorageError` (a StorageError), classified by
    error code or exception type.
    """
    from boto3.exceptions import Boto3Error
    from botocore import exceptions as bx

    if isinstance(exc, SkySurveyError):
        return exc
    if isinstance(exc, Boto3Error) and isinstance(exc.__cause__ or exc.__context__,
                                                  bx.ClientError | bx.BotoCoreError):
        exc = exc.__cause__ or exc.__context__  # a transfer failure: the call that failed
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ConfigError(
            source, "no AWS credentials found (set AWS_PROFILE or run `aws configure`)"
        )
    if isinstance(exc, bx.ProfileNotFound):
        return ConfigError(source, str(exc))
    code = error_code(exc)
    if is_transient(exc):
        if isinstance(exc, bx.EndpointConnectionError):
            return TransientStorageError(source, f"cannot reach the endpoint: {exc}")
        message = (getattr(exc, "response", None) or {}).get("Error", {}).get("Message", "")
        detail = f"{code}: {message}".rstrip(": ") if code else f"{type(exc).__name__}: {exc}"
        return TransientStorageError(source, detail)
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

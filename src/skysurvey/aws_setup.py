"""Create and repair the AWS side: buckets, queue, role, logs, Lambda, Glue/Athena, alarms.

Ownership rule: everything setup makes carries the tag ``skysurvey:deployment=<suffix>``. Setup
refuses to adopt a resource that lacks it (or names another deployment), with one line naming
the resource and what to do; cleanup deletes only what carries it and lists the rest.
Deployments made before tagging (tag ``project=skysurvey`` only) are adopted, and tagged, when
the env file's ``SKYSURVEY_SUFFIX`` is the suffix in use. One deployment per account and region:
the function, role, log group, queue, workgroup and database names are fixed, so a second suffix
is refused by naming the first.

Every run re-applies the settings of what exists (role policy, bucket settings, function code
and configuration, ...): drift is repaired, not reported as "exists". ``--dry-run`` runs the
same ownership checks and prints the plan. What each resource is (names, policies, settings,
the ownership rule) is defined in :mod:`skysurvey.aws_resources`; this module makes it real,
and :mod:`skysurvey.aws_cleanup` deletes it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from . import aws
from .aws_resources import (
    ALARM_ERRORS,  # noqa: F401 - read as aws_setup.ALARM_ERRORS by tests/test_guides.py
    ALARM_QUEUE,  # noqa: F401 - read as aws_setup.ALARM_QUEUE by tests/test_guides.py
    ALARM_THROTTLES,  # noqa: F401 - read as aws_setup.ALARM_THROTTLES by tests/test_guides.py
    CATALOG_PREFIX,  # noqa: F401 - read as aws_setup.CATALOG_PREFIX by tests/test_guides.py
    DASHBOARD,
    DATABASE,
    DEPLOYMENT_TAG,
    DIRECT_UPLOAD_LIMIT,
    FUNCTION_DESCRIPTION,
    FUNCTION_NAME,
    LOG_GROUP,
    LOG_RETENTION_DAYS,
    PACKAGE_KEY,
    POLICY_NAME,
    QUEUE_ATTRIBUTES,
    RAW_PREFIX,  # noqa: F401 - read as aws_setup.RAW_PREFIX by tests/test_guides.py
    ROLE_DESCRIPTION,
    ROLE_NAME,
    RUNTIME,  # noqa: F401 - read as aws_setup.RUNTIME by tests/test_guides.py
    TEST_ENDPOINT_HINT,
    TLS_ONLY,
    TRIGGER_ID,
    WORKGROUP,
    WORKGROUP_DESCRIPTION,
    FunctionSettings,
    Names,
    Plan,
    Resource,
    _tag_dict,
    _tag_list,
    alarm_definitions,
    bucket_settings,
    buckets,
    code_sha256,
    dashboard_body,
    database_input,
    default_suffix,
    event_invoke_config,
    function_configuration,
    guide_documents,  # noqa: F401 - read as aws_setup.guide_documents by tests/test_guides.py
    lambda_policy,
    ownership,
    tls_only_policy,
    trigger_configurations,
    trigger_permission,
    trust_policy,
    workgroup_configuration,
)
from .config import QUEUE_NAME, is_s3_uri, parse_s3_uri
from .errors import ConfigError, StorageError

__all__ = [
    "resolve_names",
    "resolve_region",
    "run_setup",
    "setup_resources",
]


def resolve_region(flag: str | None, saved: dict[str, str]) -> str:
    """``--region``, else the env file's, else boto3's chain; none at all is an error."""
    region = flag or saved.get("AWS_REGION") or aws.configured_region()
    if not region:
        import boto3

        region = boto3.session.Session().region_name or ""
    if not region:
        raise ConfigError("region", aws.NO_REGION)
    aws.use_region(region)  # every client of this process goes to that region
    return region


def resolve_names(suffix: str | None, region: str | None, saved: dict[str, str], *,
                  reference: str | None = None, reference_bands: str | None = None) -> Names:
    """Names from flags, else from the env file a previous setup wrote, else derived.

    Parameters
    ----------
    suffix, region : str, optional
        ``--suffix`` and ``--region`` (None: the env file's, else derived / boto3's).
    saved : dict of str to str
        The env file a previous setup wrote (:func:`skysurvey.config.read_env_file`).
    reference, reference_bands : str, optional
        Reference catalog (``s3://`` URI or local path, uploaded by setup) and band mapping.

    Returns
    -------
    Names
        The deployment's names, account and region (every client then uses that region).

    Raises
    ------
    ConfigError
        No region, no credentials, or a local reference path that does not exist.
    """
    region = resolve_region(region, saved)
    try:
        account = aws.client("sts").get_caller_identity()["Account"]
    except aws.botocore_errors() as exc:
        raise aws.translate(exc, "sts") from None
    suffix = suffix or saved.get("SKYSURVEY_SUFFIX") or default_suffix(account, region)
    adopt = saved.get("SKYSURVEY_SUFFIX") == suffix
    names = Names(suffix, region, account, adopt)
    reference = reference or saved.get("REFERENCE_CATALOG")
    bands = reference_bands or saved.get("REFERENCE_BANDS")
    if reference is None:
        return names
    local = None
    if not is_s3_uri(reference):
        path = Path(reference).expanduser()
        if not path.exists():
            raise ConfigError(reference, "no such reference catalog file or folder")
        local = str(path)
        reference = f"s3://{names.catalog}/reference/{path.name}" + ("/" if path.is_dir() else "")
    return Names(suffix, region, account, adopt, reference, bands, local)


# ---- the resources, through boto3 ----------------------------------------------------------


def _missing(exc, *codes) -> bool:
    return aws.error_code(exc) in codes


def _quiet(_response) -> None:
    """Settings put again every run (idempotent calls): nothing to report."""
    return None


def _call_tags(resource: str, get: Callable[[], dict | None], *absent: str):
    try:
        return get()
    except aws.botocore_errors() as exc:
        if _missing(exc, *absent):
            return None
        raise aws.translate(exc, resource) from None


# -- buckets


def _bucket_tags(name: str) -> dict[str, str] | None:
    s3 = aws.client("s3")
    try:
        s3.head_bucket(Bucket=name)
    except aws.botocore_errors() as exc:
        code = aws.error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise ConfigError(f"s3://{name}", "the bucket name is taken by another account: "
                                              "choose another --suffix") from None
        raise aws.translate(exc, f"s3://{name}") from None
    try:
        return _tag_dict(s3.get_bucket_tagging(Bucket=name)["TagSet"])
    except aws.botocore_errors() as exc:
        if _missing(exc, "NoSuchTagSet", "NoSuchTagSetError"):
            return {}
        raise aws.translate(exc, f"s3://{name}") from None


def _bucket_tags_in(name: str, region: str) -> dict[str, str] | None:
    """The bucket's tags; a bucket of this deployment's name in another region is refused (a
    deployment lives in one region)."""
    tags = _bucket_tags(name)
    if tags is not None:
        where = aws.client("s3").get_bucket_location(Bucket=name).get("LocationConstraint")
        where = where or "us-east-1"  # S3 reports us-east-1 as no constraint
        if where != region:
            raise ConfigError(f"s3://{name}", f"is in {where}, not {region}: one deployment "
                                              f"lives in one region (use --region {where})")
    return tags


def _create_bucket(name: str, names: Names, lifecycle: bool) -> None:
    kwargs = {} if names.region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": names.region}}
    aws.client("s3").create_bucket(Bucket=name, **kwargs)
    _apply_bucket(name, names, lifecycle)


def _tag_bucket(name: str, names: Names) -> None:
    s3 = aws.client("s3")
    tags = {**(_bucket_tags(name) or {}), **names.tags}  # keep the user's own tags
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": _tag_list(tags)})


def _apply_bucket(name: str, names: Names, lifecycle: bool) -> str | None:
    s3, wanted = aws.client("s3"), bucket_settings(name, names, lifecycle)
    s3.put_public_access_block(
        Bucket=name, PublicAccessBlockConfiguration=wanted["PublicAccessBlockConfiguration"])
    s3.put_bucket_encryption(
        Bucket=name, ServerSideEncryptionConfiguration=wanted["ServerSideEncryptionConfiguration"])
    _tag_bucket(name, names)
    if wanted["LifecycleConfiguration"]:
        s3.put_bucket_lifecycle_configuration(
            Bucket=name, LifecycleConfiguration=wanted["LifecycleConfiguration"])
    if TLS_ONLY and names.tls_only:
        s3.put_bucket_policy(Bucket=name, Policy=json.dumps(wanted["Policy"]))
    elif not names.tls_only:
        return _remove_tls_only_policy(name)
    return None


def _remove_tls_only_policy(name: str) -> str | None:
    """--no-tls-policy: take off setup's own TLS-only policy (any other policy stays)."""
    s3 = aws.client("s3")
    try:
        policy = json.loads(s3.get_bucket_policy(Bucket=name)["Policy"])
    except aws.botocore_errors() as exc:
        if _missing(exc, "NoSuchBucketPolicy"):
            return None
        raise
    if policy != tls_only_policy(name):
        return None
    s3.delete_bucket_policy(Bucket=name)
    return "updated: TLS-only policy removed (--no-tls-policy)"


def _empty_and_delete_bucket(name: str) -> None:
    s3 = aws.client("s3")
    try:  # first: a deny-everything policy (or moto, which ignores its condition) blocks emptying
        s3.delete_bucket_policy(Bucket=name)
    except aws.botocore_errors() as exc:
        if not _missing(exc, "NoSuchBucketPolicy"):
            raise
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=name):
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                   for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if objects:
            s3.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
    s3.delete_bucket(Bucket=name)


def _bucket(name: str, names: Names, lifecycle: bool) -> Resource:
    return Resource(
        f"bucket s3://{name}", lambda: _bucket_tags_in(name, names.region),
        lambda: _create_bucket(name, names, lifecycle),
        apply=lambda: _apply_bucket(name, names, lifecycle),
        tag=lambda: _tag_bucket(name, names), delete=lambda: _empty_and_delete_bucket(name),
        fix="choose another --suffix (setup never adopts a bucket it did not make)")


# -- failed-events queue


def _queue_url() -> str:
    return aws.client("sqs").get_queue_url(QueueName=QUEUE_NAME)["QueueUrl"]


def _queue_tags() -> dict[str, str] | None:
    absent = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
    return _call_tags(f"queue {QUEUE_NAME}", lambda: aws.client("sqs").list_queue_tags(
        QueueUrl=_queue_url()).get("Tags", {}), *absent)


def _queue(names: Names) -> Resource:
    sqs = aws.client
    return Resource(
        f"failed-events queue {QUEUE_NAME} (encrypted)", _queue_tags,
        lambda: sqs("sqs").create_queue(QueueName=QUEUE_NAME, Attributes=QUEUE_ATTRIBUTES,
                                        tags=names.tags),
        apply=lambda: _quiet(sqs("sqs").set_queue_attributes(QueueUrl=_queue_url(),
                                                             Attributes=QUEUE_ATTRIBUTES)),
        tag=lambda: sqs("sqs").tag_queue(QueueUrl=_queue_url(), Tags=names.tags),
        delete=lambda: sqs("sqs").delete_queue(QueueUrl=_queue_url()))


# -- role


def _role_tags() -> dict[str, str] | None:
    return _call_tags(ROLE_NAME, lambda: _tag_dict(
        aws.client("iam").list_role_tags(RoleName=ROLE_NAME)["Tags"]), "NoSuchEntity")


def _apply_role(names: Names) -> str | None:
    """Trust and inline policy re-applied; other inline policies removed (drift); managed
    policies attached by hand are named (left: cleanup detaches them)."""
    iam = aws.client("iam")
    iam.update_assume_role_policy(RoleName=ROLE_NAME, PolicyDocument=json.dumps(trust_policy()))
    iam.put_role_policy(RoleName=ROLE_NAME, PolicyName=POLICY_NAME,
                        PolicyDocument=json.dumps(lambda_policy(names)))
    removed = [p for p in iam.list_role_policies(RoleName=ROLE_NAME)["PolicyNames"]
               if p != POLICY_NAME]
    for policy in removed:
        iam.delete_role_policy(RoleName=ROLE_NAME, PolicyName=policy)
    attached = [p["PolicyArn"] for p in
                iam.list_attached_role_policies(RoleName=ROLE_NAME)["AttachedPolicies"]]
    notes = [f"removed inline policy {p}" for p in removed]
    notes += [f"managed policy {a} attached by hand (left)" for a in attached]
    return "; ".join(notes) or None


def _create_role(names: Names) -> None:
    aws.client("iam").create_role(
        RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust_policy()),
        Description=ROLE_DESCRIPTION,
        Tags=_tag_list(names.tags))
    _apply_role(names)


def _delete_role() -> None:
    iam = aws.client("iam")
    for policy in iam.list_role_policies(RoleName=ROLE_NAME)["PolicyNames"]:
        iam.delete_role_policy(RoleName=ROLE_NAME, PolicyName=policy)
    for policy in iam.list_attached_role_policies(RoleName=ROLE_NAME)["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=ROLE_NAME, PolicyArn=policy["PolicyArn"])
    iam.delete_role(RoleName=ROLE_NAME)


def _role(names: Names) -> Resource:
    return Resource(
        f"IAM role {ROLE_NAME}", _role_tags, lambda: _create_role(names),
        apply=lambda: _apply_role(names),
        tag=lambda: aws.client("iam").tag_role(RoleName=ROLE_NAME, Tags=_tag_list(names.tags)),
        delete=_delete_role)


# -- log group


def _log_group_tags() -> dict[str, str] | None:
    logs = aws.client("logs")
    groups = logs.describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"]
    if not any(g["logGroupName"] == LOG_GROUP for g in groups):
        return None
    return logs.list_tags_log_group(logGroupName=LOG_GROUP).get("tags", {})


def _log_group(names: Names) -> Resource:
    logs = aws.client
    return Resource(
        f"log group {LOG_GROUP}", _log_group_tags,
        lambda: (logs("logs").create_log_group(logGroupName=LOG_GROUP, tags=names.tags),
                 logs("logs").put_retention_policy(logGroupName=LOG_GROUP,
                                                   retentionInDays=LOG_RETENTION_DAYS)),
        apply=lambda: _quiet(logs("logs").put_retention_policy(
            logGroupName=LOG_GROUP, retentionInDays=LOG_RETENTION_DAYS)),
        tag=lambda: logs("logs").tag_log_group(logGroupName=LOG_GROUP, tags=names.tags),
        delete=lambda: logs("logs").delete_log_group(logGroupName=LOG_GROUP))


# -- function


def _function_tags() -> dict[str, str] | None:
    return _call_tags(FUNCTION_NAME, lambda: aws.client("lambda").get_function(
        FunctionName=FUNCTION_NAME).get("Tags", {}), "ResourceNotFoundException")


def _code(names: Names, package: Path) -> dict:
    data = package.read_bytes()
    if len(data) <= DIRECT_UPLOAD_LIMIT:
        return {"ZipFile": data}
    # larger zips go through S3 (Lambda's direct upload limit is 50 MB)
    try:
        aws.client("s3").put_object(Bucket=names.catalog, Key=PACKAGE_KEY, Body=data,
                                    ServerSideEncryption="AES256")
    except aws.botocore_errors() as exc:
        cause = aws.translate(exc, "").cause
        if aws.error_code(exc) in ("AccessDenied", "403") and os.environ.get("AWS_ENDPOINT_URL"):
            cause += f" ({TEST_ENDPOINT_HINT})"
        raise StorageError(f"S3 upload of the Lambda package {package} "
                           f"({len(data) / 2**20:.1f} MB, over Lambda's direct limit) to "
                           f"s3://{names.catalog}/{PACKAGE_KEY}", cause) from None
    return {"S3Bucket": names.catalog, "S3Key": PACKAGE_KEY}


def _function_configuration(names: Names, s: FunctionSettings) -> dict:
    role = aws.client("iam").get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
    return function_configuration(names, s, role)


def _wait_updated() -> None:
    """Lambda refuses a second update while one is in progress: wait for it to settle."""
    for _ in range(60):
        cfg = aws.client("lambda").get_function_configuration(FunctionName=FUNCTION_NAME)
        if cfg.get("LastUpdateStatus", "Successful") != "InProgress" and \
                cfg.get("State", "Active") != "Pending":
            return
        time.sleep(2)


def _create_function(names: Names, s: FunctionSettings) -> None:
    config, code = _function_configuration(names, s), _code(names, s.package)  # zip sent once
    for attempt in range(10):  # a new role takes a few seconds to become assumable
        try:
            aws.client("lambda").create_function(
                FunctionName=FUNCTION_NAME, Code=code, Tags=names.tags,
                Description=FUNCTION_DESCRIPTION, **config)
            break
        except aws.botocore_errors() as exc:
            if "cannot be assumed" not in str(exc) or attempt == 9:
                raise
            time.sleep(3)
    _wait_updated()
    _apply_invocation_settings(names, s)


def _apply_invocation_settings(names: Names, s: FunctionSettings) -> list[str]:
    """Asynchronous retries, event age, on-failure queue, reserved concurrency."""
    lam, notes = aws.client("lambda"), []
    wanted = event_invoke_config(names)
    try:
        current = lam.get_function_event_invoke_config(FunctionName=FUNCTION_NAME)
    except aws.botocore_errors() as exc:
        if not _missing(exc, "ResourceNotFoundException"):
            raise
        current = {}
    if any(current.get(k) != v for k, v in wanted.items()):
        lam.put_function_event_invoke_config(FunctionName=FUNCTION_NAME, **wanted)
        notes.append("async retries/destination")
    reserved = lam.get_function_concurrency(FunctionName=FUNCTION_NAME).get(
        "ReservedConcurrentExecutions")
    if reserved != s.concurrency:
        lam.put_function_concurrency(FunctionName=FUNCTION_NAME,
                                     ReservedConcurrentExecutions=s.concurrency)
        notes.append(f"reserved concurrency {s.concurrency}")
    return notes


def _apply_function(names: Names, s: FunctionSettings) -> str | None:
    """New code only when the zip changed (CodeSha256); configuration only when it differs."""
    lam = aws.client("lambda")
    current = lam.get_function(FunctionName=FUNCTION_NAME)["Configuration"]
    notes = []
    if s.package is not None and current.get("CodeSha256") != code_sha256(s.package):
        lam.update_function_code(FunctionName=FUNCTION_NAME, **_code(names, s.package))
        _wait_updated()
        notes.append("code")
    wanted = _function_configuration(names, s)
    have = {k: current.get(k) for k in wanted}
    have["Environment"] = {"Variables": current.get("Environment", {}).get("Variables", {})}
    have["EphemeralStorage"] = {"Size": current.get("EphemeralStorage", {}).get("Size")}
    if have != wanted:
        lam.update_function_configuration(FunctionName=FUNCTION_NAME, **wanted)
        _wait_updated()
        notes.append("configuration")
    notes += _apply_invocation_settings(names, s)
    return f"updated: {', '.join(notes)}" if notes else None


def _function(names: Names, s: FunctionSettings) -> Resource:
    lam = aws.client
    return Resource(
        f"Lambda function {FUNCTION_NAME}", _function_tags, lambda: _create_function(names, s),
        apply=lambda: _apply_function(names, s),
        tag=lambda: lam("lambda").tag_resource(Resource=names.function_arn, Tags=names.tags),
        delete=lambda: lam("lambda").delete_function(FunctionName=FUNCTION_NAME),
        skip=None if s.package else "no --package")


# -- trigger (a setting of the raw bucket and the function: no tags of its own)


def _trigger_present(names: Names) -> bool:
    try:
        config = aws.client("s3").get_bucket_notification_configuration(Bucket=names.raw)
    except aws.botocore_errors() as exc:
        if _missing(exc, "NoSuchBucket"):
            return False  # the bucket is made first
        raise
    return any(c.get("Id", "").startswith(TRIGGER_ID)
               for c in config.get("LambdaFunctionConfigurations", []))


def _apply_trigger(names: Names) -> None:
    try:
        aws.client("lambda").add_permission(FunctionName=FUNCTION_NAME,
                                            **trigger_permission(names))
    except aws.botocore_errors() as exc:
        if not _missing(exc, "ResourceConflictException"):
            raise
    s3 = aws.client("s3")
    config = s3.get_bucket_notification_configuration(Bucket=names.raw)
    config.pop("ResponseMetadata", None)
    others = [c for c in config.get("LambdaFunctionConfigurations", [])
              if not c.get("Id", "").startswith(TRIGGER_ID)]  # keep the user's own
    config["LambdaFunctionConfigurations"] = others + trigger_configurations(names.function_arn)
    s3.put_bucket_notification_configuration(Bucket=names.raw, NotificationConfiguration=config)


def _trigger(names: Names) -> Resource:
    return Resource("S3 trigger on images/*.fits[.gz|.bz2|.fz]",
                    lambda: {} if _trigger_present(names) else None,
                    lambda: _apply_trigger(names), apply=lambda: _apply_trigger(names),
                    owned=False)


# -- reference catalog


def _upload_reference(names: Names) -> None:
    """A local reference file (or folder, for HATS) goes to the catalog bucket first."""
    source = Path(names.reference_local)
    loc = parse_s3_uri(names.reference)
    s3 = aws.client("s3")
    extra = {"ExtraArgs": {"ServerSideEncryption": "AES256"}}
    if source.is_file():
        s3.upload_file(str(source), loc.bucket, loc.prefix.rstrip("/"), **extra)
        return
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        s3.upload_file(str(path), loc.bucket, loc.prefix + path.relative_to(source).as_posix(),
                       **extra)


def _reference(names: Names) -> Resource:
    return Resource(f"reference catalog {names.reference_local} -> {names.reference}",
                    lambda: None, lambda: _upload_reference(names), owned=False)


# -- Glue database, Athena workgroup and tables


def _database_tags(names: Names) -> dict[str, str] | None:
    glue = aws.client("glue")
    arn = names.arn("glue", f"database/{DATABASE}")
    return _call_tags(f"Glue database {DATABASE}", lambda: (
        glue.get_database(Name=DATABASE), glue.get_tags(ResourceArn=arn).get("Tags", {}))[1],
        "EntityNotFoundException")


def _database(names: Names) -> Resource:
    glue = aws.client
    arn = names.arn("glue", f"database/{DATABASE}")
    return Resource(
        f"Glue/Athena database {DATABASE}", lambda: _database_tags(names),
        lambda: glue("glue").create_database(DatabaseInput=database_input(), Tags=names.tags),
        tag=lambda: glue("glue").tag_resource(ResourceArn=arn, TagsToAdd=names.tags),
        delete=lambda: glue("glue").delete_database(Name=DATABASE),  # its tables and views too
        legacy_untagged=True)


def _workgroup_tags(names: Names) -> dict[str, str] | None:
    athena = aws.client("athena")
    names_seen, token = [], None
    while True:
        page = athena.list_work_groups(**({"NextToken": token} if token else {}))
        names_seen += [g["Name"] for g in page["WorkGroups"]]
        token = page.get("NextToken")
        if not token:
            break
    if WORKGROUP not in names_seen:
        return None
    arn = names.arn("athena", f"workgroup/{WORKGROUP}")
    return _tag_dict(athena.list_tags_for_resource(ResourceARN=arn).get("Tags", []))


def _apply_workgroup(names: Names) -> str | None:
    c = workgroup_configuration(names)
    have = aws.client("athena").get_work_group(WorkGroup=WORKGROUP)["WorkGroup"].get(
        "Configuration", {})
    if all(have.get(k) == v for k, v in c.items()):
        return None
    aws.client("athena").update_work_group(WorkGroup=WORKGROUP, ConfigurationUpdates={
        "ResultConfigurationUpdates": c["ResultConfiguration"],
        "EnforceWorkGroupConfiguration": c["EnforceWorkGroupConfiguration"],
        "BytesScannedCutoffPerQuery": c["BytesScannedCutoffPerQuery"],
        "PublishCloudWatchMetricsEnabled": c["PublishCloudWatchMetricsEnabled"]})
    return "updated: configuration"


def _workgroup(names: Names) -> Resource:
    athena = aws.client
    arn = names.arn("athena", f"workgroup/{WORKGROUP}")
    return Resource(
        f"Athena workgroup {WORKGROUP}", lambda: _workgroup_tags(names),
        lambda: athena("athena").create_work_group(
            Name=WORKGROUP, Description=WORKGROUP_DESCRIPTION,
            Configuration=workgroup_configuration(names), Tags=_tag_list(names.tags)),
        apply=lambda: _apply_workgroup(names),
        tag=lambda: athena("athena").tag_resource(ResourceARN=arn, Tags=_tag_list(names.tags)),
        delete=lambda: athena("athena").delete_work_group(WorkGroup=WORKGROUP,
                                                          RecursiveDeleteOption=True))


def _tables(names: Names) -> Resource:
    from .athena import ensure_tables

    def ensure():
        ensure_tables(DATABASE, WORKGROUP, f"s3://{names.catalog}", poll=0.5)

    return Resource(f"Athena tables, views and partitions in {DATABASE}", lambda: None,
                    ensure, owned=False)


# -- alarms and dashboard


def _alarm_tags(names: Names, alarm: str) -> dict[str, str] | None:
    cw = aws.client("cloudwatch")
    if not cw.describe_alarms(AlarmNames=[alarm])["MetricAlarms"]:
        return None
    arn = names.arn("cloudwatch", f"alarm:{alarm}")
    return _tag_dict(cw.list_tags_for_resource(ResourceARN=arn).get("Tags", []))


def _alarm(names: Names, definition: dict) -> Resource:
    cw = aws.client
    alarm = definition["AlarmName"]
    arn = names.arn("cloudwatch", f"alarm:{alarm}")
    return Resource(
        f"CloudWatch alarm {alarm}", lambda: _alarm_tags(names, alarm),
        lambda: cw("cloudwatch").put_metric_alarm(**definition, Tags=_tag_list(names.tags)),
        apply=lambda: _quiet(cw("cloudwatch").put_metric_alarm(**definition)),
        tag=lambda: cw("cloudwatch").tag_resource(ResourceARN=arn, Tags=_tag_list(names.tags)),
        delete=lambda: cw("cloudwatch").delete_alarms(AlarmNames=[alarm]))


def _dashboard_tags() -> dict[str, str] | None:
    try:
        body = aws.client("cloudwatch").get_dashboard(DashboardName=DASHBOARD)["DashboardBody"]
    except aws.botocore_errors() as exc:
        if _missing(exc, "ResourceNotFound", "ResourceNotFoundException"):
            return None
        raise aws.translate(exc, DASHBOARD) from None
    widgets = json.loads(body or "{}").get("widgets") or [{}]
    text = str(widgets[0].get("properties", {}).get("markdown", ""))
    marker = f"({DEPLOYMENT_TAG}="
    return {DEPLOYMENT_TAG: text.split(marker, 1)[1].rstrip(")")} if marker in text else {}


def _dashboard(names: Names) -> Resource:
    cw = aws.client

    def put():
        cw("cloudwatch").put_dashboard(DashboardName=DASHBOARD,
                                       DashboardBody=json.dumps(dashboard_body(names)))

    return Resource(f"CloudWatch dashboard {DASHBOARD}", _dashboard_tags, put, apply=put,
                    delete=lambda: cw("cloudwatch").delete_dashboards(DashboardNames=[DASHBOARD]))


# ---- plans ---------------------------------------------------------------------------------


def setup_resources(names: Names, settings: FunctionSettings, *,
                    trigger: bool = False) -> list[Resource]:
    """What setup makes, in order (nothing is called until a resource is used).

    Parameters
    ----------
    names : Names
        The deployment's names (:func:`resolve_names`).
    settings : FunctionSettings
        The function's zip (None: the function is not made or updated), memory, timeouts.
    trigger : bool
        Add the S3 trigger on the raw bucket (the first one needs the zip).

    Returns
    -------
    list of Resource
    """
    resources = [_bucket(name, names, lifecycle) for name, lifecycle in buckets(names)]
    resources += [_queue(names), _role(names), _log_group(names)]
    if names.reference_local:
        resources.append(_reference(names))
    resources.append(_function(names, settings))
    if trigger:
        trigger_resource = _trigger(names)
        if settings.package is None:
            trigger_resource.skip = "the first --trigger needs --package"
        resources.append(trigger_resource)
    resources += [_database(names), _workgroup(names), _tables(names)]
    resources += [_alarm(names, d) for d in alarm_definitions(names)] + [_dashboard(names)]
    return resources


def _check(resource: Resource, names: Names) -> tuple[dict | None, str | None]:
    """(tags, ownership) of *resource*; raises on a foreign one before anything is changed."""
    tags = resource.tags()
    if tags is None or not resource.owned:
        return tags, None
    return tags, ownership(resource.name, tags, names, resource.fix, resource.legacy_untagged)


def run_setup(resources: list[Resource], names: Names, dry_run: bool = False,
              before_changes: Callable[[], None] | None = None) -> Plan:
    """Check every resource first (nothing is made when one is foreign), then make or repair
    each.

    Parameters
    ----------
    resources : list of Resource
        :func:`setup_resources`' list.
    names : Names
        The deployment: resources must carry its tag (or be adoptable).
    dry_run : bool
        Run the checks and report ``would ...``; change nothing.
    before_changes : callable, optional
        Runs once, after the checks and before the first change (setup_aws.py records the
        deployment there, so a setup that fails half-way leaves an env file cleanup can find).

    Returns
    -------
    Plan
        Per resource: ``created``, ``adopted``, ``unchanged``, ``updated: ...``, ``skipped``.

    Raises
    ------
    ConfigError
        Foreign resources (one error names every conflict; nothing was made).
    StorageError
        An AWS call failed (what was made before it stays, and is adopted by a rerun).
    """
    checked, conflicts = [], []
    for resource in resources:  # every name first: one refusal names every conflict
        try:
            checked.append((resource, *_check(resource, names)))
        except ConfigError as exc:
            conflicts.append(exc)
    if len(conflicts) == 1:
        raise conflicts[0]
    if conflicts:  # resources refused for the same reason share it: "a, b: cause; c: cause"
        groups: dict[str, list[str]] = {}
        for conflict in conflicts:
            groups.setdefault(conflict.cause, []).append(conflict.source)
        first, *rest = [(", ".join(sources), cause) for cause, sources in groups.items()]
        raise ConfigError(first[0], "; ".join([first[1]] + [f"{s}: {c}" for s, c in rest])
                          + f" ({len(conflicts)} name conflicts; nothing was made)")
    if before_changes is not None and not dry_run:
        before_changes()
    plan = Plan()
    for resource, tags, owner in checked:
        if tags is None and resource.skip:
            plan.states.append((resource.name, f"skipped ({resource.skip})"))
            continue
        if dry_run:
            verb = "would create" if tags is None else (
                "would adopt (tag)" if owner == "adopt" else "would re-apply settings")
            plan.states.append((resource.name, verb))
            continue
        try:
            if tags is None:
                resource.create()
                state = "created" if resource.owned else "ensured"
            else:
                if owner == "adopt":
                    resource.tag()
                note = resource.apply()
                note = note if isinstance(note, str) else None
                state = "adopted (tagged)" if owner == "adopt" else (note or "unchanged")
                if owner == "adopt" and note:
                    state += f"; {note}"
        except (*aws.botocore_errors(), OSError) as exc:  # OSError: the zip or reference file
            raise aws.translate(exc, resource.name) from None
        plan.states.append((resource.name, state))
    return plan

"""Create and delete the AWS side: buckets, IAM role, log group, Lambda, trigger, Athena.

Setup is a list of steps, each with a check and an action, so a second run changes nothing
(and says so) and ``--dry-run`` only prints the plan. Cleanup deletes exactly the names setup
recorded in the env file and ends with a checklist of what is gone.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import aws
from .errors import ConfigError

ROLE_NAME = "lambda-astronomy-role"
POLICY_NAME = "astronomy-least-privilege"
FUNCTION_NAME = "astronomy-source-detection"
LOG_GROUP = f"/aws/lambda/{FUNCTION_NAME}"
WORKGROUP = "astronomy-workgroup"
DATABASE = "astronomy"
RAW_PREFIX, CATALOG_PREFIX = "astronomy-raw-", "astronomy-catalog-"
TAGS = {"project": "skysurvey"}
RUNTIME = "python3.12"  # Amazon Linux 2023: loads numpy>=2.3's manylinux_2_28 wheels
LOG_RETENTION_DAYS = 14
SCAN_CUTOFF_BYTES = 1024**3  # Athena refuses queries that would scan more than 1 GiB
DIRECT_UPLOAD_LIMIT = 50 * 2**20


@dataclass(frozen=True)
class Names:
    suffix: str
    region: str
    account: str

    @property
    def raw(self) -> str:
        return RAW_PREFIX + self.suffix

    @property
    def catalog(self) -> str:
        return CATALOG_PREFIX + self.suffix

    @property
    def log_group_arn(self) -> str:
        return f"arn:aws:logs:{self.region}:{self.account}:log-group:{LOG_GROUP}:*"

    def env(self) -> dict[str, str]:
        return {"BUCKET_RAW": f"s3://{self.raw}", "BUCKET_CATALOG": f"s3://{self.catalog}",
                "LAMBDA_FUNCTION": FUNCTION_NAME, "ATHENA_DATABASE": DATABASE,
                "ATHENA_WORKGROUP": WORKGROUP,
                "ATHENA_OUTPUT": f"s3://{self.catalog}/athena-results/",
                "AWS_REGION": self.region, "SKYSURVEY_SUFFIX": self.suffix}


def new_suffix() -> str:
    return secrets.token_hex(4)


def resolve_names(suffix: str | None, region: str | None, saved: dict[str, str]) -> Names:
    """Names from flags, else from the env file a previous setup wrote, else new."""
    session_region = aws.client("sts").meta.region_name
    region = region or saved.get("AWS_REGION") or session_region
    try:
        account = aws.client("sts").get_caller_identity()["Account"]
    except Exception as exc:
        raise aws.translate(exc, "sts") from None
    return Names(suffix or saved.get("SKYSURVEY_SUFFIX") or new_suffix(), region, account)


def trust_policy() -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


def lambda_policy(names: Names) -> dict:
    """Least privilege: read raw images, write catalog files, write its own logs."""
    raw, cat = f"arn:aws:s3:::{names.raw}", f"arn:aws:s3:::{names.catalog}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadRawImages", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"{raw}/images/*"]},
        {"Sid": "WriteCatalog", "Effect": "Allow",
         "Action": ["s3:PutObject", "s3:DeleteObject"],  # delete: undo a half-written image
         "Resource": [f"{cat}/sources/*", f"{cat}/images/*"]},
        {"Sid": "ListBuckets", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": [raw, cat]},
        {"Sid": "OwnLogs", "Effect": "Allow",
         "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": [names.log_group_arn]},
    ]}


@dataclass
class Step:
    name: str
    exists: Callable[[], bool]
    create: Callable[[], None]
    always: bool = False  # idempotent by itself (IF NOT EXISTS): run every time, not a change


def _code(exc) -> str:
    return aws.error_code(exc)


def _bucket_exists(name: str) -> bool:
    try:
        aws.client("s3").head_bucket(Bucket=name)
        return True
    except Exception as exc:
        if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise aws.translate(exc, f"s3://{name}") from None


def _create_bucket(name: str, region: str, lifecycle: bool) -> None:
    s3 = aws.client("s3")
    kwargs = {} if region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=name, **kwargs)
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [
        {"Key": k, "Value": v} for k, v in TAGS.items()]})
    if lifecycle:
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [
            {"ID": "expire-athena-results", "Status": "Enabled",
             "Filter": {"Prefix": "athena-results/"}, "Expiration": {"Days": 7}}]})


def _role_exists() -> bool:
    try:
        aws.client("iam").get_role(RoleName=ROLE_NAME)
        return True
    except Exception as exc:
        if _code(exc) == "NoSuchEntity":
            return False
        raise aws.translate(exc, ROLE_NAME) from None


def _create_role(names: Names) -> None:
    iam = aws.client("iam")
    iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust_policy()),
                    Description="Sky survey source detection (least privilege)",
                    Tags=[{"Key": k, "Value": v} for k, v in TAGS.items()])
    iam.put_role_policy(RoleName=ROLE_NAME, PolicyName=POLICY_NAME,
                        PolicyDocument=json.dumps(lambda_policy(names)))


def _log_group_exists() -> bool:
    groups = aws.client("logs").describe_log_groups(logGroupNamePrefix=LOG_GROUP)["logGroups"]
    return any(g["logGroupName"] == LOG_GROUP for g in groups)


def _create_log_group() -> None:
    logs = aws.client("logs")
    logs.create_log_group(logGroupName=LOG_GROUP, tags=TAGS)
    logs.put_retention_policy(logGroupName=LOG_GROUP, retentionInDays=LOG_RETENTION_DAYS)


def _function_exists() -> bool:
    try:
        aws.client("lambda").get_function(FunctionName=FUNCTION_NAME)
        return True
    except Exception as exc:
        if _code(exc) == "ResourceNotFoundException":
            return False
        raise aws.translate(exc, FUNCTION_NAME) from None


def _create_function(names: Names, package: Path, memory: int, timeout: int,
                     ephemeral: int) -> None:
    role = aws.client("iam").get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
    data = package.read_bytes()
    if len(data) <= DIRECT_UPLOAD_LIMIT:
        code = {"ZipFile": data}
    else:  # larger zips go through S3 (Lambda's direct upload limit is 50 MB)
        aws.client("s3").put_object(Bucket=names.catalog, Key="lambda/package.zip", Body=data,
                                    ServerSideEncryption="AES256")
        code = {"S3Bucket": names.catalog, "S3Key": "lambda/package.zip"}
    for attempt in range(10):  # a new role takes a few seconds to become assumable
        try:
            aws.client("lambda").create_function(
                FunctionName=FUNCTION_NAME, Runtime=RUNTIME, Role=role,
                Handler="lambda_function.lambda_handler", Code=code, MemorySize=memory,
                Timeout=timeout, EphemeralStorage={"Size": ephemeral},
                Environment={"Variables": {"BUCKET_CATALOG": f"s3://{names.catalog}"}},
                Tags=TAGS, Description="FITS image -> Parquet source catalog")
            return
        except Exception as exc:
            if "cannot be assumed" not in str(exc) or attempt == 9:
                raise
            time.sleep(3)


def _trigger_exists(names: Names) -> bool:
    config = aws.client("s3").get_bucket_notification_configuration(Bucket=names.raw)
    return any(c.get("Id") == "astronomy-images"
               for c in config.get("LambdaFunctionConfigurations", []))


def _create_trigger(names: Names) -> None:
    fn = aws.client("lambda").get_function(FunctionName=FUNCTION_NAME)["Configuration"]
    aws.client("lambda").add_permission(
        FunctionName=FUNCTION_NAME, StatementId="s3-invoke-astronomy-images",
        Action="lambda:InvokeFunction", Principal="s3.amazonaws.com",
        SourceArn=f"arn:aws:s3:::{names.raw}", SourceAccount=names.account)
    aws.client("s3").put_bucket_notification_configuration(
        Bucket=names.raw, NotificationConfiguration={"LambdaFunctionConfigurations": [{
            "Id": "astronomy-images", "LambdaFunctionArn": fn["FunctionArn"],
            "Events": ["s3:ObjectCreated:*"], "Filter": {"Key": {"FilterRules": [
                {"Name": "prefix", "Value": "images/"}]}}}]})


def _workgroup_exists() -> bool:
    athena, token = aws.client("athena"), None
    while True:
        page = athena.list_work_groups(**({"NextToken": token} if token else {}))
        if any(g["Name"] == WORKGROUP for g in page["WorkGroups"]):
            return True
        token = page.get("NextToken")
        if not token:
            return False


def _create_workgroup(names: Names) -> None:
    aws.client("athena").create_work_group(
        Name=WORKGROUP, Description="Sky survey catalog queries",
        Configuration={"ResultConfiguration": {
            "OutputLocation": f"s3://{names.catalog}/athena-results/",
            "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"}},
            "EnforceWorkGroupConfiguration": True,
            "BytesScannedCutoffPerQuery": SCAN_CUTOFF_BYTES,
            "PublishCloudWatchMetricsEnabled": True},
        Tags=[{"Key": k, "Value": v} for k, v in TAGS.items()])


def _create_tables(names: Names) -> None:
    from .athena import ensure_tables

    ensure_tables(DATABASE, WORKGROUP, f"s3://{names.catalog}", poll=0.5)


def setup_steps(names: Names, *, package: Path | None, trigger: bool, memory: int = 1024,
                timeout: int = 300, ephemeral: int = 2048) -> list[Step]:
    steps = [
        Step(f"bucket s3://{names.raw}", lambda: _bucket_exists(names.raw),
             lambda: _create_bucket(names.raw, names.region, lifecycle=False)),
        Step(f"bucket s3://{names.catalog}", lambda: _bucket_exists(names.catalog),
             lambda: _create_bucket(names.catalog, names.region, lifecycle=True)),
        Step(f"IAM role {ROLE_NAME}", _role_exists, lambda: _create_role(names)),
        Step(f"log group {LOG_GROUP}", _log_group_exists, _create_log_group),
    ]
    if package is not None:
        steps.append(Step(f"Lambda function {FUNCTION_NAME}", _function_exists,
                          lambda: _create_function(names, package, memory, timeout, ephemeral)))
        if trigger:
            steps.append(Step("S3 trigger on images/", lambda: _trigger_exists(names),
                              lambda: _create_trigger(names)))
    steps += [
        Step(f"Athena workgroup {WORKGROUP}", _workgroup_exists, lambda: _create_workgroup(names)),
        Step(f"Athena database {DATABASE} and tables", lambda: False,
             lambda: _create_tables(names), always=True),
    ]
    return steps


def run_steps(steps: list[Step], dry_run: bool = False) -> list[tuple[str, str]]:
    """``(step, state)`` for each step: exists, created, ensured, or would create."""
    states = []
    for step in steps:
        try:
            present = step.exists()
        except Exception:
            if not dry_run:
                raise
            present = False
        if present and not step.always:
            states.append((step.name, "exists"))
        elif dry_run:
            states.append((step.name, "would create" if not step.always else "would ensure"))
        else:
            try:
                step.create()
            except Exception as exc:
                raise aws.translate(exc, step.name) from None
            states.append((step.name, "ensured" if step.always else "created"))
    return states


# ---- cleanup -------------------------------------------------------------------------------


def _empty_and_delete_bucket(name: str) -> None:
    s3 = aws.client("s3")
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=name):
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                   for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if objects:
            s3.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
    s3.delete_bucket(Bucket=name)


def _delete_role() -> None:
    iam = aws.client("iam")
    for policy in iam.list_role_policies(RoleName=ROLE_NAME)["PolicyNames"]:
        iam.delete_role_policy(RoleName=ROLE_NAME, PolicyName=policy)
    iam.delete_role(RoleName=ROLE_NAME)


def _drop_tables(names: Names) -> None:
    from .athena import run_athena

    # CASCADE: the views, the dated/undated tables and any older plain tables (data stays in S3)
    run_athena(f"DROP DATABASE IF EXISTS `{DATABASE}` CASCADE", database=DATABASE,
               workgroup=WORKGROUP, poll=0.5)


def cleanup_steps(names: Names) -> list[Step]:
    """The same resources as setup, in reverse; ``create`` deletes here."""
    return [
        Step(f"Athena database {DATABASE} and tables", _workgroup_exists,
             lambda: _drop_tables(names)),
        Step(f"Athena workgroup {WORKGROUP}", _workgroup_exists,
             lambda: aws.client("athena").delete_work_group(WorkGroup=WORKGROUP,
                                                            RecursiveDeleteOption=True)),
        Step(f"Lambda function {FUNCTION_NAME} (and its S3 trigger)", _function_exists,
             lambda: aws.client("lambda").delete_function(FunctionName=FUNCTION_NAME)),
        Step(f"log group {LOG_GROUP}", _log_group_exists,
             lambda: aws.client("logs").delete_log_group(logGroupName=LOG_GROUP)),
        Step(f"IAM role {ROLE_NAME}", _role_exists, _delete_role),
        Step(f"bucket s3://{names.catalog}", lambda: _bucket_exists(names.catalog),
             lambda: _empty_and_delete_bucket(names.catalog)),
        Step(f"bucket s3://{names.raw}", lambda: _bucket_exists(names.raw),
             lambda: _empty_and_delete_bucket(names.raw)),
    ]


def run_cleanup(steps: list[Step], dry_run: bool = False) -> list[tuple[str, str]]:
    states = []
    for step in steps:
        if not step.exists():
            states.append((step.name, "already gone"))
        elif dry_run:
            states.append((step.name, "would delete"))
        else:
            try:
                step.create()
            except Exception as exc:
                raise aws.translate(exc, step.name) from None
            states.append((step.name, "deleted"))
    return states


def checklist(names: Names) -> list[tuple[str, bool]]:
    """``(resource, gone)`` for every resource setup makes."""
    return [(s.name, not s.exists()) for s in cleanup_steps(names)[1:]]


def require_names(saved: dict[str, str]) -> Names:
    if not saved.get("SKYSURVEY_SUFFIX"):
        raise ConfigError("env file", "no SKYSURVEY_SUFFIX: nothing was set up from here "
                                      "(run scripts/setup_aws.py first, or pass --suffix)")
    return resolve_names(saved["SKYSURVEY_SUFFIX"], saved.get("AWS_REGION"), saved)

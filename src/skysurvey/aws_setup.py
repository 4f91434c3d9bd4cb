"""Create, repair and delete the AWS side: buckets, queue, role, logs, Lambda, Glue/Athena, alarms.

Ownership rule: everything setup makes carries the tag ``skysurvey:deployment=<suffix>``. Setup
refuses to adopt a resource that lacks it (or names another deployment), with one line naming
the resource and what to do; cleanup deletes only what carries it and lists the rest.
Deployments made before tagging (tag ``project=skysurvey`` only) are adopted, and tagged, when
the env file's ``SKYSURVEY_SUFFIX`` is the suffix in use. One deployment per account and region:
the function, role, log group, queue, workgroup and database names are fixed, so a second suffix
is refused by naming the first.

Every run re-applies the settings of what exists (role policy, bucket settings, function code
and configuration, ...): drift is repaired, not reported as "exists". ``--dry-run`` runs the
same ownership checks and prints the plan.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import aws
from .config import QUEUE_NAME, is_s3_uri, parse_s3_uri
from .errors import ConfigError, StorageError

ROLE_NAME = "lambda-astronomy-role"
POLICY_NAME = "astronomy-least-privilege"
FUNCTION_NAME = "astronomy-source-detection"
LOG_GROUP = f"/aws/lambda/{FUNCTION_NAME}"
WORKGROUP = "astronomy-workgroup"
DATABASE = "astronomy"
DASHBOARD = "astronomy-pipeline"
ALARM_ERRORS = f"{FUNCTION_NAME}-errors"
ALARM_THROTTLES = f"{FUNCTION_NAME}-throttles"
ALARM_QUEUE = f"{QUEUE_NAME}-depth"
RAW_PREFIX, CATALOG_PREFIX = "astronomy-raw-", "astronomy-catalog-"
DEPLOYMENT_TAG = "skysurvey:deployment"
STACK_TAG = "aws:cloudformation:stack-name"  # what a CloudFormation stack made (cfn_template)
PROJECT_TAGS = {"project": "skysurvey"}  # all that deployments made before tagging carry
RUNTIME = "python3.12"  # Amazon Linux 2023: loads numpy>=2.3's manylinux_2_28 wheels
LOG_RETENTION_DAYS = 14
SCAN_CUTOFF_BYTES = 1024**3  # Athena refuses queries that would scan more than 1 GiB
DIRECT_UPLOAD_LIMIT = 50 * 2**20
DEFAULT_CONCURRENCY = 10  # reserved concurrency: a burst of uploads cannot take the account
MAX_RETRY_ATTEMPTS = 2  # Lambda's own retries of a failed asynchronous (S3-triggered) event
MAX_EVENT_AGE_SECONDS = 6 * 3600  # an event older than this goes to the failed-events queue
QUEUE_RETENTION_SECONDS = 14 * 86400  # SQS maximum: two weeks to redrive
FITS_TRIGGER_SUFFIXES = tuple(
    f".{base}{comp}" for base in ("fits", "fit", "fts") for comp in ("", ".gz", ".bz2", ".fz"))
TRIGGER_ID = "astronomy-images"
LIFECYCLE = {"Rules": [{"ID": "expire-athena-results", "Status": "Enabled",  # catalog bucket
                        "Filter": {"Prefix": "athena-results/"}, "Expiration": {"Days": 7}}]}
TLS_ONLY = True  # tests that then move objects through moto switch it off (moto ignores conditions)
PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                       "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
BUCKET_ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
ROLE_DESCRIPTION = "Sky survey source detection (least privilege)"
FUNCTION_DESCRIPTION = "FITS image -> Parquet source catalog"
HANDLER = "lambda_function.lambda_handler"
DATABASE_DESCRIPTION = "Sky survey catalog (skysurvey)"
WORKGROUP_DESCRIPTION = "Sky survey catalog queries"
TRIGGER_STATEMENT_ID = "s3-invoke-astronomy-images"
#: In the env file while a setup runs (``incomplete``): a setup that fails half-way leaves the
#: suffix and region there, so cleanup_aws.py finds (by tag) and removes what it made.
SETUP_MARKER = "SKYSURVEY_SETUP"


@dataclass(frozen=True)
class Names:
    suffix: str
    region: str
    account: str
    adopt_legacy: bool = False  # the env file names this suffix: adopt project=skysurvey ones
    reference: str | None = None  # s3:// URI of the reference catalog the function reads
    reference_bands: str | None = None
    reference_local: str | None = None  # local file or folder uploaded to `reference`
    tls_only: bool = True  # False: --no-tls-policy (S3-compatible test endpoints such as moto)

    @property
    def raw(self) -> str:
        return RAW_PREFIX + self.suffix

    @property
    def catalog(self) -> str:
        return CATALOG_PREFIX + self.suffix

    @property
    def tags(self) -> dict[str, str]:
        return {**PROJECT_TAGS, DEPLOYMENT_TAG: self.suffix}

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{self.account}:{resource}"

    @property
    def log_group_arn(self) -> str:
        return self.arn("logs", f"log-group:{LOG_GROUP}:*")

    @property
    def queue_arn(self) -> str:
        return self.arn("sqs", QUEUE_NAME)

    @property
    def function_arn(self) -> str:
        return self.arn("lambda", f"function:{FUNCTION_NAME}")

    def env(self) -> dict[str, str]:
        values = {"BUCKET_RAW": f"s3://{self.raw}", "BUCKET_CATALOG": f"s3://{self.catalog}",
                  "LAMBDA_FUNCTION": FUNCTION_NAME, "ATHENA_DATABASE": DATABASE,
                  "ATHENA_WORKGROUP": WORKGROUP,
                  "ATHENA_OUTPUT": f"s3://{self.catalog}/athena-results/",
                  "FAILED_EVENTS_QUEUE": QUEUE_NAME,
                  "AWS_REGION": self.region, "SKYSURVEY_SUFFIX": self.suffix}
        return values | self.reference_settings()

    def reference_settings(self) -> dict[str, str]:
        """``REFERENCE_CATALOG``/``REFERENCE_BANDS`` when a reference catalog is set."""
        values = {"REFERENCE_CATALOG": self.reference, "REFERENCE_BANDS": self.reference_bands}
        return {k: v for k, v in values.items() if v}


def default_suffix(account: str, region: str) -> str:
    """The suffix a deployment gets when none is given: derived from account and region, so
    ``--dry-run`` and the real run (and a rerun without the env file) agree."""
    return hashlib.sha256(f"skysurvey:{account}:{region}".encode()).hexdigest()[:8]


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
    """Names from flags, else from the env file a previous setup wrote, else derived."""
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


# ---- policies --------------------------------------------------------------------------


def trust_policy() -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


#: A reference URI ending in one of these is one file; anything else (a HATS catalog) a prefix.
REFERENCE_FILE_SUFFIXES = {".parquet", ".pq", ".csv", ".ecsv", ".fits", ".fit", ".fts", ".vot",
                           ".xml", ".votable"}


def _reference_statements(uri: str) -> list[dict]:
    """Read access to exactly the reference object, or the prefix of a folder (HATS)."""
    loc = parse_s3_uri(uri)
    bucket = f"arn:aws:s3:::{loc.bucket}"
    suffixes = [x.lower() for x in PurePosixPath(loc.prefix.rstrip("/")).suffixes]
    if not uri.endswith("/") and set(suffixes) & REFERENCE_FILE_SUFFIXES:
        return [{"Sid": "ReadReference", "Effect": "Allow", "Action": ["s3:GetObject"],
                 "Resource": [f"{bucket}/{loc.prefix.rstrip('/')}"]}]
    return [{"Sid": "ReadReference", "Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": [f"{bucket}/{loc.prefix}*"]},
            {"Sid": "ListReference", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [bucket],
             "Condition": {"StringLike": {"s3:prefix": [loc.prefix, f"{loc.prefix}*"]}}}]


def lambda_policy(names: Names) -> dict:
    """Least privilege: read raw images, write catalog files (and read back an image's own
    files when it is re-processed), register their Athena partitions, run objects units
    (read the objects tables, write the staging area), write its own logs, send failed events
    to its queue (the on-failure destination), read the reference catalog if one is set.
    ``tests/test_iam.py`` checks every request the function makes against this."""
    from .athena import PARTITIONED_TABLES
    from .schema import OBJECT_TABLES, OBJECTS_STAGING

    raw, cat = f"arn:aws:s3:::{names.raw}", f"arn:aws:s3:::{names.catalog}"
    glue = [names.arn("glue", "catalog"), names.arn("glue", f"database/{DATABASE}")]
    glue += [names.arn("glue", f"table/{DATABASE}/{t}") for t in PARTITIONED_TABLES]
    statements = [
        {"Sid": "ReadRawImages", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"{raw}/images/*"]},
        # an image's files, its record and its entry (image_ids/: which files it has, read
        # before re-processing); delete: earlier files of a re-processed image, or undo a
        # half-written one
        {"Sid": "WriteCatalog", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": [f"{cat}/sources/*", f"{cat}/images/*", f"{cat}/image_ids/*"]},
        # build_objects.py --backend lambda: a unit reads the objects it extends and writes
        # only to the staging area (the driver, with the user's credentials, commits)
        {"Sid": "ReadObjects", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"{cat}/{table}/*" for table in OBJECT_TABLES]},
        {"Sid": "StageObjectUnits", "Effect": "Allow", "Action": ["s3:PutObject"],
         "Resource": [f"{cat}/{OBJECTS_STAGING}/*"]},
        # forced_photometry.py --backend lambda: an image's forced file (and its copy in an
        # earlier partition, deleted); objects are read through ReadObjects
        {"Sid": "WriteForcedPhotometry", "Effect": "Allow",
         "Action": ["s3:PutObject", "s3:DeleteObject"],
         "Resource": [f"{cat}/forced_photometry/*"]},
        {"Sid": "ListBuckets", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": [raw, cat]},
        {"Sid": "RegisterPartitions", "Effect": "Allow", "Action": ["glue:BatchCreatePartition"],
         "Resource": glue},
        {"Sid": "OwnLogs", "Effect": "Allow",
         "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": [names.log_group_arn]},
        {"Sid": "FailedEvents", "Effect": "Allow", "Action": ["sqs:SendMessage"],
         "Resource": [names.queue_arn]},
    ]
    if names.reference:
        statements += _reference_statements(names.reference)
    return {"Version": "2012-10-17", "Statement": statements}


def tls_only_policy(bucket: str) -> dict:
    """Deny every request to *bucket* that does not use TLS."""
    arn = f"arn:aws:s3:::{bucket}"
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


def bucket_settings(name: str, names: Names, lifecycle: bool) -> dict:
    """Everything one bucket gets, as the S3 API takes it (setup applies it, the
    CloudFormation template translates it): private, encrypted, tagged, TLS-only, and the
    lifecycle rule on the catalog bucket (None on the raw one)."""
    return {"PublicAccessBlockConfiguration": PUBLIC_ACCESS_BLOCK,
            "ServerSideEncryptionConfiguration": BUCKET_ENCRYPTION,
            "Tags": names.tags, "LifecycleConfiguration": LIFECYCLE if lifecycle else None,
            "Policy": tls_only_policy(name)}


def buckets(names: Names) -> list[tuple[str, bool]]:
    """``(bucket, has the lifecycle rule)``: the raw bucket, then the catalog bucket."""
    return [(names.raw, False), (names.catalog, True)]


def trigger_permission(names: Names) -> dict:
    """The resource policy statement that lets S3 (the raw bucket, this account) invoke the
    function (``lambda:AddPermission`` arguments)."""
    return {"StatementId": TRIGGER_STATEMENT_ID, "Action": "lambda:InvokeFunction",
            "Principal": "s3.amazonaws.com", "SourceArn": f"arn:aws:s3:::{names.raw}",
            "SourceAccount": names.account}


def trigger_configurations(function_arn: str) -> list[dict]:
    """One notification per FITS suffix (S3 filters take one prefix and one suffix each)."""
    return [{"Id": f"{TRIGGER_ID}{suffix}", "LambdaFunctionArn": function_arn,
             "Events": ["s3:ObjectCreated:*"], "Filter": {"Key": {"FilterRules": [
                 {"Name": "prefix", "Value": "images/"},
                 {"Name": "suffix", "Value": suffix}]}}}
            for suffix in FITS_TRIGGER_SUFFIXES]


# ---- ownership -------------------------------------------------------------------------


def _tag_dict(tags) -> dict[str, str]:
    if isinstance(tags, dict):
        return dict(tags)
    return {t["Key"]: t["Value"] for t in tags or []}


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def ownership(resource: str, tags: dict[str, str], names: Names, fix: str,
              legacy_untagged: bool = False) -> str:
    """``'ours'`` or ``'adopt'`` (a pre-tagging deployment of this suffix); else ConfigError
    naming *resource* and what to do (*fix*). *legacy_untagged*: the setup of before tagging
    made this resource without any tag (the database, through Athena SQL)."""
    stack = tags.get(STACK_TAG)
    if stack:
        raise ConfigError(resource, stack_message(stack))
    owner = tags.get(DEPLOYMENT_TAG)
    if owner == names.suffix:
        return "ours"
    if owner:
        raise ConfigError(resource, f"belongs to skysurvey deployment '{owner}' and there is "
                                    f"one per account and region: use --suffix {owner}, or run "
                                    f"scripts/cleanup_aws.py --suffix {owner} first")
    if legacy_untagged and not tags and names.adopt_legacy:
        return "adopt"
    if tags.get("project") == PROJECT_TAGS["project"]:
        if names.adopt_legacy:
            return "adopt"
        raise ConfigError(resource, "made by an older skysurvey setup of another suffix: put "
                                    "its suffix in the env file (SKYSURVEY_SUFFIX) or pass it "
                                    "with --suffix to adopt it")
    raise ConfigError(resource, f"exists and is not tagged {DEPLOYMENT_TAG}={names.suffix}, "
                                f"so setup will not adopt it: {fix}")


def stack_message(stack: str) -> str:
    return (f"belongs to CloudFormation stack '{stack}': change it with aws cloudformation "
            f"deploy, delete it with aws cloudformation delete-stack --stack-name {stack} "
            "(setup_guide.md, Deploy with CloudFormation)")


@dataclass
class Resource:
    """One AWS resource: its tags (None when absent), and how to make, repair, delete it."""

    name: str
    tags: Callable[[], dict[str, str] | None]
    create: Callable[[], None]
    apply: Callable[[], str | None] = lambda: None  # re-apply settings; a change note or None
    tag: Callable[[], None] = lambda: None
    delete: Callable[[], None] = lambda: None
    fix: str = "delete or rename it"
    owned: bool = True  # False: a setting of another resource (trigger, tables): no tags
    skip: str | None = None  # why it cannot be created in this run (it is still checked)
    legacy_untagged: bool = False  # made untagged by the setup of before tagging


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


QUEUE_ATTRIBUTES = {"SqsManagedSseEnabled": "true",
                    "MessageRetentionPeriod": str(QUEUE_RETENTION_SECONDS)}


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


def code_sha256(package: Path) -> str:
    """Lambda's ``CodeSha256`` of a zip: base64 of its SHA-256."""
    return base64.b64encode(hashlib.sha256(package.read_bytes()).digest()).decode()


def _function_tags() -> dict[str, str] | None:
    return _call_tags(FUNCTION_NAME, lambda: aws.client("lambda").get_function(
        FunctionName=FUNCTION_NAME).get("Tags", {}), "ResourceNotFoundException")


@dataclass(frozen=True)
class FunctionSettings:
    package: Path | None
    memory: int = 1024
    timeout: int = 300
    ephemeral: int = 2048
    concurrency: int = DEFAULT_CONCURRENCY


PACKAGE_KEY = "lambda/package.zip"

#: Added to a refused package upload when AWS_ENDPOINT_URL points at a test endpoint.
TEST_ENDPOINT_HINT = ("an S3-compatible test endpoint such as moto applies the TLS-only bucket "
                      "policy without its aws:SecureTransport condition and refuses every "
                      "object call: run setup_aws.py with --no-tls-policy there (never on AWS)")


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


def function_environment(names: Names) -> dict[str, str]:
    return {"BUCKET_CATALOG": f"s3://{names.catalog}", "ATHENA_DATABASE": DATABASE,
            **names.reference_settings()}


def function_configuration(names: Names, s: FunctionSettings, role_arn) -> dict:
    """The function's configuration (``CreateFunction``/``UpdateFunctionConfiguration``)."""
    return {"Runtime": RUNTIME, "Role": role_arn, "Handler": HANDLER,
            "MemorySize": s.memory, "Timeout": s.timeout,
            "EphemeralStorage": {"Size": s.ephemeral},
            "Environment": {"Variables": function_environment(names)}}


def _function_configuration(names: Names, s: FunctionSettings) -> dict:
    role = aws.client("iam").get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
    return function_configuration(names, s, role)


def event_invoke_config(names: Names) -> dict:
    """Asynchronous invocations: at most 2 retries, 6 hours, then the failed-events queue."""
    return {"MaximumRetryAttempts": MAX_RETRY_ATTEMPTS,
            "MaximumEventAgeInSeconds": MAX_EVENT_AGE_SECONDS,
            "DestinationConfig": {"OnFailure": {"Destination": names.queue_arn}}}


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


def database_input() -> dict:
    return {"Name": DATABASE, "Description": DATABASE_DESCRIPTION}


def glue_tables(names: Names) -> list[dict]:
    """The Glue ``TableInput`` of every table (Parquet under the catalog bucket, with its
    partition keys): what ``athena.ensure_tables`` creates. The views over them are Athena
    SQL, made on first use (``ensure_tables``)."""
    from .athena import TABLES, glue_table_input

    return [glue_table_input(spec, f"s3://{names.catalog}") for spec in TABLES.values()]


def _database(names: Names) -> Resource:
    glue = aws.client
    arn = names.arn("glue", f"database/{DATABASE}")
    return Resource(
        f"Glue/Athena database {DATABASE}", lambda: _database_tags(names),
        lambda: glue("glue").create_database(DatabaseInput=database_input(), Tags=names.tags),
        tag=lambda: glue("glue").tag_resource(ResourceArn=arn, TagsToAdd=names.tags),
        delete=lambda: glue("glue").delete_database(Name=DATABASE),  # its tables and views too
        legacy_untagged=True)


def workgroup_configuration(names: Names) -> dict:
    return {"ResultConfiguration": {
        "OutputLocation": f"s3://{names.catalog}/athena-results/",
        "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"}},
        "EnforceWorkGroupConfiguration": True,
        "BytesScannedCutoffPerQuery": SCAN_CUTOFF_BYTES,
        "PublishCloudWatchMetricsEnabled": True}


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


def alarm_definitions(names: Names) -> list[dict]:
    """Errors and throttles of the function, messages waiting in the failed-events queue."""
    base = {"Period": 300, "EvaluationPeriods": 1, "Threshold": 1.0, "Statistic": "Sum",
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching"}
    fn = [{"Name": "FunctionName", "Value": FUNCTION_NAME}]
    return [
        {**base, "AlarmName": ALARM_ERRORS, "Namespace": "AWS/Lambda", "MetricName": "Errors",
         "Dimensions": fn, "AlarmDescription": "the function raised or timed out"},
        {**base, "AlarmName": ALARM_THROTTLES, "Namespace": "AWS/Lambda",
         "MetricName": "Throttles", "Dimensions": fn,
         "AlarmDescription": "invocations refused by the reserved concurrency"},
        {**base, "AlarmName": ALARM_QUEUE, "Namespace": "AWS/SQS", "Statistic": "Maximum",
         "MetricName": "ApproximateNumberOfMessagesVisible",
         "Dimensions": [{"Name": "QueueName", "Value": QUEUE_NAME}],
         "AlarmDescription": "failed events waiting: run invoke_lambda.py --redrive"},
    ]


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


def dashboard_body(names: Names) -> dict:
    """Invocations, errors, duration, throttles, failed-event queue depth. Dashboards take no
    tags: the first widget's text carries the deployment tag, and ownership is read from it."""
    def metric(name):
        return ["AWS/Lambda", name, "FunctionName", FUNCTION_NAME]

    def widget(title, metrics, x, y, stat="Sum"):
        return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6, "properties": {
            "title": title, "region": names.region, "stat": stat, "period": 300,
            "metrics": metrics}}

    queue = ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", QUEUE_NAME]
    return {"widgets": [
        {"type": "text", "x": 0, "y": 0, "width": 24, "height": 1,
         "properties": {"markdown": f"skysurvey pipeline ({DEPLOYMENT_TAG}={names.suffix})"}},
        widget("Invocations and errors", [metric("Invocations"), metric("Errors")], 0, 1),
        widget("Duration (ms)", [metric("Duration")], 12, 1, stat="Average"),
        widget("Throttles and concurrency",
               [metric("Throttles"), metric("ConcurrentExecutions")], 0, 7),
        widget("Failed events waiting (redrive)", [queue], 12, 7, stat="Maximum"),
    ]}


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


def cleanup_resources(names: Names) -> list[Resource]:
    """What setup makes, in reverse (the trigger goes with the function and the raw bucket)."""
    everything = setup_resources(names, FunctionSettings(None), trigger=False)
    return [r for r in reversed(everything) if r.owned]


@dataclass
class Plan:
    states: list[tuple[str, str]] = field(default_factory=list)  # (resource, what happened)


def _check(resource: Resource, names: Names) -> tuple[dict | None, str | None]:
    """(tags, ownership) of *resource*; raises on a foreign one before anything is changed."""
    tags = resource.tags()
    if tags is None or not resource.owned:
        return tags, None
    return tags, ownership(resource.name, tags, names, resource.fix, resource.legacy_untagged)


def run_setup(resources: list[Resource], names: Names, dry_run: bool = False,
              before_changes: Callable[[], None] | None = None) -> Plan:
    """Check every resource first (nothing is made when one is foreign: one ConfigError names
    every conflict), then make or repair each: ``created``, ``adopted``, ``unchanged``,
    ``updated: ...`` (or ``would ...``). *before_changes* runs once, after the checks and
    before the first change (setup_aws.py records the deployment there, so a setup that fails
    half-way leaves an env file cleanup can find)."""
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


# ---- cleanup -------------------------------------------------------------------------------


def run_cleanup(resources: list[Resource], names: Names,
                dry_run: bool = False) -> list[tuple[str, str]]:
    """Delete what carries this deployment's tag; list and leave everything else. A
    deployment a CloudFormation stack made is refused whole, before anything is deleted."""
    for resource in resources:
        try:
            stack = (resource.tags() or {}).get(STACK_TAG)
        except ConfigError:
            continue
        if stack:
            raise ConfigError(resource.name, stack_message(stack))
    states = []
    for resource in resources:
        try:
            tags = resource.tags()
        except ConfigError as exc:
            states.append((resource.name, f"left alone ({exc.cause})"))
            continue
        if tags is None:
            states.append((resource.name, "already gone"))
        elif tags.get(DEPLOYMENT_TAG) != names.suffix:
            owner = tags.get(DEPLOYMENT_TAG)
            why = (f"tagged for deployment '{owner}'" if owner else
                   f"not tagged {DEPLOYMENT_TAG}={names.suffix}"
                   + (" (an older setup: run setup_aws.py once to adopt it)"
                      if tags.get("project") == "skysurvey" else ""))
            states.append((resource.name, f"left alone: {why}"))
        elif dry_run:
            states.append((resource.name, "would delete"))
        else:
            try:
                resource.delete()
            except aws.botocore_errors() as exc:
                raise aws.translate(exc, resource.name) from None
            states.append((resource.name, "deleted"))
    return states


def checklist(resources: list[Resource], names: Names) -> list[tuple[str, str]]:
    """``(resource, state)``: ``gone``, ``left`` (not ours) or ``STILL THERE`` (ours)."""
    rows = []
    for resource in resources:
        try:
            tags = resource.tags()
        except ConfigError:
            rows.append((resource.name, "left"))
            continue
        if tags is None:
            rows.append((resource.name, "gone"))
        else:
            ours = tags.get(DEPLOYMENT_TAG) == names.suffix
            rows.append((resource.name, "STILL THERE" if ours else "left"))
    return rows


def require_names(saved: dict[str, str], suffix: str | None = None,
                  region: str | None = None) -> Names:
    suffix = suffix or saved.get("SKYSURVEY_SUFFIX")
    if not suffix:
        raise ConfigError("env file", "no SKYSURVEY_SUFFIX: nothing was set up from here "
                                      "(run scripts/setup_aws.py first, or pass --suffix)")
    return resolve_names(suffix, region, saved)


# ---- the documents the manual (AWS CLI) path of setup_guide.md uses -------------------------

#: Placeholders in aws/*.json: replace them with your values (setup_guide.md, Part 0).
GUIDE_NAMES = Names("SUFFIX", "REGION", "ACCOUNT_ID")


def guide_documents() -> dict[str, dict]:
    """``aws/<name>.json`` for the AWS CLI path, generated from the same code setup runs."""
    n = GUIDE_NAMES
    return {
        "trust.json": trust_policy(),
        "policy.json": lambda_policy(n),
        "lifecycle.json": LIFECYCLE,
        "notification.json": {"LambdaFunctionConfigurations": trigger_configurations(
            n.function_arn)},
        "tls-raw.json": tls_only_policy(n.raw),
        "tls-catalog.json": tls_only_policy(n.catalog),
        "event-invoke-config.json": event_invoke_config(n),
        "dashboard.json": dashboard_body(n),
    }


def write_guide_documents(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in guide_documents().items():
        path = folder / name
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written

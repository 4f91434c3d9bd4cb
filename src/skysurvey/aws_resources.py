"""What the AWS side is, as data: resource names and constants, the deployment's names, the
policy documents and every resource's settings as the AWS APIs take them, the ownership rule
(which tags make a resource this deployment's), and the records setup runs over and reports.

Pure (no AWS client, no boto3 call): :mod:`skysurvey.aws_setup` applies these with boto3,
:mod:`skysurvey.cfn_template` translates them into a CloudFormation template,
:mod:`skysurvey.aws_check` compares a deployment with them, and ``aws/*.json`` (the AWS CLI
path of setup_guide.md) are generated from them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .config import QUEUE_NAME, parse_s3_uri
from .errors import ConfigError

__all__ = [
    "ALARM_ERRORS",
    "ALARM_QUEUE",
    "ALARM_THROTTLES",
    "BUCKET_ENCRYPTION",
    "CATALOG_PREFIX",
    "DASHBOARD",
    "DATABASE",
    "DATABASE_DESCRIPTION",
    "DEFAULT_CONCURRENCY",
    "DEPLOYMENT_TAG",
    "DIRECT_UPLOAD_LIMIT",
    "FITS_TRIGGER_SUFFIXES",
    "FUNCTION_DESCRIPTION",
    "FUNCTION_NAME",
    "GUIDE_NAMES",
    "HANDLER",
    "LIFECYCLE",
    "LOG_GROUP",
    "LOG_RETENTION_DAYS",
    "MAX_EVENT_AGE_SECONDS",
    "MAX_RETRY_ATTEMPTS",
    "PACKAGE_KEY",
    "POLICY_NAME",
    "PROJECT_TAGS",
    "PUBLIC_ACCESS_BLOCK",
    "QUEUE_ATTRIBUTES",
    "QUEUE_RETENTION_SECONDS",
    "RAW_PREFIX",
    "REFERENCE_FILE_SUFFIXES",
    "ROLE_DESCRIPTION",
    "ROLE_NAME",
    "RUNTIME",
    "SCAN_CUTOFF_BYTES",
    "SETUP_MARKER",
    "STACK_TAG",
    "TEST_ENDPOINT_HINT",
    "TLS_ONLY",
    "TRIGGER_ID",
    "TRIGGER_STATEMENT_ID",
    "WORKGROUP",
    "WORKGROUP_DESCRIPTION",
    "FunctionSettings",
    "Names",
    "Plan",
    "Resource",
    "alarm_definitions",
    "bucket_settings",
    "buckets",
    "code_sha256",
    "dashboard_body",
    "database_input",
    "default_suffix",
    "event_invoke_config",
    "function_configuration",
    "function_environment",
    "glue_tables",
    "guide_documents",
    "lambda_policy",
    "ownership",
    "stack_message",
    "tls_only_policy",
    "trigger_configurations",
    "trigger_permission",
    "trust_policy",
    "workgroup_configuration",
    "write_guide_documents",
]

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


# ---- buckets, trigger, queue, function, Glue/Athena, alarms, dashboard ----------------


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


QUEUE_ATTRIBUTES = {"SqsManagedSseEnabled": "true",
                    "MessageRetentionPeriod": str(QUEUE_RETENTION_SECONDS)}


def code_sha256(package: Path) -> str:
    """Lambda's ``CodeSha256`` of a zip: base64 of its SHA-256."""
    return base64.b64encode(hashlib.sha256(package.read_bytes()).digest()).decode()


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


def function_environment(names: Names) -> dict[str, str]:
    return {"BUCKET_CATALOG": f"s3://{names.catalog}", "ATHENA_DATABASE": DATABASE,
            **names.reference_settings()}


def function_configuration(names: Names, s: FunctionSettings, role_arn) -> dict:
    """The function's configuration (``CreateFunction``/``UpdateFunctionConfiguration``)."""
    return {"Runtime": RUNTIME, "Role": role_arn, "Handler": HANDLER,
            "MemorySize": s.memory, "Timeout": s.timeout,
            "EphemeralStorage": {"Size": s.ephemeral},
            "Environment": {"Variables": function_environment(names)}}


def event_invoke_config(names: Names) -> dict:
    """Asynchronous invocations: at most 2 retries, 6 hours, then the failed-events queue."""
    return {"MaximumRetryAttempts": MAX_RETRY_ATTEMPTS,
            "MaximumEventAgeInSeconds": MAX_EVENT_AGE_SECONDS,
            "DestinationConfig": {"OnFailure": {"Destination": names.queue_arn}}}


def database_input() -> dict:
    return {"Name": DATABASE, "Description": DATABASE_DESCRIPTION}


def glue_tables(names: Names) -> list[dict]:
    """The Glue ``TableInput`` of every table (Parquet under the catalog bucket, with its
    partition keys): what ``athena.ensure_tables`` creates. The views over them are Athena
    SQL, made on first use (``ensure_tables``)."""
    from .athena import TABLES, glue_table_input

    return [glue_table_input(spec, f"s3://{names.catalog}") for spec in TABLES.values()]


def workgroup_configuration(names: Names) -> dict:
    return {"ResultConfiguration": {
        "OutputLocation": f"s3://{names.catalog}/athena-results/",
        "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"}},
        "EnforceWorkGroupConfiguration": True,
        "BytesScannedCutoffPerQuery": SCAN_CUTOFF_BYTES,
        "PublishCloudWatchMetricsEnabled": True}


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


# ---- ownership, and the records setup and cleanup run over (Resource) and report (Plan) ---


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


@dataclass
class Plan:
    states: list[tuple[str, str]] = field(default_factory=list)  # (resource, what happened)


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

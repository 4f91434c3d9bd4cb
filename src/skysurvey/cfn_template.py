"""The deployment of ``setup_aws.py`` as one CloudFormation template, from the same definitions.

Pure: names and settings in, a template (a dict) out; no AWS call. Every name, policy and
setting comes from :mod:`skysurvey.aws_resources` (``lambda_policy``, ``bucket_settings``,
``function_configuration``, ``event_invoke_config``, ``glue_tables``, ``alarm_definitions``,
``dashboard_body``, ``Names.env``...), evaluated with CloudFormation's own placeholders as the
suffix, region and account (``${Suffix}``, ``${AWS::Region}``, ``${AWS::AccountId}``; ARNs get
``${AWS::Partition}``); every string that holds one becomes an ``Fn::Sub``. What the API and
CloudFormation spell differently (bucket encryption, lifecycle and notifications, queue
attributes, tag lists) is translated here, and only that.

The S3 trigger has no circular dependency: the permission's source is the raw bucket's ARN
built from its name (not a ``Ref``), and the raw bucket ``DependsOn`` that permission.

What the template cannot do like setup (see setup_guide.md, "Deploy with CloudFormation"):
the Glue database carries no tags (``AWS::Glue::Database`` takes none), the views over the
tables and the partitions are made by the first ``query_with_athena.py --engine athena``
(Athena SQL, as in the manual path), nothing existing is adopted, and new code needs a new
``CodeKey``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import aws_resources as s
from .config import QUEUE_NAME

__all__ = ["INLINE_LIMIT", "PLACEHOLDERS", "SUFFIX_PATTERN", "TEMPLATE_VERSION",
           "bucket_properties", "build_template", "dumps", "get_att", "logical_id",
           "notification_configuration", "outputs", "parameters", "queue_properties", "ref",
           "resources", "stack_names", "sub", "tag_list"]

TEMPLATE_VERSION = "2010-09-09"
#: The suffix goes into bucket names (lower case, digits, hyphens; 63 characters at most with
#: the longer prefix ``astronomy-catalog-``).
SUFFIX_PATTERN = "^[a-z0-9]([a-z0-9-]{0,43}[a-z0-9])?$"
#: Names whose suffix, region and account CloudFormation fills in.
PLACEHOLDERS = {"suffix": "${Suffix}", "region": "${AWS::Region}", "account": "${AWS::AccountId}"}

RAW_BUCKET, CATALOG_BUCKET = "RawBucket", "CatalogBucket"
QUEUE, ROLE, LOG_GROUP, FUNCTION = "FailedEventsQueue", "FunctionRole", "FunctionLogGroup", \
    "Function"
INVOKE_CONFIG, PERMISSION = "FunctionEventInvokeConfig", "RawBucketInvokePermission"
DATABASE, WORKGROUP, DASHBOARD = "Database", "Workgroup", "Dashboard"


def stack_names(reference: str | None = None, reference_bands: str | None = None) -> s.Names:
    """The deployment's names with CloudFormation placeholders (``astronomy-raw-${Suffix}``)."""
    return s.Names(PLACEHOLDERS["suffix"], PLACEHOLDERS["region"], PLACEHOLDERS["account"],
                   reference=reference, reference_bands=reference_bands)


def logical_id(name: str) -> str:
    """``astronomy-source-detection-errors`` -> ``AstronomySourceDetectionErrors``."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name)
                   if part)


def sub(value: Any) -> Any:
    """*value* with every string that holds a ``${...}`` placeholder wrapped in ``Fn::Sub``;
    ARNs take the stack's partition (``arn:${AWS::Partition}:``) instead of ``arn:aws:``."""
    if isinstance(value, str):
        value = value.replace("arn:aws:", "arn:${AWS::Partition}:")
        return {"Fn::Sub": value} if "${" in value else value
    if isinstance(value, dict):
        return {k: sub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sub(v) for v in value]
    return value


def tag_list(tags: dict[str, str]) -> list[dict]:
    return sub([{"Key": k, "Value": v} for k, v in tags.items()])


def ref(name: str) -> dict:
    return {"Ref": name}


def get_att(resource: str, attribute: str) -> dict:
    return {"Fn::GetAtt": [resource, attribute]}


def parameters(settings: s.FunctionSettings, suffix: str | None) -> dict:
    suffix_parameter = {"Type": "String", "AllowedPattern": SUFFIX_PATTERN,
                        "Description": "bucket name suffix (astronomy-raw-<suffix>, "
                                       "astronomy-catalog-<suffix>); also the "
                                       f"{s.DEPLOYMENT_TAG} tag",
                        "ConstraintDescription": "lower-case letters, digits and hyphens"}
    if suffix:
        suffix_parameter["Default"] = suffix
    return {
        "Suffix": suffix_parameter,
        "CodeBucket": {"Type": "String", "MinLength": 3,
                       "Description": "an existing bucket holding the function's zip (not one "
                                      "this stack creates)"},
        "CodeKey": {"Type": "String", "MinLength": 1,
                    "Description": "the zip's key (a new key for new code: CloudFormation "
                                   "does not look inside the object)"},
        "MemorySize": {"Type": "Number", "Default": settings.memory, "MinValue": 128,
                       "MaxValue": 10240, "Description": "Lambda memory, MB"},
        "Timeout": {"Type": "Number", "Default": settings.timeout, "MinValue": 1,
                    "MaxValue": 900, "Description": "Lambda timeout, s"},
        "EphemeralStorage": {"Type": "Number", "Default": settings.ephemeral, "MinValue": 512,
                             "MaxValue": 10240, "Description": "Lambda /tmp size, MB"},
        "ReservedConcurrency": {"Type": "Number", "Default": settings.concurrency,
                                "MinValue": 1, "Description": "the most copies of the "
                                                              "function at once"},
    }


# ---- translations from the API's spelling to CloudFormation's ------------------------------


def bucket_properties(name: str, names: s.Names, lifecycle: bool) -> dict:
    wanted = s.bucket_settings(name, names, lifecycle)
    rules = wanted["ServerSideEncryptionConfiguration"]["Rules"]
    properties = {
        "BucketName": name,
        "PublicAccessBlockConfiguration": wanted["PublicAccessBlockConfiguration"],
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": r["ApplyServerSideEncryptionByDefault"]}
            for r in rules]},
        "Tags": wanted["Tags"],
    }
    if wanted["LifecycleConfiguration"]:
        properties["LifecycleConfiguration"] = {"Rules": [
            {"Id": r["ID"], "Status": r["Status"], "Prefix": r["Filter"]["Prefix"],
             "ExpirationInDays": r["Expiration"]["Days"]}
            for r in wanted["LifecycleConfiguration"]["Rules"]]}
    return properties


def notification_configuration(names: s.Names) -> dict:
    """``trigger_configurations`` as CloudFormation's ``LambdaConfigurations`` (one event
    each; CloudFormation sets no ``Id``)."""
    configurations = []
    for c in s.trigger_configurations(names.function_arn):
        for event in c["Events"]:
            configurations.append({"Event": event, "Function": c["LambdaFunctionArn"],
                                   "Filter": {"S3Key": {"Rules": c["Filter"]["Key"][
                                       "FilterRules"]}}})
    return {"LambdaConfigurations": configurations}


def queue_properties(names: s.Names) -> dict:
    attributes = s.QUEUE_ATTRIBUTES
    return {"QueueName": QUEUE_NAME,
            "SqsManagedSseEnabled": attributes["SqsManagedSseEnabled"] == "true",
            "MessageRetentionPeriod": int(attributes["MessageRetentionPeriod"]),
            "Tags": names.tags}


# ---- the template ----------------------------------------------------------------------------


def resources(names: s.Names, *, trigger: bool) -> dict:
    out: dict[str, dict] = {}
    for (name, lifecycle), logical in zip(s.buckets(names), (RAW_BUCKET, CATALOG_BUCKET),
                                          strict=True):
        properties = bucket_properties(name, names, lifecycle)
        bucket: dict[str, Any] = {"Type": "AWS::S3::Bucket", "Properties": properties}
        if trigger and name == names.raw:
            properties["NotificationConfiguration"] = notification_configuration(names)
            bucket["DependsOn"] = [PERMISSION]  # S3 checks it may invoke the function
        out[logical] = bucket
        out[f"{logical}Policy"] = {"Type": "AWS::S3::BucketPolicy", "Properties": {
            "Bucket": ref(logical),
            "PolicyDocument": s.bucket_settings(name, names, lifecycle)["Policy"]}}
    out[QUEUE] = {"Type": "AWS::SQS::Queue", "Properties": queue_properties(names)}
    out[ROLE] = {"Type": "AWS::IAM::Role", "Properties": {
        "RoleName": s.ROLE_NAME, "Description": s.ROLE_DESCRIPTION,
        "AssumeRolePolicyDocument": s.trust_policy(),
        "Policies": [{"PolicyName": s.POLICY_NAME, "PolicyDocument": s.lambda_policy(names)}],
        "Tags": names.tags}}
    out[LOG_GROUP] = {"Type": "AWS::Logs::LogGroup", "Properties": {
        "LogGroupName": s.LOG_GROUP, "RetentionInDays": s.LOG_RETENTION_DAYS,
        "Tags": names.tags}}
    # the function's settings are the stack's parameters: Refs where setup has numbers
    settings = s.FunctionSettings(None, ref("MemorySize"), ref("Timeout"),
                                  ref("EphemeralStorage"), ref("ReservedConcurrency"))
    configuration = s.function_configuration(names, settings, get_att(ROLE, "Arn"))
    out[FUNCTION] = {"Type": "AWS::Lambda::Function", "DependsOn": [LOG_GROUP], "Properties": {
        "FunctionName": s.FUNCTION_NAME, "Description": s.FUNCTION_DESCRIPTION,
        **configuration,
        "Code": {"S3Bucket": ref("CodeBucket"), "S3Key": ref("CodeKey")},
        "ReservedConcurrentExecutions": settings.concurrency, "Tags": names.tags}}
    out[INVOKE_CONFIG] = {"Type": "AWS::Lambda::EventInvokeConfig", "DependsOn": [QUEUE],
                          "Properties": {"FunctionName": ref(FUNCTION), "Qualifier": "$LATEST",
                                         **s.event_invoke_config(names)}}
    if trigger:
        permission = dict(s.trigger_permission(names))
        permission.pop("StatementId")  # CloudFormation names the statement itself
        out[PERMISSION] = {"Type": "AWS::Lambda::Permission", "Properties": {
            "FunctionName": get_att(FUNCTION, "Arn"), **permission}}
    out[DATABASE] = {"Type": "AWS::Glue::Database", "Properties": {
        "CatalogId": ref("AWS::AccountId"), "DatabaseInput": s.database_input()}}
    for table in s.glue_tables(names):
        out[f"Table{logical_id(table['Name'])}"] = {"Type": "AWS::Glue::Table", "Properties": {
            "CatalogId": ref("AWS::AccountId"), "DatabaseName": ref(DATABASE),
            "TableInput": table}}
    out[WORKGROUP] = {"Type": "AWS::Athena::WorkGroup", "Properties": {
        "Name": s.WORKGROUP, "Description": s.WORKGROUP_DESCRIPTION,
        "RecursiveDeleteOption": True,
        "WorkGroupConfiguration": s.workgroup_configuration(names), "Tags": names.tags}}
    for alarm in s.alarm_definitions(names):
        out[f"Alarm{logical_id(alarm['AlarmName'])}"] = {
            "Type": "AWS::CloudWatch::Alarm", "Properties": {**alarm, "Tags": names.tags}}
    out[DASHBOARD] = {"Type": "AWS::CloudWatch::Dashboard", "Properties": {
        "DashboardName": s.DASHBOARD, "DashboardBody": json.dumps(s.dashboard_body(names))}}
    for logical in (RAW_BUCKET, CATALOG_BUCKET, QUEUE, LOG_GROUP):
        # stateful: deleted with the stack, as cleanup_aws.py deletes them (a bucket that
        # still holds objects makes the deletion fail instead: empty it first)
        out[logical].update(DeletionPolicy="Delete", UpdateReplacePolicy="Delete")
    for resource in out.values():  # placeholders -> Fn::Sub; tag dicts -> tag lists
        properties = resource["Properties"]
        tags = properties.pop("Tags", None)
        resource["Properties"] = sub(properties)
        if tags is not None:
            resource["Properties"]["Tags"] = tag_list(tags)
    return out


def outputs(names: s.Names) -> dict:
    """One output per env-file setting (``Description`` is the setting's name, ``Value`` its
    value), so ``describe-stacks`` gives the file the scripts read."""
    return {logical_id(key.lower().replace("_", "-")): {"Description": key, "Value": sub(value)}
            for key, value in names.env().items()}


def build_template(settings: s.FunctionSettings | None = None, *, suffix: str | None = None,
                   trigger: bool = True, reference: str | None = None,
                   reference_bands: str | None = None) -> dict:
    """The whole deployment as a CloudFormation template (a dict; JSON or YAML it).

    *settings* give the parameters' defaults (memory, timeout, /tmp, reserved concurrency);
    *suffix* the ``Suffix`` parameter's default; *trigger* adds the S3 trigger; *reference*
    (an ``s3://`` URI) sets the function's reference catalog and grants reading it.

    Parameters
    ----------
    settings : FunctionSettings, optional
        The function's memory, timeout, /tmp and reserved concurrency (default: their defaults).
    suffix : str, optional
        The ``Suffix`` parameter's default (None: no default, the deployer gives one).
    trigger : bool
        Add the S3 trigger on the raw bucket.
    reference : str, optional
        ``s3://`` URI of the reference catalog.
    reference_bands : str, optional
        Its band mapping (``"r=rmag,g=gmag"``).

    Returns
    -------
    dict
        ``AWSTemplateFormatVersion``, ``Description``, ``Parameters``, ``Resources``,
        ``Outputs``.
    """
    settings = settings or s.FunctionSettings(None)
    names = stack_names(reference, reference_bands)
    return {
        "AWSTemplateFormatVersion": TEMPLATE_VERSION,
        "Description": "skysurvey: FITS images -> Parquet source catalogs (buckets, queue, "
                       "role, function, Glue/Athena, alarms, dashboard). Generated by "
                       "scripts/setup_aws.py --template from src/skysurvey/aws_resources.py.",
        "Parameters": parameters(settings, suffix),
        "Resources": resources(names, trigger=trigger),
        "Outputs": outputs(names),
    }


#: CloudFormation takes a template body up to this size inline (``aws cloudformation deploy``
#: without ``--s3-bucket``); tests/test_cfn.py keeps both formats under it.
INLINE_LIMIT = 51_200


def dumps(template: dict, fmt: str) -> str:
    """The template as ``json`` or ``yaml`` text (YAML needs PyYAML).

    Parameters
    ----------
    template : dict
        :func:`build_template`'s.
    fmt : {"json", "yaml"}
        The format (anything but ``json`` is YAML).

    Returns
    -------
    str
        The text, ending with a newline.
    """
    if fmt == "json":
        return json.dumps(template, indent=1) + "\n"
    import yaml

    return yaml.safe_dump(template, sort_keys=False, width=100)

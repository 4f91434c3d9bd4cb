"""setup_aws.py and cleanup_aws.py against moto: ownership, one region, repair, least privilege."""

from __future__ import annotations

import io
import json
import zipfile

import boto3
import pytest
from conftest import load_script

from skysurvey import aws, aws_cleanup, aws_resources, aws_setup
from skysurvey.config import env_file_path, read_env_file, write_env_file

RAW, CAT = "astronomy-raw-t3st", "astronomy-catalog-t3st"
DEPLOYMENT = {"skysurvey:deployment": "t3st", "project": "skysurvey"}


def _zip(path, body="return {}"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_function.py", f"def lambda_handler(event, context):\n    {body}\n")
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(autouse=True)
def _no_region_left_behind():
    """setup/cleanup pin the process to their region (aws.use_region): undo it after."""
    yield
    aws.use_region(None)


@pytest.fixture
def package(tmp_path):
    return _zip(tmp_path / "lambda.zip")


def _setup(*args):
    return load_script("setup_aws").main(list(args))


def _cleanup(*args):
    return load_script("cleanup_aws").main(list(args))


def _doc(doc):
    return json.loads(doc) if isinstance(doc, str) else doc


def _tags(tags):
    return tags if isinstance(tags, dict) else {t["Key"]: t["Value"] for t in tags}


@pytest.mark.slow
def test_setup_creates_everything_tagged_least_privilege_then_changes_nothing(
        mocked_aws, package, capsys):
    assert _setup("--suffix", "t3st", "--package", str(package), "--trigger") == 0
    assert "created" in capsys.readouterr().out
    s3, iam = boto3.client("s3"), boto3.client("iam")
    for bucket in (RAW, CAT):
        bpa = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(bpa.values()) and len(bpa) == 4
        rule = s3.get_bucket_encryption(Bucket=bucket)[
            "ServerSideEncryptionConfiguration"]["Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert _tags(s3.get_bucket_tagging(Bucket=bucket)["TagSet"]) == DEPLOYMENT
        assert _doc(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == \
            aws_resources.tls_only_policy(bucket)
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=CAT)["Rules"][0]
    assert lifecycle["Filter"]["Prefix"] == "athena-results/"

    role = iam.get_role(RoleName="lambda-astronomy-role")["Role"]
    assert _doc(role["AssumeRolePolicyDocument"])["Statement"][0]["Principal"] == {
        "Service": "lambda.amazonaws.com"}
    assert _tags(iam.list_role_tags(RoleName="lambda-astronomy-role")["Tags"]) == DEPLOYMENT
    assert iam.list_attached_role_policies(RoleName="lambda-astronomy-role")[
        "AttachedPolicies"] == []
    doc = _doc(iam.get_role_policy(RoleName="lambda-astronomy-role",
                                   PolicyName="astronomy-least-privilege")["PolicyDocument"])
    region_account = "us-east-1:123456789012"
    allowed = {f"arn:aws:s3:::{RAW}/images/*", f"arn:aws:s3:::{CAT}/sources/*",
               f"arn:aws:s3:::{CAT}/images/*", f"arn:aws:s3:::{RAW}", f"arn:aws:s3:::{CAT}",
               f"arn:aws:s3:::{CAT}/image_ids/*", f"arn:aws:s3:::{CAT}/.objects-staging/*",
               f"arn:aws:s3:::{CAT}/forced_photometry/*",
               *(f"arn:aws:s3:::{CAT}/{t}/*"
                 for t in ("objects", "object_photometry", "associations")),
               f"arn:aws:logs:{region_account}:log-group:/aws/lambda/astronomy-source-detection:*",
               f"arn:aws:sqs:{region_account}:astronomy-failed-events",
               f"arn:aws:glue:{region_account}:catalog",
               f"arn:aws:glue:{region_account}:database/astronomy",
               f"arn:aws:glue:{region_account}:table/astronomy/sources_data",
               f"arn:aws:glue:{region_account}:table/astronomy/images"}
    for statement in doc["Statement"]:
        assert all("*" not in a for a in statement["Action"])
        assert set(statement["Resource"]) <= allowed
    assert {a for s in doc["Statement"] for a in s["Action"]} == {
        "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
        "logs:CreateLogStream", "logs:PutLogEvents", "glue:BatchCreatePartition",
        "sqs:SendMessage"}
    # the function cannot write into the bucket that triggers it
    writes = [r for s in doc["Statement"] if "s3:PutObject" in s["Action"] for r in s["Resource"]]
    assert writes and not any(r.startswith(f"arn:aws:s3:::{RAW}") for r in writes)

    logs = boto3.client("logs")
    group = logs.describe_log_groups(
        logGroupNamePrefix="/aws/lambda/astronomy-source-detection")["logGroups"][0]
    assert group["retentionInDays"] == 14
    assert logs.list_tags_log_group(logGroupName=group["logGroupName"])["tags"] == DEPLOYMENT
    lam = boto3.client("lambda")
    fn = lam.get_function(FunctionName="astronomy-source-detection")
    cfg = fn["Configuration"]
    assert (cfg["Runtime"], cfg["MemorySize"], cfg["Timeout"]) == ("python3.12", 1024, 300)
    assert cfg["EphemeralStorage"]["Size"] == 2048
    assert cfg["Environment"]["Variables"] == {"BUCKET_CATALOG": f"s3://{CAT}",
                                               "ATHENA_DATABASE": "astronomy"}
    assert fn["Tags"] == DEPLOYMENT
    assert lam.get_function_concurrency(FunctionName="astronomy-source-detection")[
        "ReservedConcurrentExecutions"] == aws_resources.DEFAULT_CONCURRENCY
    invoke = lam.get_function_event_invoke_config(FunctionName="astronomy-source-detection")
    assert invoke["MaximumRetryAttempts"] <= 2 and invoke["MaximumEventAgeInSeconds"] == 21600
    queue_arn = f"arn:aws:sqs:{region_account}:astronomy-failed-events"
    assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == queue_arn

    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName="astronomy-failed-events")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == DEPLOYMENT

    notif = s3.get_bucket_notification_configuration(Bucket=RAW)["LambdaFunctionConfigurations"]
    filters = {tuple(sorted((r["Name"].lower(), r["Value"]) for r in
                            c["Filter"]["Key"]["FilterRules"])) for c in notif}
    assert (("prefix", "images/"), ("suffix", ".fits.fz")) in filters
    assert {dict(f)["suffix"] for f in filters} == set(aws_resources.FITS_TRIGGER_SUFFIXES)
    assert {dict(f)["prefix"] for f in filters} == {"images/"}

    wg = boto3.client("athena").get_work_group(WorkGroup="astronomy-workgroup")["WorkGroup"]
    assert wg["Configuration"]["BytesScannedCutoffPerQuery"] == 1024**3
    assert wg["Configuration"]["ResultConfiguration"]["OutputLocation"] == \
        f"s3://{CAT}/athena-results/"
    glue = boto3.client("glue")
    db_arn = f"arn:aws:glue:{region_account}:database/astronomy"
    assert glue.get_tags(ResourceArn=db_arn)["Tags"] == DEPLOYMENT
    tables = {t["Name"] for t in glue.get_tables(DatabaseName="astronomy")["TableList"]}
    assert {"sources_data", "images", "objects_data", "object_photometry",
            "associations_data"} <= tables

    cw = boto3.client("cloudwatch")
    alarms = {a["AlarmName"]: a for a in cw.describe_alarms()["MetricAlarms"]}
    assert {(a["Namespace"], a["MetricName"]) for a in alarms.values()} == {
        ("AWS/Lambda", "Errors"), ("AWS/Lambda", "Throttles"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible")}
    for alarm in alarms.values():
        assert _tags(cw.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]) == \
            DEPLOYMENT
    body = json.loads(cw.get_dashboard(DashboardName="astronomy-pipeline")["DashboardBody"])
    shown = {m[1] for w in body["widgets"][1:] for m in w["properties"]["metrics"]}
    assert {"Invocations", "Errors", "Duration", "Throttles",
            "ApproximateNumberOfMessagesVisible"} <= shown

    env = read_env_file(env_file_path())
    assert env["BUCKET_RAW"] == f"s3://{RAW}" and env["BUCKET_CATALOG"] == f"s3://{CAT}"
    assert env["AWS_REGION"] == "us-east-1" and env["SKYSURVEY_SUFFIX"] == "t3st"

    # a second run (suffix from the env file) re-applies everything and changes nothing
    assert _setup("--package", str(package), "--trigger") == 0
    out = capsys.readouterr().out
    assert "nothing to change" in out and " created" not in out
    assert len(s3.list_buckets()["Buckets"]) == 2


def test_drift_is_repaired_not_reported_as_exists(mocked_aws, package, capsys):
    assert _setup("--suffix", "t3st", "--package", str(package)) == 0
    iam, s3 = boto3.client("iam"), boto3.client("s3")
    iam.put_role_policy(RoleName="lambda-astronomy-role", PolicyName="astronomy-least-privilege",
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                            {"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    s3.delete_bucket_encryption(Bucket=RAW)
    s3.delete_public_access_block(Bucket=CAT)
    boto3.client("lambda").update_function_configuration(
        FunctionName="astronomy-source-detection", MemorySize=128)
    capsys.readouterr()
    assert _setup() == 0
    out = capsys.readouterr().out
    assert "updated: configuration" in out
    doc = _doc(iam.get_role_policy(RoleName="lambda-astronomy-role",
                                   PolicyName="astronomy-least-privilege")["PolicyDocument"])
    assert doc == json.loads(json.dumps(aws_resources.lambda_policy(
        aws_resources.Names("t3st", "us-east-1", "123456789012"))))
    assert s3.get_bucket_encryption(Bucket=RAW)["ServerSideEncryptionConfiguration"]
    assert all(s3.get_public_access_block(Bucket=CAT)["PublicAccessBlockConfiguration"].values())
    assert boto3.client("lambda").get_function_configuration(
        FunctionName="astronomy-source-detection")["MemorySize"] == 1024


def test_redeploy_updates_code_only_when_the_zip_changed(mocked_aws, tmp_path, capsys):
    first = _zip(tmp_path / "a.zip")
    assert _setup("--suffix", "t3st", "--package", str(first)) == 0
    lam = boto3.client("lambda")
    sha = lam.get_function_configuration(FunctionName="astronomy-source-detection")["CodeSha256"]
    assert sha == aws_resources.code_sha256(first)
    capsys.readouterr()
    assert _setup("--package", str(first)) == 0
    assert "nothing to change" in capsys.readouterr().out
    second = _zip(tmp_path / "b.zip", body="return {'v': 2}")
    assert _setup("--package", str(second), "--memory", "2048", "--timeout", "120",
                  "--concurrency", "3") == 0
    out = capsys.readouterr().out
    assert "updated: code, configuration, reserved concurrency 3" in out
    cfg = lam.get_function_configuration(FunctionName="astronomy-source-detection")
    assert cfg["CodeSha256"] == aws_resources.code_sha256(second) != sha
    assert (cfg["MemorySize"], cfg["Timeout"]) == (2048, 120)
    assert lam.get_function_concurrency(FunctionName="astronomy-source-detection")[
        "ReservedConcurrentExecutions"] == 3


def test_dry_run_makes_nothing_and_shows_the_suffix_the_real_run_uses(mocked_aws, capsys):
    assert _setup("--dry-run") == 0
    out = capsys.readouterr().out
    assert "would create" in out
    suffix = out.split("deployment ", 1)[1].split()[0]
    assert boto3.client("s3").list_buckets()["Buckets"] == []
    assert not env_file_path().exists()
    assert _setup() == 0
    assert read_env_file(env_file_path())["SKYSURVEY_SUFFIX"] == suffix
    assert sorted(b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]) == [
        f"astronomy-catalog-{suffix}", f"astronomy-raw-{suffix}"]


def test_setup_refuses_a_users_bucket_and_cleanup_leaves_it(mocked_aws, capsys):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=RAW)  # the user's own, versioned, with data
    s3.put_bucket_versioning(Bucket=RAW, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"v1", b"v2"):
        s3.put_object(Bucket=RAW, Key="thesis.tex", Body=body)
    assert _setup("--suffix", "t3st") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: bucket s3://{RAW}: exists and is not tagged "
                          "skysurvey:deployment=t3st") and "choose another --suffix" in err
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [RAW]  # nothing half-made
    assert boto3.client("iam").list_roles()["Roles"] == []

    assert _cleanup("--suffix", "t3st", "--yes") == 0
    out = capsys.readouterr().out
    assert f"bucket s3://{RAW}: left alone: not tagged skysurvey:deployment=t3st" in out
    assert len(s3.list_object_versions(Bucket=RAW)["Versions"]) == 2


def test_setup_refuses_an_untagged_role(mocked_aws, capsys):
    iam = boto3.client("iam")
    iam.create_role(RoleName="lambda-astronomy-role",
                    AssumeRolePolicyDocument=json.dumps(aws_resources.trust_policy()))
    iam.put_role_policy(RoleName="lambda-astronomy-role", PolicyName="admin",
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                            {"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    assert _setup("--suffix", "t3st") == 1
    err = capsys.readouterr().err
    assert "IAM role lambda-astronomy-role: exists and is not tagged" in err
    assert iam.list_role_policies(RoleName="lambda-astronomy-role")["PolicyNames"] == ["admin"]


def _legacy_deployment(suffix):
    """What the setup of before tagging made: names with the suffix, tag project=skysurvey."""
    s3, iam = boto3.client("s3"), boto3.client("iam")
    for bucket in (f"astronomy-raw-{suffix}", f"astronomy-catalog-{suffix}"):
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [
            {"Key": "project", "Value": "skysurvey"}, {"Key": "owner", "Value": "me"}]})
    iam.create_role(RoleName="lambda-astronomy-role",
                    AssumeRolePolicyDocument=json.dumps(aws_resources.trust_policy()),
                    Tags=[{"Key": "project", "Value": "skysurvey"}])
    iam.put_role_policy(RoleName="lambda-astronomy-role", PolicyName="too-broad",
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                            {"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    boto3.client("logs").create_log_group(logGroupName=aws_resources.LOG_GROUP,
                                          tags={"project": "skysurvey"})
    boto3.client("glue").create_database(DatabaseInput={"Name": "astronomy"})  # by SQL: no tags
    boto3.client("athena").create_work_group(  # (moto has no update_work_group to repair it)
        Name=aws_resources.WORKGROUP, Configuration=aws_resources.workgroup_configuration(
            aws_resources.Names(suffix, "us-east-1", "123456789012")),
        Tags=[{"Key": "project", "Value": "skysurvey"}])


def test_pre_tagging_deployment_is_adopted_when_the_env_file_names_it(mocked_aws, capsys):
    _legacy_deployment("old1")
    assert _setup("--suffix", "old1") == 1  # no env file naming it: not adopted
    assert "made by an older skysurvey setup" in capsys.readouterr().err
    write_env_file(env_file_path(), {"SKYSURVEY_SUFFIX": "old1", "AWS_REGION": "us-east-1"})
    assert _setup() == 0
    out = capsys.readouterr().out
    assert "bucket s3://astronomy-raw-old1" in out and "adopted (tagged)" in out
    s3, iam = boto3.client("s3"), boto3.client("iam")
    tags = _tags(s3.get_bucket_tagging(Bucket="astronomy-raw-old1")["TagSet"])
    assert tags == {"project": "skysurvey", "owner": "me", "skysurvey:deployment": "old1"}
    assert _tags(iam.list_role_tags(RoleName="lambda-astronomy-role")["Tags"])[
        "skysurvey:deployment"] == "old1"
    assert iam.list_role_policies(RoleName="lambda-astronomy-role")["PolicyNames"] == [
        "astronomy-least-privilege"]
    arn = "arn:aws:athena:us-east-1:123456789012:workgroup/astronomy-workgroup"
    assert _tags(boto3.client("athena").list_tags_for_resource(ResourceARN=arn)["Tags"])[
        "skysurvey:deployment"] == "old1"
    db_arn = "arn:aws:glue:us-east-1:123456789012:database/astronomy"
    assert boto3.client("glue").get_tags(ResourceArn=db_arn)["Tags"][
        "skysurvey:deployment"] == "old1"


@pytest.mark.slow
def test_a_second_deployment_is_refused_naming_the_first(mocked_aws, capsys):
    assert _setup("--suffix", "first") == 0
    env_file_path().unlink()  # even without the env file
    capsys.readouterr()
    assert _setup("--suffix", "second") == 1
    err = capsys.readouterr().err
    assert "belongs to skysurvey deployment 'first'" in err and "--suffix first" in err
    names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert not any(n.endswith("second") for n in names)


def test_cleanup_deletes_only_what_carries_its_tag(mocked_aws, package, capsys, monkeypatch):
    monkeypatch.setattr(aws_setup, "TLS_ONLY", False)  # objects are moved below (moto)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="someone-elses-bucket")
    assert _setup("--suffix", "c1", "--package", str(package), "--trigger") == 0
    s3.put_bucket_versioning(Bucket="astronomy-raw-c1",
                             VersioningConfiguration={"Status": "Enabled"})
    for _ in range(2):  # two versions and a delete marker
        s3.put_object(Bucket="astronomy-raw-c1", Key="notes/a.txt", Body=b"x")
    s3.delete_object(Bucket="astronomy-raw-c1", Key="notes/a.txt")
    # now the TLS-only policy (moto then refuses object calls: cleanup must delete it first)
    s3.put_bucket_policy(Bucket="astronomy-raw-c1",
                         Policy=json.dumps(aws_resources.tls_only_policy("astronomy-raw-c1")))
    iam, logs = boto3.client("iam"), boto3.client("logs")
    extra = iam.create_policy(PolicyName="by-hand", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "xray:PutTraceSegments", "Resource": "*"}]}))
    iam.attach_role_policy(RoleName="lambda-astronomy-role",  # attached by hand
                           PolicyArn=extra["Policy"]["Arn"])
    logs.untag_log_group(logGroupName=aws_resources.LOG_GROUP, tags=["skysurvey:deployment"])
    capsys.readouterr()
    assert _cleanup("--dry-run") == 0
    assert "would delete" in capsys.readouterr().out
    assert _cleanup("--yes") == 0
    out = capsys.readouterr().out
    assert "STILL THERE" not in out and "[x] bucket s3://astronomy-raw-c1 deleted" in out
    assert f"[-] log group {aws_resources.LOG_GROUP} not this deployment's: left" in out
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["someone-elses-bucket"]
    assert boto3.client("lambda").list_functions()["Functions"] == []
    assert "lambda-astronomy-role" not in [r["RoleName"] for r in iam.list_roles()["Roles"]]
    assert [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]] == [
        aws_resources.LOG_GROUP]  # untagged: left
    groups = boto3.client("athena").list_work_groups()["WorkGroups"]
    assert "astronomy-workgroup" not in [g["Name"] for g in groups]
    assert boto3.client("glue").get_databases()["DatabaseList"] == []
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []
    cw = boto3.client("cloudwatch")
    assert cw.describe_alarms()["MetricAlarms"] == []
    assert cw.list_dashboards()["DashboardEntries"] == []
    assert not env_file_path().exists()  # the scripts are back on the local default
    assert _cleanup("--yes", "--suffix", "c1") == 0  # safe twice
    assert "already gone" in capsys.readouterr().out


def test_cleanup_without_a_terminal_and_without_yes_refuses(mocked_aws, capsys, monkeypatch):
    assert _setup("--suffix", "t3st") == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    capsys.readouterr()
    assert _cleanup() == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: no terminal to confirm deletion: pass --yes (or --dry-run)"
    assert len(boto3.client("s3").list_buckets()["Buckets"]) == 2


def test_cleanup_without_setup_names_options_that_exist(mocked_aws, capsys):
    assert _cleanup("--yes") == 0  # nothing recorded: nothing to delete (a second run too)
    err = capsys.readouterr().out
    assert "nothing left to clean up" in err and "nothing was set up" in err
    flags = {o for a in load_script("cleanup_aws").build_parser()._actions
             for o in a.option_strings}
    hinted = {w.strip("(),") for w in err.split() if w.startswith("--")}
    assert hinted and hinted <= flags


@pytest.mark.slow
def test_every_resource_goes_in_the_chosen_region_and_later_scripts_follow(
        mocked_aws, package, capsys, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # the shell says us-east-1
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert _setup("--region", "eu-west-1", "--suffix", "eu1", "--package", str(package),
                  "--trigger") == 0
    aws.use_region(None)  # a later script in the same shell
    aws.clear_clients()
    assert read_env_file(env_file_path())["AWS_REGION"] == "eu-west-1"
    assert aws.client("logs").meta.region_name == "eu-west-1"  # from the env file
    east = {s: boto3.client(s, region_name="us-east-1") for s in
            ("logs", "athena", "lambda", "sqs", "cloudwatch", "glue")}
    west = {s: boto3.client(s, region_name="eu-west-1") for s in east}
    assert east["logs"].describe_log_groups()["logGroups"] == []
    assert [g["Name"] for g in east["athena"].list_work_groups()["WorkGroups"]] == ["primary"]
    assert east["lambda"].list_functions()["Functions"] == []
    assert east["glue"].get_databases()["DatabaseList"] == []
    assert west["logs"].describe_log_groups()["logGroups"]
    assert len(west["athena"].list_work_groups()["WorkGroups"]) == 2
    assert west["lambda"].list_functions()["Functions"]
    assert west["sqs"].list_queues()["QueueUrls"]
    assert west["cloudwatch"].describe_alarms()["MetricAlarms"]
    location = boto3.client("s3").get_bucket_location(Bucket="astronomy-raw-eu1")
    assert location["LocationConstraint"] == "eu-west-1"
    capsys.readouterr()
    assert _cleanup("--yes") == 0  # cleanup follows the env file's region too
    assert west["lambda"].list_functions()["Functions"] == []
    assert west["logs"].describe_log_groups()["logGroups"] == []


def test_a_missing_region_is_an_error_saying_how_to_set_it(mocked_aws, capsys, monkeypatch,
                                                             tmp_path):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    assert _setup("--dry-run") == 1
    err = capsys.readouterr().err
    assert "no AWS region: pass --region, set AWS_REGION" in err
    from skysurvey.errors import ConfigError

    with pytest.raises(ConfigError, match="no AWS region"):
        aws.client("s3")


def test_tls_only_policy_denies_requests_without_tls():
    policy = aws_resources.tls_only_policy("b")
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
    assert statement["Action"] == "s3:*"
    assert statement["Resource"] == ["arn:aws:s3:::b", "arn:aws:s3:::b/*"]
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.slow
def test_reference_catalog_uploaded_granted_and_configured(mocked_aws, package, tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr(aws_setup, "TLS_ONLY", False)  # the reference is uploaded (moto)
    ref = tmp_path / "gaia.parquet"
    ref.write_bytes(b"PAR1 fake")
    assert _setup("--suffix", "t3st", "--package", str(package), "--reference", str(ref),
                  "--reference-bands", "g=phot_g_mean_mag") == 0
    body = boto3.client("s3").get_object(Bucket=CAT, Key="reference/gaia.parquet")["Body"]
    assert body.read() == b"PAR1 fake"
    env = boto3.client("lambda").get_function_configuration(
        FunctionName="astronomy-source-detection")["Environment"]["Variables"]
    assert env["REFERENCE_CATALOG"] == f"s3://{CAT}/reference/gaia.parquet"
    assert env["REFERENCE_BANDS"] == "g=phot_g_mean_mag"
    doc = _doc(boto3.client("iam").get_role_policy(
        RoleName="lambda-astronomy-role", PolicyName="astronomy-least-privilege")[
            "PolicyDocument"])
    read = [s for s in doc["Statement"] if s["Sid"] == "ReadReference"]
    assert read == [{"Sid": "ReadReference", "Effect": "Allow", "Action": ["s3:GetObject"],
                     "Resource": [f"arn:aws:s3:::{CAT}/reference/gaia.parquet"]}]
    # a rerun without --reference keeps it (the env file remembers)
    assert _setup() == 0
    env = boto3.client("lambda").get_function_configuration(
        FunctionName="astronomy-source-detection")["Environment"]["Variables"]
    assert env["REFERENCE_CATALOG"] == f"s3://{CAT}/reference/gaia.parquet"


def test_reference_prefix_in_a_public_bucket_is_granted_exactly():
    names = aws_resources.Names("x", "us-west-2", "111122223333",
                                reference="s3://gaia-public/hats/gaia_dr3/")
    statements = [s for s in aws_resources.lambda_policy(names)["Statement"]
                  if "Reference" in s["Sid"]]
    assert statements == [
        {"Sid": "ReadReference", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": ["arn:aws:s3:::gaia-public/hats/gaia_dr3/*"]},
        {"Sid": "ListReference", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": ["arn:aws:s3:::gaia-public"],
         "Condition": {"StringLike": {"s3:prefix": ["hats/gaia_dr3/", "hats/gaia_dr3/*"]}}}]


def test_policy_has_no_wildcard_resource():
    names = aws_resources.Names("x", "eu-west-1", "111122223333")
    resources = [r for s in aws_resources.lambda_policy(names)["Statement"] for r in s["Resource"]]
    assert "*" not in resources and all(r.startswith("arn:aws:") for r in resources)


def test_a_hats_folder_with_a_dot_in_its_name_is_granted_as_a_prefix():
    names = aws_resources.Names("x", "us-west-2", "111122223333",
                                reference="s3://open-data/catalogs/gaia_dr3.hats")
    read = [s for s in aws_resources.lambda_policy(names)["Statement"]
            if s["Sid"] == "ReadReference"]
    assert read[0]["Resource"] == ["arn:aws:s3:::open-data/catalogs/gaia_dr3.hats/*"]


def test_the_same_suffix_in_another_region_is_refused(mocked_aws, capsys):
    assert _setup("--suffix", "t3st", "--region", "eu-west-1") == 0
    aws.use_region(None)
    capsys.readouterr()
    assert _setup("--suffix", "t3st", "--region", "us-west-2") == 1
    err = capsys.readouterr().err
    assert f"error: s3://{RAW}, s3://{CAT}: is in eu-west-1, not us-west-2" in err  # both
    assert "--region eu-west-1" in err and "nothing was made" in err
    assert boto3.client("lambda", region_name="us-west-2").list_functions()["Functions"] == []


def test_a_missing_zip_is_reported_by_resource_and_a_bug_is_raised(mocked_aws, tmp_path):
    """run_setup turns AWS and file errors into one line naming the resource; a programming
    error (a str where a Path belongs) is raised as what it is."""
    from skysurvey.errors import StorageError

    names = aws_resources.Names("t3st", "us-east-1", "123456789012")
    missing = aws_resources.FunctionSettings(tmp_path / "gone.zip")
    with pytest.raises(StorageError, match=r"^Lambda function astronomy-source-detection: "
                                           r"FileNotFoundError: .*gone\.zip"):
        aws_setup.run_setup([aws_setup._role(names), aws_setup._function(names, missing)], names)
    as_text = aws_resources.FunctionSettings(str(_zip(tmp_path / "lambda.zip")))
    with pytest.raises(AttributeError, match="read_bytes"):
        aws_setup.run_setup([aws_setup._function(names, as_text)], names)


def test_a_deployment_made_by_a_cloudformation_stack_is_left_to_the_stack():
    """setup refuses (before changing anything) and cleanup deletes nothing when a resource
    carries CloudFormation's stack tag: the stack owns it (setup_guide.md)."""
    from skysurvey.errors import ConfigError

    names = aws_resources.Names("t3st", "us-east-1", "123456789012")
    stack_tags = {aws_resources.STACK_TAG: "skysurvey", **DEPLOYMENT}
    done = []
    resources = [
        aws_resources.Resource("IAM role", lambda: dict(DEPLOYMENT), lambda: done.append("create"),
                               apply=lambda: done.append("apply"),
                               delete=lambda: done.append("delete role")),
        aws_resources.Resource("bucket s3://astronomy-raw-t3st", lambda: stack_tags,
                               lambda: done.append("create"), apply=lambda: done.append("apply"),
                               delete=lambda: done.append("delete bucket"))]
    with pytest.raises(ConfigError, match=r"CloudFormation stack 'skysurvey'.*delete-stack "
                                          r"--stack-name skysurvey"):
        aws_setup.run_setup(resources, names)
    with pytest.raises(ConfigError, match=r"bucket s3://astronomy-raw-t3st.*CloudFormation"):
        aws_cleanup.run_cleanup(resources, names)
    assert done == []
    assert aws_cleanup.run_cleanup(resources[:1], names, dry_run=True) == [
        ("IAM role", "would delete")]  # without the stack's resources, cleanup goes on


def test_every_name_conflict_is_named_in_one_line_before_anything_is_made(
        mocked_aws, package, capsys):
    """A user's role, log group, database and alarm of setup's names: one refusal naming all
    four, and not one bucket, queue, function, workgroup or alarm made (issue 23 #11)."""
    iam, logs, glue = boto3.client("iam"), boto3.client("logs"), boto3.client("glue")
    cw, s3 = boto3.client("cloudwatch"), boto3.client("s3")
    iam.create_role(RoleName="lambda-astronomy-role",
                    AssumeRolePolicyDocument=json.dumps(aws_resources.trust_policy()))
    logs.create_log_group(logGroupName=aws_resources.LOG_GROUP)
    glue.create_database(DatabaseInput={"Name": "astronomy"})
    cw.put_metric_alarm(AlarmName=aws_resources.ALARM_THROTTLES, Namespace="Mine",
                        MetricName="Mine", Statistic="Sum", Period=60, EvaluationPeriods=1,
                        Threshold=1.0, ComparisonOperator="GreaterThanThreshold")
    assert _setup("--suffix", "t3st", "--package", str(package), "--trigger") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    names = ("IAM role lambda-astronomy-role", f"log group {aws_resources.LOG_GROUP}",
             "Glue/Athena database astronomy", f"CloudWatch alarm {aws_resources.ALARM_THROTTLES}")
    assert err.startswith(f"error: {', '.join(names)}: exists and is not tagged "
                          "skysurvey:deployment=t3st, so setup will not adopt it: delete or "
                          "rename it (4 name conflicts; nothing was made)"), err
    assert s3.list_buckets()["Buckets"] == []
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []
    assert boto3.client("lambda").list_functions()["Functions"] == []
    assert [g["Name"] for g in boto3.client("athena").list_work_groups()["WorkGroups"]] in (
        [], ["primary"])
    assert [a["AlarmName"] for a in cw.describe_alarms()["MetricAlarms"]] == [
        aws_resources.ALARM_THROTTLES]
    assert not env_file_path().exists()


def test_package_upload_refused_by_moto_names_the_s3_upload_then_no_tls_policy_works(
        moto_server, package, tmp_path, fits_factory, capsys, monkeypatch):
    """issue 27 #10: over the direct-upload limit the zip goes through the catalog bucket, which
    moto refuses once the TLS-only policy is on (no condition). The error names the S3 upload
    (bucket/key, cause, what to do); --no-tls-policy, the guide's moto walkthrough, works end to
    end: the zip is in S3, the function made from it, an upload lands in the raw bucket."""
    monkeypatch.setattr(aws_setup, "DIRECT_UPLOAD_LIMIT", 10)  # any zip goes through S3
    assert _setup("--suffix", "t3st", "--package", str(package), "--trigger") == 1
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith(f"error: S3 upload of the Lambda package {package} ")
    assert f"to s3://{CAT}/lambda/package.zip: access denied (" in first
    assert "--no-tls-policy" in first and "Lambda function" not in first

    assert _setup("--suffix", "t3st", "--package", str(package), "--trigger",
                  "--no-tls-policy") == 0
    captured = capsys.readouterr()
    assert "WARNING: --no-tls-policy" in captured.err
    assert "updated: TLS-only policy removed (--no-tls-policy)" in captured.out
    s3 = boto3.client("s3")
    for bucket in (RAW, CAT):  # the policy of the failed run is taken off again
        with pytest.raises(s3.exceptions.ClientError, match="NoSuchBucketPolicy"):
            s3.get_bucket_policy(Bucket=bucket)
    body = s3.get_object(Bucket=CAT, Key="lambda/package.zip")["Body"].read()
    assert body == package.read_bytes()
    code = boto3.client("lambda").get_function(FunctionName=aws_resources.FUNCTION_NAME)
    assert code["Configuration"]["CodeSha256"] == aws_resources.code_sha256(package)
    images = tmp_path / "images"
    images.mkdir()
    fits_factory(images / "a.fits")
    # (into the catalog bucket: the raw bucket's trigger would make moto look for Docker)
    assert load_script("upload_to_s3").main(["--input", str(images), "--bucket",
                                             f"s3://{CAT}"]) == 0
    assert s3.get_object(Bucket=CAT, Key="images/a.fits")["Body"].read() == \
        (images / "a.fits").read_bytes()


def test_no_tls_policy_is_refused_without_a_test_endpoint(mocked_aws, capsys):
    with pytest.raises(SystemExit) as stop:
        _setup("--suffix", "t3st", "--no-tls-policy")
    assert stop.value.code == 2
    assert "AWS_ENDPOINT_URL" in capsys.readouterr().err
    assert boto3.client("s3").list_buckets()["Buckets"] == []


def test_a_setup_failing_half_way_is_found_and_removed_by_cleanup_twice(
        moto_server, package, capsys, monkeypatch):
    """issue 27 #10: setup fails after the buckets, queue, role and log group exist; its env
    file records the deployment (marked incomplete), cleanup removes all of it, and a second
    cleanup says nothing is left, status 0."""
    monkeypatch.setattr(aws_setup, "DIRECT_UPLOAD_LIMIT", 10)
    assert _setup("--suffix", "t3st", "--package", str(package)) == 1
    assert "setup did not finish" in capsys.readouterr().err
    saved = read_env_file(env_file_path())
    assert saved["SKYSURVEY_SUFFIX"] == "t3st" and saved["SKYSURVEY_SETUP"] == "incomplete"
    assert "BUCKET_RAW" not in saved  # the other scripts keep their local default
    s3, iam = boto3.client("s3"), boto3.client("iam")
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == [CAT, RAW]
    assert iam.get_role(RoleName=aws_resources.ROLE_NAME)

    assert _cleanup("--yes") == 0
    out = capsys.readouterr().out
    assert "did not finish" in out and "STILL THERE" not in out
    assert s3.list_buckets()["Buckets"] == []
    assert iam.list_roles()["Roles"] == []
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []
    assert boto3.client("logs").describe_log_groups()["logGroups"] == []
    assert not env_file_path().exists()

    assert _cleanup("--yes") == 0  # cleanup_guide.md: safe to run twice
    assert "nothing left to clean up" in capsys.readouterr().out


def _price(*args):
    return load_script("estimate_cost").main(list(args))


def test_estimate_cost_takes_the_image_size_from_the_images(mocked_aws, tmp_path,
                                                             fits_factory, capsys):
    """issue 27 #10: 256 x 256 survey images are priced at their own size (~0.27 MB), not at
    16.8 MB: from their files on S3 (--input), from --pixels, and from the measured run's
    recorded width x height."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skysurvey.cost import estimate, fits_mb
    from skysurvey.schema import IMAGES_SCHEMA, SOURCES_SCHEMA, empty_table

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=RAW)
    fits_factory(tmp_path / "a.fits", size=256)
    data = (tmp_path / "a.fits").read_bytes()
    for key in ("images/a.fits", "images/n1/b.fits", "images/notes.txt"):
        s3.put_object(Bucket=RAW, Key=key, Body=data if key.endswith(".fits") else b"x" * 10**7)
    assert _price("--count", "1000", "--input", f"s3://{RAW}/images/") == 0
    out = capsys.readouterr().out
    mb = len(data) / 1e6
    assert f"S3 at {mb:,.3g} MB per image (mean of 2 FITS files in s3://{RAW}/images/)" in out
    usd = estimate(1000, mb_per_image=mb, seconds_per_image=0.3).s3_usd
    assert f"S3 (one month + requests)      ${usd:,.4f}" in out
    assert usd < estimate(1000, seconds_per_image=0.3).s3_usd / 10

    assert _price("--count", "1000", "--pixels", "256") == 0
    assert f"S3 at {fits_mb(256 * 256):,.3g} MB per image" in capsys.readouterr().out
    assert abs(fits_mb(256 * 256) - mb) < 0.01  # the file is 256 x 256 x 4 bytes + header

    folder = tmp_path / "cat" / "images" / "band=r" / "night=2026-03-14"
    folder.mkdir(parents=True)
    row = {name: [None] for name in IMAGES_SCHEMA.names}
    row.update(image_id=["a"], seconds=[1.0], n_sources=[0], width=[256], height=[256])
    pq.write_table(pa.table(row, schema=IMAGES_SCHEMA), folder / "a.parquet")
    sources = tmp_path / "cat" / "sources" / "band=r" / "night=2026-03-14"
    sources.mkdir(parents=True)
    pq.write_table(empty_table(SOURCES_SCHEMA), sources / "a.parquet")
    assert _price("--catalog", str(tmp_path / "cat"), "--memory", "1024") == 0
    out = capsys.readouterr().out
    assert f"S3 at {fits_mb(256 * 256):,.3g} MB per image (the catalog's images: 65,536" in out

    assert _price("--count", "10") == 0  # nothing known: the documented default, said
    assert "S3 at 16.8 MB per image (default: a 2048x2048 32-bit image" in \
        capsys.readouterr().out
    assert _price("--count", "10", "--input", str(tmp_path / "cat")) == 1
    assert "no FITS files" in capsys.readouterr().err


@pytest.mark.parametrize(("script", "args"), [
    ("estimate_cost", ["--count", "0"]), ("estimate_cost", ["--count", "-5"]),
    ("estimate_cost", ["--image-mb", "0"]), ("estimate_cost", ["--seconds", "-1"]),
    ("estimate_cost", ["--memory", "0"]), ("estimate_cost", ["--queries", "-1"]),
    ("estimate_cost", ["--pixels", "0x256"]),
    ("setup_aws", ["--memory", "0"]), ("setup_aws", ["--timeout", "-1"]),
    ("setup_aws", ["--ephemeral", "0"]), ("setup_aws", ["--concurrency", "0"]),
    ("download_sample_fits", ["--count", "0"]), ("download_sample_fits", ["--size", "-64"]),
    ("download_sample_fits", ["--seed", "-1"]), ("download_sample_fits", ["--survey", "0"]),
])
def test_counts_and_sizes_must_be_positive(script, args, capsys):
    with pytest.raises(SystemExit) as stop:
        load_script(script).build_parser().parse_args(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {args[0]}" in err and "Traceback" not in err


def test_cleanup_by_suffix_twice_says_nothing_is_left(mocked_aws, capsys):
    assert _setup("--suffix", "t3st") == 0
    assert _cleanup("--suffix", "t3st", "--yes") == 0
    assert "nothing left" not in capsys.readouterr().out
    assert _cleanup("--suffix", "t3st", "--yes") == 0
    out = capsys.readouterr().out
    assert "nothing left to clean up: nothing of deployment t3st exists in us-east-1" in out
    assert "STILL THERE" not in out


def test_a_second_deployment_is_refused_on_one_short_line(mocked_aws, capsys):
    """Every resource of the first deployment conflicts: they share one cause, said once."""
    assert _setup("--suffix", "first") == 0
    capsys.readouterr()
    assert _setup("--suffix", "second") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.count("belongs to skysurvey deployment 'first'") == 1, err
    assert "IAM role lambda-astronomy-role" in err and "nothing was made" in err
    assert len(boto3.client("s3").list_buckets()["Buckets"]) == 2


def test_a_failed_setup_of_another_suffix_keeps_no_stale_bucket_names(moto_server, package,
                                                                      capsys, monkeypatch):
    """The env file named an older deployment (gone): a half-way setup of a new suffix records
    the new suffix only, not the old buckets beside it; a failed repair keeps its settings."""
    write_env_file(env_file_path(), {"SKYSURVEY_SUFFIX": "old", "AWS_REGION": "us-east-1",
                                     "BUCKET_RAW": "s3://astronomy-raw-old"})
    monkeypatch.setattr(aws_setup, "DIRECT_UPLOAD_LIMIT", 10)
    assert _setup("--suffix", "t3st", "--package", str(package)) == 1
    saved = read_env_file(env_file_path())
    assert saved == {"SKYSURVEY_SUFFIX": "t3st", "AWS_REGION": "us-east-1",
                     "SKYSURVEY_SETUP": "incomplete"}
    monkeypatch.setattr(aws_setup, "DIRECT_UPLOAD_LIMIT", 50 * 2**20)
    assert _setup("--package", str(package)) == 0  # the suffix from the file; completes
    saved = read_env_file(env_file_path())
    assert saved["BUCKET_RAW"] == f"s3://{RAW}" and "SKYSURVEY_SETUP" not in saved
    monkeypatch.setattr(aws_setup, "DIRECT_UPLOAD_LIMIT", 10)
    _zip(package, body="return 1")  # new code: goes through S3 again, refused
    assert _setup("--package", str(package)) == 1
    saved = read_env_file(env_file_path())
    assert saved["BUCKET_RAW"] == f"s3://{RAW}" and saved["SKYSURVEY_SETUP"] == "incomplete"

"""setup_aws.py and cleanup_aws.py against moto: every resource, least privilege, idempotent."""

from __future__ import annotations

import io
import json
import zipfile

import boto3
import pytest
from conftest import load_script

from skysurvey import aws_setup
from skysurvey.config import env_file_path, read_env_file


def _script(name):
    module = load_script(name)
    return module


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "lambda.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_function.py", "def lambda_handler(event, context):\n    return {}\n")
    path.write_bytes(buf.getvalue())
    return path


def test_setup_creates_everything_least_privilege_then_changes_nothing(
        mocked_aws, package, capsys):
    setup = _script("setup_aws")
    assert setup.main(["--suffix", "t3st", "--package", str(package), "--trigger"]) == 0
    out = capsys.readouterr().out
    assert "created" in out
    s3, iam = boto3.client("s3", region_name="us-east-1"), boto3.client("iam")
    raw, cat = "astronomy-raw-t3st", "astronomy-catalog-t3st"
    for bucket in (raw, cat):
        bpa = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(bpa.values()) and len(bpa) == 4
        rule = s3.get_bucket_encryption(Bucket=bucket)[
            "ServerSideEncryptionConfiguration"]["Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert s3.get_bucket_versioning(Bucket=bucket).get("Status") is None
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=cat)["Rules"][0]
    assert lifecycle["Filter"]["Prefix"] == "athena-results/"

    role = iam.get_role(RoleName="lambda-astronomy-role")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert iam.list_attached_role_policies(RoleName="lambda-astronomy-role")[
        "AttachedPolicies"] == []
    doc = iam.get_role_policy(RoleName="lambda-astronomy-role",
                              PolicyName="astronomy-least-privilege")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    allowed = {f"arn:aws:s3:::{raw}/images/*", f"arn:aws:s3:::{cat}/sources/*",
               f"arn:aws:s3:::{cat}/images/*", f"arn:aws:s3:::{raw}", f"arn:aws:s3:::{cat}",
               "arn:aws:logs:us-east-1:123456789012:log-group:"
               "/aws/lambda/astronomy-source-detection:*"}
    for statement in doc["Statement"]:
        assert all("*" not in a for a in statement["Action"])
        assert set(statement["Resource"]) <= allowed
    assert {a for s in doc["Statement"] for a in s["Action"]} == {
        "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
        "logs:CreateLogStream", "logs:PutLogEvents"}

    group = boto3.client("logs").describe_log_groups(
        logGroupNamePrefix="/aws/lambda/astronomy-source-detection")["logGroups"][0]
    assert group["retentionInDays"] == 14
    fn = boto3.client("lambda").get_function(FunctionName="astronomy-source-detection")[
        "Configuration"]
    assert (fn["Runtime"], fn["MemorySize"], fn["Timeout"]) == ("python3.12", 1024, 300)
    assert fn["EphemeralStorage"]["Size"] == 2048
    assert fn["Environment"]["Variables"] == {"BUCKET_CATALOG": f"s3://{cat}"}
    notif = s3.get_bucket_notification_configuration(Bucket=raw)
    assert notif["LambdaFunctionConfigurations"][0]["Events"] == ["s3:ObjectCreated:*"]
    wg = boto3.client("athena").get_work_group(WorkGroup="astronomy-workgroup")["WorkGroup"]
    assert wg["Configuration"]["BytesScannedCutoffPerQuery"] == 1024**3
    assert wg["Configuration"]["ResultConfiguration"]["OutputLocation"] == \
        f"s3://{cat}/athena-results/"
    env = read_env_file(env_file_path())
    assert env["BUCKET_RAW"] == f"s3://{raw}" and env["BUCKET_CATALOG"] == f"s3://{cat}"
    assert env["ATHENA_WORKGROUP"] == "astronomy-workgroup"

    # a second run (suffix from the env file) changes nothing and says so
    assert setup.main(["--package", str(package), "--trigger"]) == 0
    out = capsys.readouterr().out
    assert "nothing to change" in out and " created" not in out
    assert len(s3.list_buckets()["Buckets"]) == 2


def test_dry_run_makes_nothing(mocked_aws, capsys):
    assert _script("setup_aws").main(["--suffix", "dry1", "--dry-run"]) == 0
    assert "would create" in capsys.readouterr().out
    assert boto3.client("s3", region_name="us-east-1").list_buckets()["Buckets"] == []
    assert not env_file_path().exists()


def test_cleanup_removes_everything_it_made_and_nothing_else(mocked_aws, package, capsys):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="someone-elses-bucket")
    assert _script("setup_aws").main(["--suffix", "c1", "--package", str(package),
                                      "--trigger"]) == 0
    s3.put_bucket_versioning(Bucket="astronomy-raw-c1",
                             VersioningConfiguration={"Status": "Enabled"})
    for _ in range(2):  # two versions and a delete marker
        s3.put_object(Bucket="astronomy-raw-c1", Key="notes/a.txt", Body=b"x")  # no trigger
    s3.delete_object(Bucket="astronomy-raw-c1", Key="notes/a.txt")
    capsys.readouterr()
    cleanup = _script("cleanup_aws")
    assert cleanup.main(["--dry-run"]) == 0
    assert "would delete" in capsys.readouterr().out
    assert cleanup.main(["--yes"]) == 0
    out = capsys.readouterr().out
    assert "STILL THERE" not in out and "[x] bucket s3://astronomy-raw-c1" in out
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["someone-elses-bucket"]
    assert boto3.client("lambda").list_functions()["Functions"] == []
    roles = [r["RoleName"] for r in boto3.client("iam").list_roles()["Roles"]]
    assert "lambda-astronomy-role" not in roles
    assert boto3.client("logs").describe_log_groups()["logGroups"] == []
    groups = boto3.client("athena").list_work_groups()["WorkGroups"]
    assert "astronomy-workgroup" not in [g["Name"] for g in groups]
    assert cleanup.main(["--yes"]) == 0  # safe twice
    assert "already gone" in capsys.readouterr().out


def test_cleanup_drops_the_database_with_its_views_and_tables(mocked_aws):
    athena = boto3.client("athena")
    athena.create_work_group(Name=aws_setup.WORKGROUP, Configuration={"ResultConfiguration": {
        "OutputLocation": "s3://cat/athena-results/"}})
    aws_setup._drop_tables(aws_setup.Names("x", "us-east-1", "111122223333"))
    sent = [athena.get_query_execution(QueryExecutionId=q)["QueryExecution"]["Query"]
            for q in athena.list_query_executions()["QueryExecutionIds"]]
    assert sent == [f"DROP DATABASE IF EXISTS `{aws_setup.DATABASE}` CASCADE"]


def test_cleanup_without_setup_is_a_clear_error(mocked_aws, capsys):
    assert _script("cleanup_aws").main(["--yes"]) == 1
    assert "nothing was set up" in capsys.readouterr().err


def test_policy_has_no_wildcard_resource():
    names = aws_setup.Names("x", "eu-west-1", "111122223333")
    resources = [r for s in aws_setup.lambda_policy(names)["Statement"] for r in s["Resource"]]
    assert "*" not in resources and all(r.startswith("arn:aws:") for r in resources)

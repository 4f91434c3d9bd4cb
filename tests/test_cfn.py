"""The CloudFormation template (setup_aws.py --template): the deployment setup makes, linted,
and deployed as a stack on moto as far as moto's CloudFormation goes."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import os
import re
import shlex
import zipfile

import boto3
import jmespath
import pytest
import yaml
from conftest import load_script

from skysurvey import aws, aws_resources, aws_setup, cfn_template

SUFFIX, REGION, ACCOUNT = "t3st", "us-east-1", "123456789012"
RAW, CAT = f"astronomy-raw-{SUFFIX}", f"astronomy-catalog-{SUFFIX}"
DEPLOYMENT = {"skysurvey:deployment": SUFFIX, "project": "skysurvey"}
PSEUDO = {"Suffix": SUFFIX, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
          "AWS::Partition": "aws"}
#: What moto's CloudFormation cannot make (DESIGN.md, Known traps); the test notices when
#: moto learns one of them, or forgets another.
NOT_ON_MOTO = {"AWS::S3::BucketPolicy", "AWS::Lambda::EventInvokeConfig",
               "AWS::CloudWatch::Alarm", "AWS::Glue::Database", "AWS::Glue::Table",
               "AWS::Athena::WorkGroup"}


@pytest.fixture(autouse=True)
def _no_region_left_behind():
    yield
    aws.use_region(None)


def _zip_bytes(body="return {}"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_function.py", f"def lambda_handler(event, context):\n    {body}\n")
    return buf.getvalue()


def _resolve(value, values=PSEUDO):
    """The template as CloudFormation would fill it in (Fn::Sub and Ref of parameters;
    Fn::GetAtt stays as it is)."""
    if isinstance(value, dict):
        if set(value) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], value["Fn::Sub"])
        if set(value) == {"Ref"} and value["Ref"] in values:
            return values[value["Ref"]]
        return {k: _resolve(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, values) for v in value]
    return value


def _tags(tags):
    return tags if isinstance(tags, dict) else {t["Key"]: t["Value"] for t in tags}


def _doc(doc):
    return json.loads(doc) if isinstance(doc, str) else doc


def _write_template(tmp_path, name="stack.yaml", *args):
    path = tmp_path / name
    status = load_script("setup_aws").main(["--template", str(path), *args])
    assert status == 0
    text = path.read_text()
    return text, (json.loads(text) if name.endswith(".json") else yaml.safe_load(text))


def _of_type(template, kind):
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


# ---- the template itself ---------------------------------------------------------------------


@pytest.mark.parametrize("name,args", [
    ("stack.yaml", ["--trigger", "--suffix", SUFFIX]),
    ("stack.json", ["--reference", "s3://public-ref/gaia/hats/", "--reference-bands",
                    "g=phot_g_mean_mag", "--memory", "2048"]),
])
def test_cfn_lint_reports_no_error_or_warning(tmp_path, name, args):
    from cfnlint.api import ManualArgs, lint

    text, template = _write_template(tmp_path, name, *args)
    matches = lint(text, config=ManualArgs(regions=["us-east-1", "eu-west-1", "ap-southeast-2"],
                                           include_checks=["I"]))
    # no error, no warning, and no informational note either (I3011 stateful resources'
    # deletion policies, I3042 hard-coded partitions: both handled)
    assert [f"{m.rule.id} {m.message} ({m.linenumber})" for m in matches] == []
    # deployable inline (aws cloudformation deploy without --s3-bucket, as the guide does)
    assert len(text.encode()) < cfn_template.INLINE_LIMIT
    # the linter does look: a retention CloudWatch Logs does not offer is an error
    template["Resources"]["FunctionLogGroup"]["Properties"]["RetentionInDays"] = 15
    broken = lint(json.dumps(template), config=ManualArgs(regions=["us-east-1"]))
    assert any(m.rule.id.startswith("E") for m in broken)


def test_template_writes_no_aws_call_and_refuses_what_it_cannot_carry(tmp_path, capsys,
                                                                      monkeypatch):
    setup = load_script("setup_aws")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # any AWS call would fail
    assert setup.main(["--template", str(tmp_path / "t.yml")]) == 0
    template = yaml.safe_load((tmp_path / "t.yml").read_text())
    assert "Default" not in template["Parameters"]["Suffix"]  # none given, none saved
    assert "RawBucketInvokePermission" not in template["Resources"]  # no --trigger
    for bad in (["--template", str(tmp_path / "t.txt")],
                ["--template", str(tmp_path / "t.json"), "--package", __file__],
                ["--template", str(tmp_path / "t.json"), "--reference", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            setup.main(bad)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "name it .yaml, .yml or .json" in err and "CodeBucket" in err and "s3:// URI" in err


def test_trigger_has_no_circular_dependency(tmp_path):
    _, template = _write_template(tmp_path, "stack.yaml", "--trigger")
    resources = template["Resources"]
    permission = resources["RawBucketInvokePermission"]["Properties"]
    assert permission["SourceArn"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::astronomy-raw-${Suffix}"}
    assert resources["RawBucket"]["DependsOn"] == ["RawBucketInvokePermission"]

    def refs(value):  # every resource a value refers to
        if isinstance(value, dict):
            found = set()
            for key, inner in value.items():
                if key == "Ref":
                    found.add(inner)
                elif key == "Fn::GetAtt":
                    found.add(inner[0])
                elif key == "Fn::Sub":
                    found |= set(re.findall(r"\$\{([A-Za-z0-9]+)[}.]", inner))
                else:
                    found |= refs(inner)
            return found
        return set().union(*(refs(v) for v in value)) if isinstance(value, list) else set()

    graph = {name: (refs(r["Properties"]) | set(r.get("DependsOn", []))) & set(resources)
             for name, r in resources.items()}
    done, order = set(), []
    while len(done) < len(graph):  # a topological order exists: no cycle
        ready = [n for n, deps in graph.items() if n not in done and deps <= done]
        assert ready, f"cycle among {sorted(set(graph) - done)}"
        done |= set(ready)
        order += ready
    assert order.index("Function") < order.index("RawBucketInvokePermission") < \
        order.index("RawBucket")


# ---- the template is what setup makes --------------------------------------------------------

#: What each of setup's resources is in the template (setup_resources' names, by prefix).
SETUP_TO_TEMPLATE = {
    "bucket s3://": ["AWS::S3::Bucket", "AWS::S3::BucketPolicy"],
    "failed-events queue": ["AWS::SQS::Queue"], "IAM role": ["AWS::IAM::Role"],
    "log group": ["AWS::Logs::LogGroup"],
    "Lambda function": ["AWS::Lambda::Function", "AWS::Lambda::EventInvokeConfig"],
    "S3 trigger": ["AWS::Lambda::Permission"], "Glue/Athena database": ["AWS::Glue::Database"],
    "Athena workgroup": ["AWS::Athena::WorkGroup"], "Athena tables": ["AWS::Glue::Table"],
    "CloudWatch alarm": ["AWS::CloudWatch::Alarm"],
    "CloudWatch dashboard": ["AWS::CloudWatch::Dashboard"],
}


def test_every_resource_setup_makes_is_in_the_template(tmp_path):
    """A resource kind added to setup_resources and not to the template fails here."""
    names = aws_resources.Names(SUFFIX, REGION, ACCOUNT)
    made = aws_setup.setup_resources(names, aws_resources.FunctionSettings(None), trigger=True)
    _, template = _write_template(tmp_path, "stack.yaml", "--trigger")
    kinds = [r["Type"] for r in template["Resources"].values()]
    expected = []
    for resource in made:
        prefix = next((p for p in SETUP_TO_TEMPLATE if resource.name.startswith(p)), None)
        assert prefix, f"setup makes {resource.name}: what is it in the template?"
        if prefix == "Athena tables":  # one setup step, one Glue table each
            expected += ["AWS::Glue::Table"] * len(aws_resources.glue_tables(names))
        else:
            expected += SETUP_TO_TEMPLATE[prefix]
    assert sorted(kinds) == sorted(expected)


@pytest.mark.slow
def test_template_matches_what_setup_creates_on_moto(mocked_aws, tmp_path, capsys):
    """setup_aws.py makes the deployment on moto; every name, policy and setting of the
    template (filled in with the same suffix, region and account) is read back from it."""
    package = tmp_path / "lambda.zip"
    package.write_bytes(_zip_bytes())
    assert load_script("setup_aws").main(["--suffix", SUFFIX, "--package", str(package),
                                          "--trigger"]) == 0
    _, raw_template = _write_template(tmp_path, "stack.yaml", "--trigger")
    template = _resolve(raw_template)
    assert template["Parameters"]["Suffix"]["Default"] == SUFFIX  # from the env file
    res = template["Resources"]
    s3, iam, lam = boto3.client("s3"), boto3.client("iam"), boto3.client("lambda")

    for logical, bucket in (("RawBucket", RAW), ("CatalogBucket", CAT)):
        p = res[logical]["Properties"]
        assert p["BucketName"] == bucket
        assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == \
            p["PublicAccessBlockConfiguration"]
        rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"][
            "Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"] == \
            p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
                "ServerSideEncryptionByDefault"]
        assert _tags(s3.get_bucket_tagging(Bucket=bucket)["TagSet"]) == _tags(p["Tags"]) == \
            DEPLOYMENT
        policy = res[f"{logical}Policy"]["Properties"]
        assert policy["Bucket"] == {"Ref": logical}
        assert _doc(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == policy["PolicyDocument"]
        assert policy["PolicyDocument"]["Statement"][0]["Condition"] == {
            "Bool": {"aws:SecureTransport": "false"}}
    [rule] = s3.get_bucket_lifecycle_configuration(Bucket=CAT)["Rules"]
    [cfn_rule] = res["CatalogBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert (rule["ID"], rule["Status"], rule["Filter"]["Prefix"], rule["Expiration"]["Days"]) \
        == (cfn_rule["Id"], cfn_rule["Status"], cfn_rule["Prefix"], cfn_rule["ExpirationInDays"])
    assert "LifecycleConfiguration" not in res["RawBucket"]["Properties"]
    made = s3.get_bucket_notification_configuration(Bucket=RAW)["LambdaFunctionConfigurations"]
    assert sorted((c["Events"][0], c["LambdaFunctionArn"], tuple(
        (r["Name"].lower(), r["Value"]) for r in c["Filter"]["Key"]["FilterRules"]))
        for c in made) == sorted((c["Event"], c["Function"], tuple(
            (r["Name"], r["Value"]) for r in c["Filter"]["S3Key"]["Rules"]))
            for c in res["RawBucket"]["Properties"]["NotificationConfiguration"][
                "LambdaConfigurations"])

    q = res["FailedEventsQueue"]["Properties"]
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=q["QueueName"])["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["SqsManagedSseEnabled"] == str(q["SqsManagedSseEnabled"]).lower()
    assert int(attributes["MessageRetentionPeriod"]) == q["MessageRetentionPeriod"]
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == _tags(q["Tags"])

    r = res["FunctionRole"]["Properties"]
    role = iam.get_role(RoleName=r["RoleName"])["Role"]
    assert _doc(role["AssumeRolePolicyDocument"]) == r["AssumeRolePolicyDocument"]
    assert role["Description"] == r["Description"]
    assert _tags(iam.list_role_tags(RoleName=r["RoleName"])["Tags"]) == _tags(r["Tags"])
    [inline] = r["Policies"]
    assert iam.list_role_policies(RoleName=r["RoleName"])["PolicyNames"] == [
        inline["PolicyName"]]
    assert _doc(iam.get_role_policy(RoleName=r["RoleName"], PolicyName=inline["PolicyName"])[
        "PolicyDocument"]) == inline["PolicyDocument"]
    assert not any(res_ == "*" for s in inline["PolicyDocument"]["Statement"]
                   for res_ in s["Resource"])

    g = res["FunctionLogGroup"]["Properties"]
    logs = boto3.client("logs")
    [group] = logs.describe_log_groups(logGroupNamePrefix=g["LogGroupName"])["logGroups"]
    assert group["retentionInDays"] == g["RetentionInDays"]
    assert logs.list_tags_log_group(logGroupName=g["LogGroupName"])["tags"] == _tags(g["Tags"])

    f = res["Function"]["Properties"]
    params = {k: v.get("Default") for k, v in template["Parameters"].items()}
    fn = lam.get_function(FunctionName=f["FunctionName"])
    cfg = fn["Configuration"]
    assert (cfg["Runtime"], cfg["Handler"], cfg["Description"]) == (
        f["Runtime"], f["Handler"], f["Description"])
    assert (cfg["MemorySize"], cfg["Timeout"], cfg["EphemeralStorage"]["Size"]) == (
        params["MemorySize"], params["Timeout"], params["EphemeralStorage"])
    assert f["MemorySize"] == {"Ref": "MemorySize"} and f["Timeout"] == {"Ref": "Timeout"}
    assert f["EphemeralStorage"] == {"Size": {"Ref": "EphemeralStorage"}}
    assert cfg["Environment"] == f["Environment"]
    assert f["Role"] == {"Fn::GetAtt": ["FunctionRole", "Arn"]} and cfg["Role"] == role["Arn"]
    assert fn["Tags"] == _tags(f["Tags"])
    assert f["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}
    assert lam.get_function_concurrency(FunctionName=f["FunctionName"])[
        "ReservedConcurrentExecutions"] == params["ReservedConcurrency"]
    assert f["Code"] == {"S3Bucket": {"Ref": "CodeBucket"}, "S3Key": {"Ref": "CodeKey"}}

    e = res["FunctionEventInvokeConfig"]["Properties"]
    invoke = lam.get_function_event_invoke_config(FunctionName=f["FunctionName"])
    assert e["FunctionName"] == {"Ref": "Function"} and e["Qualifier"] == "$LATEST"
    for key in ("MaximumRetryAttempts", "MaximumEventAgeInSeconds", "DestinationConfig"):
        assert invoke[key] == e[key], key
    assert e["DestinationConfig"]["OnFailure"]["Destination"] == attributes["QueueArn"]

    perm = res["RawBucketInvokePermission"]["Properties"]
    [statement] = json.loads(lam.get_policy(FunctionName=f["FunctionName"])["Policy"])[
        "Statement"]
    assert statement["Action"] == perm["Action"]
    assert statement["Principal"] == {"Service": perm["Principal"]}
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == perm["SourceArn"] == \
        f"arn:aws:s3:::{RAW}"
    assert statement["Condition"]["StringEquals"]["AWS:SourceAccount"] == \
        perm["SourceAccount"] == ACCOUNT

    glue = boto3.client("glue")
    d = res["Database"]["Properties"]["DatabaseInput"]
    database = glue.get_database(Name=d["Name"])["Database"]
    assert database["Description"] == d["Description"]
    tables = _of_type(template, "AWS::Glue::Table")
    from skysurvey.athena import TABLES

    assert len(tables) == len(TABLES) >= 6  # forced_photometry (issue 24) included
    for table in tables.values():
        t = table["Properties"]["TableInput"]
        assert table["Properties"]["DatabaseName"] == {"Ref": "Database"}
        made = glue.get_table(DatabaseName=d["Name"], Name=t["Name"])["Table"]
        assert made["PartitionKeys"] == t["PartitionKeys"] and t["PartitionKeys"]
        assert made["TableType"] == t["TableType"] and made["Parameters"] == t["Parameters"]
        sd, made_sd = t["StorageDescriptor"], made["StorageDescriptor"]
        assert made_sd["Columns"] == sd["Columns"] and made_sd["Location"] == sd["Location"]
        assert sd["Location"].startswith(f"s3://{CAT}/")
        assert made_sd["SerdeInfo"] == sd["SerdeInfo"]

    w = res["Workgroup"]["Properties"]
    athena = boto3.client("athena")
    wg = athena.get_work_group(WorkGroup=w["Name"])["WorkGroup"]
    assert wg["Description"] == w["Description"]
    for key, value in w["WorkGroupConfiguration"].items():
        assert wg["Configuration"][key] == value, key
    arn = f"arn:aws:athena:{REGION}:{ACCOUNT}:workgroup/{w['Name']}"
    assert _tags(athena.list_tags_for_resource(ResourceARN=arn)["Tags"]) == _tags(w["Tags"])

    cw = boto3.client("cloudwatch")
    alarms = {a["AlarmName"]: a for a in cw.describe_alarms()["MetricAlarms"]}
    template_alarms = _of_type(template, "AWS::CloudWatch::Alarm")
    assert {a["Properties"]["AlarmName"] for a in template_alarms.values()} == set(alarms)
    for alarm in template_alarms.values():
        p = dict(alarm["Properties"])
        made = alarms[p["AlarmName"]]
        assert _tags(cw.list_tags_for_resource(ResourceARN=made["AlarmArn"])["Tags"]) == \
            _tags(p.pop("Tags"))
        for key, value in p.items():
            assert made[key] == value, (p["AlarmName"], key)
    dash = res["Dashboard"]["Properties"]
    assert json.loads(cw.get_dashboard(DashboardName=dash["DashboardName"])["DashboardBody"]) \
        == json.loads(dash["DashboardBody"])

    # the outputs are the env file setup wrote, name for name
    from skysurvey.config import env_file_path, read_env_file

    outputs = {o["Description"]: o["Value"] for o in template["Outputs"].values()}
    assert outputs == read_env_file(env_file_path())
    capsys.readouterr()


# ---- the stack on moto -----------------------------------------------------------------------


def _moto_part(template: dict) -> tuple[dict, set[str]]:
    """The resources moto's CloudFormation can make, and the types left out."""
    from moto.cloudformation.parsing import get_model_map

    supported = set(get_model_map())
    kept = {k: r for k, r in template["Resources"].items() if r["Type"] in supported}
    left = {r["Type"] for r in template["Resources"].values()} - supported
    return {**template, "Resources": kept}, left


@pytest.mark.slow
def test_stack_deploys_on_moto_and_deletes_cleanly(mocked_aws, tmp_path):
    _, template = _write_template(tmp_path, "stack.yaml", "--trigger", "--suffix", SUFFIX,
                                  "--memory", "1536")
    part, left_out = _moto_part(template)
    assert left_out == NOT_ON_MOTO
    assert {r["Type"] for r in part["Resources"].values()} == {
        "AWS::S3::Bucket", "AWS::SQS::Queue", "AWS::IAM::Role", "AWS::Logs::LogGroup",
        "AWS::Lambda::Function", "AWS::Lambda::Permission", "AWS::CloudWatch::Dashboard"}
    # the zip lives in a bucket of its own (no TLS-only policy: moto would refuse the upload)
    code = _zip_bytes("return {'status': 'ok'}")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="deploy-artifacts-t3st")
    key = f"skysurvey/lambda-{hashlib.sha256(code).hexdigest()[:12]}.zip"
    s3.put_object(Bucket="deploy-artifacts-t3st", Key=key, Body=code)

    cf = boto3.client("cloudformation")
    cf.create_stack(StackName="skysurvey", TemplateBody=yaml.safe_dump(part, sort_keys=False),
                    Capabilities=["CAPABILITY_NAMED_IAM"], Parameters=[
                        {"ParameterKey": "CodeBucket", "ParameterValue": "deploy-artifacts-t3st"},
                        {"ParameterKey": "CodeKey", "ParameterValue": key}])
    stack = cf.describe_stacks(StackName="skysurvey")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    made = {r["LogicalResourceId"]: r["ResourceStatus"] for r in
            cf.describe_stack_resources(StackName="skysurvey")["StackResources"]}
    assert made == dict.fromkeys(part["Resources"], "CREATE_COMPLETE")

    # outputs: the env file of this deployment, as setup would write it
    names = aws_resources.Names(SUFFIX, REGION, ACCOUNT)
    assert {o["Description"]: o["OutputValue"] for o in stack["Outputs"]} == names.env()

    for bucket in (RAW, CAT):  # moto keeps encryption and tags (not the access block)
        rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"][
            "Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert _tags(s3.get_bucket_tagging(Bucket=bucket)["TagSet"]) == DEPLOYMENT
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=aws_setup.QUEUE_NAME)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert attributes["MessageRetentionPeriod"] == str(aws_resources.QUEUE_RETENTION_SECONDS)
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == DEPLOYMENT
    iam = boto3.client("iam")
    document = iam.get_role_policy(RoleName=aws_resources.ROLE_NAME,
                                   PolicyName=aws_resources.POLICY_NAME)["PolicyDocument"]
    # moto 5.2.6's CloudFormation stores an inline policy as Python's repr of the dict
    assert ast.literal_eval(document) == aws_resources.lambda_policy(names)
    assert _tags(iam.list_role_tags(RoleName=aws_resources.ROLE_NAME)["Tags"]) == DEPLOYMENT
    logs = boto3.client("logs")
    [group] = logs.describe_log_groups(logGroupNamePrefix=aws_resources.LOG_GROUP)["logGroups"]
    assert group["retentionInDays"] == aws_resources.LOG_RETENTION_DAYS
    lam = boto3.client("lambda")
    cfg = lam.get_function(FunctionName=aws_resources.FUNCTION_NAME)["Configuration"]
    assert (cfg["Runtime"], cfg["Handler"], cfg["MemorySize"], cfg["Timeout"]) == (
        aws_resources.RUNTIME, aws_resources.HANDLER, 1536, 300)
    assert cfg["Role"] == iam.get_role(RoleName=aws_resources.ROLE_NAME)["Role"]["Arn"]
    assert cfg["Environment"]["Variables"] == aws_resources.function_environment(names)
    assert cfg["CodeSha256"] == base64.b64encode(hashlib.sha256(code).digest()).decode()
    assert lam.get_function_concurrency(FunctionName=aws_resources.FUNCTION_NAME)[
        "ReservedConcurrentExecutions"] == aws_resources.DEFAULT_CONCURRENCY
    [statement] = json.loads(lam.get_policy(FunctionName=aws_resources.FUNCTION_NAME)["Policy"])[
        "Statement"]
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == f"arn:aws:s3:::{RAW}"
    cw = boto3.client("cloudwatch")
    assert json.loads(cw.get_dashboard(DashboardName=aws_resources.DASHBOARD)["DashboardBody"]) == \
        aws_resources.dashboard_body(names)

    cf.delete_stack(StackName="skysurvey")
    [summary] = cf.list_stacks()["StackSummaries"]
    assert summary["StackStatus"] == "DELETE_COMPLETE"
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["deploy-artifacts-t3st"]
    assert sqs.list_queues().get("QueueUrls", []) == []
    assert iam.list_roles()["Roles"] == []
    assert lam.list_functions()["Functions"] == []
    assert logs.describe_log_groups()["logGroups"] == []
    assert cw.list_dashboards()["DashboardEntries"] == []


# ---- setup_guide.md, "Deploy with CloudFormation", followed on moto --------------------------


def _guide_commands() -> list[str]:
    from skysurvey.config import REPO_ROOT

    text = (REPO_ROOT / "setup_guide.md").read_text()
    section = text.split("## Deploy with CloudFormation\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _options(words: list[str]) -> dict[str, list[str]]:
    """``--name value...`` -> {"name": [values]} (the AWS CLI's way)."""
    options, current = {}, None
    for word in words:
        if word.startswith("--"):
            current = word[2:]
            options[current] = []
        elif current is not None:
            options[current].append(word)
    return options


@pytest.mark.slow
def test_the_guide_section_deploys_reads_outputs_and_deletes_on_moto(mocked_aws, tmp_path,
                                                                     monkeypatch):
    """Every command of the section, in order, as far as moto allows: the template written by
    setup_aws.py, the zip uploaded, the stack deployed (moto's part), the env file written from
    the outputs with the guide's own --query and awk program, the buckets emptied, the stack
    deleted and waited for, the artifacts bucket and the env file removed."""
    from skysurvey.config import env_file_path, get_setting, read_env_file

    region = "eu-west-1"  # not us-east-1: the location constraint and the region pseudo-parameter
    variables = {"SUFFIX": SUFFIX, "REGION": region}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build").mkdir()
    env_file = env_file_path()

    def expand(text):
        return re.sub(r"\$([A-Z_]+)", lambda m: variables[m.group(1)], text)

    def client(service):
        return boto3.client(service, region_name=region)

    ran, not_on_moto = [], []
    for line in _guide_commands():
        words = shlex.split(expand(line.split(" | ")[0]))
        if line.startswith("python scripts/build_lambda_package.py"):
            # the real build downloads Linux wheels (~65 MB): a small zip in its place
            (tmp_path / _options(words)["output"][0]).write_bytes(_zip_bytes())
            not_on_moto.append("build_lambda_package.py (a small zip instead)")
        elif line.startswith("python scripts/setup_aws.py"):
            assert load_script("setup_aws").main(words[2:]) == 0
            ran.append("template")
        elif line.startswith(("python scripts/query_with_athena.py",
                              "python scripts/check_aws.py")):
            not_on_moto.append(words[1])  # Athena SQL; the real-account checks (test_check_aws)
        elif line.startswith("export CODE_KEY="):
            m = re.fullmatch(r"export CODE_KEY=(.*)\$\(sha256sum (\S+) \| cut -c1-16\)(.*)", line)
            digest = hashlib.sha256((tmp_path / m.group(2)).read_bytes()).hexdigest()[:16]
            variables["CODE_KEY"] = m.group(1) + digest + m.group(3)
        elif words[:3] == ["aws", "s3api", "create-bucket"]:
            o = _options(words[3:])
            constraint = dict(kv.split("=") for kv in o["create-bucket-configuration"])
            assert o["region"] == [region] and constraint == {"LocationConstraint": region}
            client("s3").create_bucket(Bucket=o["bucket"][0],
                                       CreateBucketConfiguration=constraint)
        elif words[:3] == ["aws", "s3api", "put-public-access-block"]:
            o = _options(words[3:])
            block = {k: v == "true" for k, v in (kv.split("=") for kv in
                     o["public-access-block-configuration"][0].split(","))}
            assert block == aws_resources.PUBLIC_ACCESS_BLOCK
            client("s3").put_public_access_block(Bucket=o["bucket"][0],
                                                 PublicAccessBlockConfiguration=block)
        elif words[:3] == ["aws", "s3", "cp"]:
            bucket, key = words[4].removeprefix("s3://").split("/", 1)
            client("s3").put_object(Bucket=bucket, Key=key,
                                    Body=(tmp_path / words[3]).read_bytes())
        elif words[:3] == ["aws", "cloudformation", "deploy"]:
            o = _options(words[3:])
            template = yaml.safe_load((tmp_path / o["template-file"][0]).read_text())
            overrides = dict(kv.split("=", 1) for kv in o["parameter-overrides"])
            required = {k for k, p in template["Parameters"].items() if "Default" not in p}
            assert required <= set(overrides) <= set(template["Parameters"])
            part, _ = _moto_part(template)
            client("cloudformation").create_stack(
                StackName=o["stack-name"][0], TemplateBody=yaml.safe_dump(part),
                Capabilities=o["capabilities"],
                Parameters=[{"ParameterKey": k, "ParameterValue": v}
                            for k, v in overrides.items()])
            assert client("cloudformation").describe_stacks(StackName=o["stack-name"][0])[
                "Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
            ran.append("deploy")
        elif words[:3] == ["aws", "cloudformation", "describe-stacks"]:
            o = _options(words[3:])
            assert o["output"] == ["text"]
            rows = jmespath.search(o["query"][0], client("cloudformation").describe_stacks(
                StackName=o["stack-name"][0]))
            awk = line.split(" | ", 1)[1]
            assert awk == ("""awk -F'\\t' '{print "export " $1 "=" $2}' > .skysurvey.env""")
            env_file.write_text("".join(f"export {d}={v}\n" for d, v in rows))
            ran.append("outputs")
        elif words[:3] == ["aws", "s3", "rm"]:
            assert words[4:] == ["--recursive"]
            bucket = words[3].removeprefix("s3://")
            for item in client("s3").list_objects_v2(Bucket=bucket).get("Contents", []):
                client("s3").delete_object(Bucket=bucket, Key=item["Key"])
        elif words[:3] == ["aws", "cloudformation", "delete-stack"]:
            client("cloudformation").delete_stack(StackName=_options(words[3:])["stack-name"][0])
        elif words[:3] == ["aws", "cloudformation", "wait"]:
            assert words[3] == "stack-delete-complete"
            client("cloudformation").get_waiter("stack_delete_complete").wait(
                StackName=_options(words[4:])["stack-name"][0],
                WaiterConfig={"Delay": 1, "MaxAttempts": 5})
            ran.append("deleted")
        elif words[:3] == ["aws", "s3", "rb"]:
            assert words[4:] == ["--force"]
            bucket = words[3].removeprefix("s3://")
            for item in client("s3").list_objects_v2(Bucket=bucket).get("Contents", []):
                client("s3").delete_object(Bucket=bucket, Key=item["Key"])
            client("s3").delete_bucket(Bucket=bucket)
        elif words == ["rm", ".skysurvey.env"]:
            # the env file the scripts read is the one the guide wrote
            assert read_env_file(env_file) == aws_resources.Names(SUFFIX, region, ACCOUNT).env()
            assert get_setting("BUCKET_CATALOG") == f"s3://{CAT}"
            env_file.unlink()
        else:
            raise AssertionError(f"a command this test does not follow yet: {line}")
        if "deploy" in ran and "deleted" not in ran and "filled" not in ran:
            # between deploy and delete, a run writes into the buckets: the guide empties them
            client("s3").put_object(Bucket=RAW, Key="images/a.fits", Body=b"SIMPLE")
            ran.append("filled")

    assert ran == ["template", "deploy", "filled", "outputs", "deleted"]
    assert not_on_moto == ["build_lambda_package.py (a small zip instead)",
                           "scripts/query_with_athena.py", "scripts/check_aws.py"]
    assert client("s3").list_buckets()["Buckets"] == []
    assert client("lambda").list_functions()["Functions"] == []
    assert boto3.client("iam").list_roles()["Roles"] == []
    assert not env_file.exists() and not os.path.exists(".skysurvey.env")

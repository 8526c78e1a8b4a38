"""infra/bucket.yaml: lints clean, deploys into moto, and its rule picks exactly the inbox uploads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from cfnlint.decode import decode_str
from moto import mock_aws

TEMPLATE = Path(__file__).resolve().parents[1] / "infra" / "bucket.yaml"
BUCKET = "easel-infra-test"
# Resource types moto's CloudFormation cannot create; they are checked by cfn-lint (schema) only.
NOT_IN_MOTO = {"AWS::Events::Connection", "AWS::Events::ApiDestination", "AWS::S3::BucketPolicy"}
PARAMS = {"BucketName": BUCKET, "ServiceUrl": "https://ws--easel-web.modal.run",
          "ServiceToken": "esl_0123456789abcdef"}


@pytest.fixture(scope="module")
def template() -> dict:
    decoded, problems = decode_str(TEMPLATE.read_text())
    assert not problems
    return json.loads(json.dumps(decoded))  # plain dicts, intrinsic functions in their long form


@pytest.fixture
def aws(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


def test_template_passes_cfn_lint():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    out = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr


def references(node) -> set[str]:
    """Logical ids a template fragment points at (Ref, GetAtt, ${X} / ${X.Attr} in Sub)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "Ref":
                found.add(v)
            elif k == "Fn::GetAtt":
                found.add(v[0] if isinstance(v, list) else v.split(".")[0])
            elif k == "Fn::Sub":
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", v if isinstance(v, str) else v[0])}
            found |= references(v)
    elif isinstance(node, list):
        for v in node:
            found |= references(v)
    return found


def moto_deployable(template: dict) -> dict:
    """The template less what moto lacks, and less what depends on that (transitively)."""
    resources = dict(template["Resources"])
    dropped = {k for k, r in resources.items() if r["Type"] in NOT_IN_MOTO}
    while True:
        more = {k for k, r in resources.items() if k not in dropped and references(r) & dropped}
        if not more:
            break
        dropped |= more
    kept = {k: r for k, r in resources.items() if k not in dropped}
    outputs = {k: o for k, o in template.get("Outputs", {}).items() if not references(o) & dropped}
    return {**template, "Resources": kept, "Outputs": outputs}


def test_template_deploys_in_moto_with_an_encrypted_private_bucket_and_a_least_privilege_user(template, aws):
    body = moto_deployable(template)
    assert {"Bucket", "ServicePolicy", "ServiceUser"} <= set(body["Resources"])
    cf = boto3.client("cloudformation")
    cf.create_stack(StackName="easel", TemplateBody=json.dumps(body), Capabilities=["CAPABILITY_IAM"],
                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in PARAMS.items()])
    stack = cf.describe_stacks(StackName="easel")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["Store"] == f"s3://{BUCKET}"

    s3 = boto3.client("s3")
    rules = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    iam = boto3.client("iam")
    attached = iam.list_attached_user_policies(UserName=outputs["ServiceUserName"])["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [outputs["ServicePolicyArn"]]
    version = iam.get_policy(PolicyArn=outputs["ServicePolicyArn"])["Policy"]["DefaultVersionId"]
    doc = iam.get_policy_version(PolicyArn=outputs["ServicePolicyArn"], VersionId=version)["PolicyVersion"]["Document"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    for statement in doc["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert statement["Effect"] == "Allow"
        assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
        assert all(r in (f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*") for r in resources), resources


def test_bucket_declares_versioning_private_access_and_output_expiry(template):
    # moto's CloudFormation applies a bucket's encryption and tags only, so these are read from the template
    props = template["Resources"]["Bucket"]["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(props["PublicAccessBlockConfiguration"][k] is True for k in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    assert props["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    expire = next(r for r in props["LifecycleConfiguration"]["Rules"] if r["Id"] == "expire-outputs")
    from loaders.storage.store import retention_tag

    key, value = retention_tag("users/alice/outputs/txt2img-images/2025-01-01/a.png").split("=")
    assert expire["TagFilters"] == [{"Key": key, "Value": value}]  # the tag the store writes
    assert retention_tag("users/alice/models/Lora/x.safetensors") is None  # models never expire
    target = template["Resources"]["InboxUploads"]["Properties"]["Targets"][0]
    assert target["Arn"] == {"Fn::GetAtt": ["EventsDestination", "Arn"]}
    endpoint = template["Resources"]["EventsDestination"]["Properties"]["InvocationEndpoint"]
    assert endpoint == {"Fn::Sub": "${ServiceUrl}/events/s3"}
    auth = template["Resources"]["EventsConnection"]["Properties"]["AuthParameters"]["ApiKeyAuthParameters"]
    assert auth == {"ApiKeyName": "Authorization", "ApiKeyValue": {"Fn::Sub": "Bearer ${ServiceToken}"}}


def s3_event(bucket: str, key: str) -> dict:
    """An S3 "Object Created" event as EventBridge delivers it."""
    return {"Source": "aws.s3", "DetailType": "Object Created", "Detail": json.dumps({
        "version": "0", "bucket": {"name": bucket}, "reason": "PutObject",
        "object": {"key": key, "size": 10, "etag": "abc", "sequencer": "00"}})}


def test_rule_pattern_selects_only_inbox_uploads_of_this_bucket(template, aws):
    pattern = json.loads(json.dumps(template["Resources"]["InboxUploads"]["Properties"]["EventPattern"])
                         .replace(json.dumps({"Ref": "Bucket"}), json.dumps(BUCKET)))
    events, sqs = boto3.client("events"), boto3.client("sqs")
    queue = sqs.create_queue(QueueName="seen")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="inbox", EventPattern=json.dumps(pattern))
    events.put_targets(Rule="inbox", Targets=[{"Id": "q", "Arn": arn}])
    keys = ["users/alice/inbox/job.json", "users/bob/inbox/folder/cat.png", "users/alice/outputs/x.png",
            "public/models/Stable-diffusion/a.safetensors", "users/alice/inboxes/x.json"]
    events.put_events(Entries=[s3_event(BUCKET, k) for k in keys] + [s3_event("other", keys[0])])
    got = []
    while msgs := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        for m in msgs:
            body = json.loads(m["Body"])
            got.append((body["detail"]["bucket"]["name"], body["detail"]["object"]["key"]))
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    assert sorted(got) == [(BUCKET, "users/alice/inbox/job.json"), (BUCKET, "users/bob/inbox/folder/cat.png")]

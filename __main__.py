"""mlops-platform: one MLOps environment per stack. This file only composes components."""

import pulumi
import pulumi_aws as aws

from components.cluster import Cluster, ClusterArgs
from components.config import Cloud, load_environment
from components.namespace import EnvironmentNamespace, NamespaceArgs
from components.storage import Storage, StorageArgs

env, secrets = load_environment()

if env.cloud == Cloud.aws:
    # One explicit provider carries the environment's tags onto every taggable resource.
    aws_provider = aws.Provider("aws", region=env.region, default_tags={"tags": env.resource_tags})
    storage = Storage("storage", StorageArgs(env), pulumi.ResourceOptions(providers={"aws": aws_provider}))
else:
    cluster = Cluster("cluster", ClusterArgs(env, secrets))
    k8s_opts = pulumi.ResourceOptions(providers={"kubernetes": cluster.provider})
    namespace = EnvironmentNamespace("namespace", NamespaceArgs(env), k8s_opts)
    storage = Storage("storage", StorageArgs(env, namespace=namespace.name), k8s_opts)

# The stack outputs contract: workloads and CI read these names (README: "Stack outputs").
pulumi.export("environment", env.name)
pulumi.export("data_bucket", storage.data_bucket)
pulumi.export("artifact_bucket", storage.artifact_bucket)
pulumi.export("capture_bucket", storage.capture_bucket)
pulumi.export("s3_endpoint", storage.s3_endpoint)
pulumi.export("kms_key_arn", storage.kms_key_arn)

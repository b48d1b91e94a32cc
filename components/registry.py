"""The account's ECR repository for the workload image (`registry.create`: dev's and prod's stacks).

Immutable tags (a tag, once pushed, always names the same image), scan on push, encrypted with its
own rotating KMS key, untagged images expired after `registry.untaggedDays`. The image workflow
(.github/workflows/image.yml) builds, scans (failing on critical findings), pushes here and records
the digest; deploys pin the image by that digest (`workloads.imageDigest`). Nodes pull with their
role's AmazonEC2ContainerRegistryReadOnly (ECR decrypts for them through its KMS grant).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.config import RegistryConfig


@dataclass(frozen=True)
class RegistryArgs:
    registry: RegistryConfig
    environment: str
    protect: bool
    retain_on_delete: bool


def lifecycle_policy(untagged_days: int) -> str:
    return json.dumps({"rules": [{
        "rulePriority": 1,
        "description": f"expire untagged images after {untagged_days} days",
        "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                      "countNumber": untagged_days},
        "action": {"type": "expire"},
    }]})


class Registry(pulumi.ComponentResource):
    repository_url: pulumi.Output[str]

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:registry:Registry", name, None, opts)
        # Every image ever deployed to prod must stay pullable, and its key decryptable.
        keep = pulumi.ResourceOptions(parent=self, protect=args.protect, retain_on_delete=args.retain_on_delete)
        key = aws.kms.Key(f"{name}-key", description=f"mlops-platform {args.environment}: ECR images",
                          enable_key_rotation=True, deletion_window_in_days=30, opts=keep)
        repository = aws.ecr.Repository(
            f"{name}-workloads",
            name=args.registry.repository,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "KMS", "kms_key": key.arn}],
            force_delete=False,
            opts=keep,
        )
        aws.ecr.LifecyclePolicy(f"{name}-lifecycle", repository=repository.name,
                                policy=lifecycle_policy(args.registry.untagged_days),
                                opts=pulumi.ResourceOptions(parent=self))
        self.repository_url = repository.repository_url
        self.register_outputs({"repository_url": self.repository_url})

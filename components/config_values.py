"""Value types of the stack file: each checks one kind of value and says what is allowed.

`components/config.py` builds the environment model from these, so every memory field
uses the same Kubernetes-quantity rule, every schedule the same cron rule, every image the
same reference rule. A check raises `ValueError("<what is wrong>; <what is allowed>")`; the
message follows the key and the value in the one-line error (`config_errors.py`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator

# --- names and the names derived from them -----------------------------------------------

# The longest derived name must fit its Kubernetes or AWS limit, so each name's maximum is
# the limit minus what the platform adds (jobs.py, serving.py, database.py, cluster.py).
CRONJOB_NAME_MAX = 52  # the CronJob controller appends 11 characters to name its Jobs (<= 63)
DNS_LABEL_MAX = 63  # Services, namespaces, label values
RDS_PREFIX_MAX = 37  # identifierPrefix: the provider appends a 26-character unique suffix (<= 63)
AUTONAME_SUFFIX = 8  # Pulumi auto-names AWS resources `<name>-<7 hex>`
TRAINING_NAME_MAX = CRONJOB_NAME_MAX - len("train--select")  # CronJob train-<name>-select
ENDPOINT_NAME_MAX = CRONJOB_NAME_MAX - len("monitor-")  # CronJob monitor-<name>
POOL_NAME_MAX = DNS_LABEL_MAX - len("cluster-") - AUTONAME_SUFFIX  # EKS node group cluster-<pool>-xxxxxxx
ENV_NAME_MAX = DNS_LABEL_MAX - len("mlops-")  # namespace mlops-<name>
ENV_NAME_MAX_WITH_RDS = RDS_PREFIX_MAX - len("mlops--")  # RDS identifier prefix mlops-<name>-
ENV_NAME_MAX_WITH_MINIO = DNS_LABEL_MAX - len("mlops--artifacts")  # cloud none: bucket mlops-<name>-artifacts
# The node group resources use `<component>-system`: a training pool named so would collide.
RESERVED_POOL_NAMES = frozenset({"system"})

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def dns_label(max_len: int, because: str) -> Callable[[str], str]:
    """A lowercase RFC 1123 label of at most `max_len` characters (`because` says why that many)."""

    def check(value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError("is not a DNS label: use lowercase letters, digits and '-', starting with a "
                             f"letter and ending with a letter or digit, at most {max_len} characters")
        if len(value) > max_len:
            raise ValueError(f"is {len(value)} characters; at most {max_len} fit because {because}")
        return value

    return check


EnvName = Annotated[str, AfterValidator(dns_label(ENV_NAME_MAX, "the namespace mlops-<name> is a DNS label"))]
PoolName = Annotated[str, AfterValidator(dns_label(POOL_NAME_MAX, "EKS names node groups cluster-<pool>-<7 hex>"))]
EndpointName = Annotated[str, AfterValidator(dns_label(
    ENDPOINT_NAME_MAX, "the CronJob monitor-<name> must fit Kubernetes' 52-character CronJob limit"))]
TrainingName = Annotated[str, AfterValidator(dns_label(
    TRAINING_NAME_MAX, "the CronJob train-<name>-select must fit Kubernetes' 52-character CronJob limit"))]


def unique_names(key: str, names: list[str]) -> None:
    """Names become resource names: a repeat would collide (`endpoints[1].name: 'churn' is ...`)."""
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"{key}[{i}].name: {name!r} is already used by {key}[{names.index(name)}]; "
                             "names must be unique")


def only_in_mode(section: BaseModel, mode: str, fields: tuple[str, ...]) -> None:
    """A key the section's mode ignores is an error, not a silent no-op."""
    current = getattr(section, "mode", None)
    for field in fields:
        if field in section.model_fields_set and current != mode:
            alias = type(section).model_fields[field].alias or field
            raise ValueError(f"{alias}: is only used with mode '{mode}', not '{current}'; remove it or change mode")


# --- numbers written as text -------------------------------------------------------------


QUOTE_IT = "write it in quotes so it stays text (YAML reads 1.30 as the number 1.3)"


def _scalar_text(value: Any) -> Any:
    """Ints become text (`cpu: 2`); a float is refused where YAML would have eaten a digit (`1.30`)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f"was read by YAML as the number {value!r}; {QUOTE_IT}")
    return value


VersionText = Annotated[str, BeforeValidator(_scalar_text)]


def postgres_version(value: str) -> str:
    """RDS PostgreSQL majors with standard support; the parameter group family is postgres<major>."""
    if not re.fullmatch(r"1[4-8](\.[0-9]{1,2})?", value):
        raise ValueError("is not an RDS PostgreSQL version in standard support; use a major from 14 to 18, "
                         "e.g. \"16\" or \"16.4\"")
    return value


PostgresVersion = Annotated[str, BeforeValidator(_scalar_text), AfterValidator(postgres_version)]

# Kubernetes minors Amazon EKS has released (its version calendar, 2026-12). Which of them a cluster
# may still run (end of standard/extended support) is the EKS version table's decision; this refuses
# versions that do not exist, such as 1.99.
EKS_KUBERNETES_VERSIONS = tuple(f"1.{minor}" for minor in range(23, 37))


def kubernetes_version(value: str) -> str:
    if value not in EKS_KUBERNETES_VERSIONS:
        raise ValueError(f"is not a Kubernetes version EKS offers; use one of {EKS_KUBERNETES_VERSIONS[0]} "
                         f"to {EKS_KUBERNETES_VERSIONS[-1]}, quoted (\"1.31\")")
    return value


KubernetesVersion = Annotated[str, BeforeValidator(_scalar_text), AfterValidator(kubernetes_version)]

# --- Kubernetes quantities -----------------------------------------------------------------

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_CPU = re.compile(r"^[0-9]+(?:\.[0-9]+)?m?$")
_FACTORS: dict[str, Decimal | int] = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}


def _quantity(value: Any) -> tuple[str, Decimal | None]:
    text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    match = _QUANTITY.match(text)
    if not match:
        return text, None
    try:
        return text, Decimal(match.group(1)) * _FACTORS[match.group(2) or ""]
    except InvalidOperation:
        return text, None


def cpu_quantity(value: Any) -> str:
    """Cores (`2`, `0.5`) or millicores (`500m`), from 10m to 192 cores."""
    text, amount = _quantity(value)
    allowed = "cores (\"2\", \"0.5\") or millicores (\"500m\"), from 10m to 192"
    if amount is None or not _CPU.match(text):
        raise ValueError(f"is not a CPU amount; use {allowed}")
    if not Decimal("0.01") <= amount <= 192:
        raise ValueError(f"is outside the CPU range; use {allowed}")
    return text


def byte_quantity(low: str, high: str) -> Callable[[Any], str]:
    """Bytes with a Kubernetes suffix (`512Mi`, `2Gi`) between `low` and `high`."""
    low_bytes, high_bytes = _quantity(low)[1], _quantity(high)[1]

    def check(value: Any) -> str:
        text, amount = _quantity(value)
        allowed = f"a whole number with Ki, Mi, Gi or Ti (e.g. 512Mi, 2Gi), from {low} to {high}"
        if text.endswith("m") and amount is not None:
            raise ValueError(f"is {amount.normalize():f} bytes ('m' means milli); use {allowed}")
        if amount is None or amount != amount.to_integral_value():
            raise ValueError(f"is not a size in bytes; use {allowed}")
        if not low_bytes <= amount <= high_bytes:  # type: ignore[operator]
            raise ValueError(f"is outside the allowed size; use {allowed}")
        return text

    return check


Cpu = Annotated[str, BeforeValidator(cpu_quantity)]
Memory = Annotated[str, BeforeValidator(byte_quantity("32Mi", "1Ti"))]
VolumeSize = Annotated[str, BeforeValidator(byte_quantity("1Gi", "16Ti"))]

# --- cron ------------------------------------------------------------------------------------

_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
# name, lowest, highest, names accepted for numbers (Kubernetes uses robfig/cron: weekdays 0-6).
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day-of-month", 1, 31, {}),
                ("month", 1, 12, _MONTHS), ("day-of-week", 0, 6, _DAYS))
_CRON_ALLOWED = "five fields 'minute hour day-of-month month day-of-week' (e.g. '0 * * * *') or " + \
    ", ".join(_CRON_MACROS)


def cron_schedule(value: str) -> str:
    """A schedule Kubernetes CronJobs accept: five fields within their ranges, or a macro."""
    text = value.strip()
    if text.startswith("@"):
        if text not in _CRON_MACROS:
            raise ValueError(f"is not a cron macro; use {_CRON_ALLOWED}")
        return text
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"has {len(fields)} fields; use {_CRON_ALLOWED}")
    for field, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in field.split(","):
            problem = _cron_item_problem(item, low, high, names, name in ("day-of-month", "day-of-week"))
            if problem:
                raise ValueError(f"{name} {item!r} {problem} (allowed {low}-{high}); use {_CRON_ALLOWED}")
    return text


def _cron_item_problem(item: str, low: int, high: int, names: dict[str, int], question: bool) -> str | None:
    span, _, step = item.partition("/")
    if step and not (step.isdigit() and 1 <= int(step) <= high):
        return "has a step that is not a number from 1"
    if span == "*" or (span == "?" and question and not step):
        return None
    first, _, last = span.partition("-")
    bounds = [names.get(p.lower(), int(p) if p.isdigit() else None) for p in (first, last or first)]
    if bounds[0] is None or bounds[1] is None:
        return "is not a number, range or list"
    if not low <= bounds[0] <= bounds[1] <= high:
        return "is out of range"
    return None


CronSchedule = Annotated[str, AfterValidator(cron_schedule)]

# --- AWS identifiers -------------------------------------------------------------------------

_INSTANCE_TYPE = re.compile(
    r"^(?P<family>[a-z]+)(?P<gen>[0-9]+)(?P<attrs>[a-z0-9-]*)\."
    r"(?P<size>nano|micro|small|medium|large|[0-9]*xlarge|metal(-[0-9]+xl)?)$")


def instance_type(value: str) -> str:
    if not _INSTANCE_TYPE.match(value):
        raise ValueError("is not an EC2 instance type; write family.size, e.g. m6i.large or g5.xlarge")
    if is_graviton(value):
        raise ValueError("is an Arm (Graviton) type; the node AMIs are x86_64: use e.g. m6i or c6a")
    return value


def is_graviton(value: str) -> bool:
    """`c6g`, `m7gd`, `g5g`, `is4gen`: a `g` among the attributes after the generation."""
    match = _INSTANCE_TYPE.match(value)
    return bool(match) and "g" in match.group("attrs").split("-")[0]  # type: ignore[union-attr]


def is_nvidia_gpu(value: str) -> bool:
    """g4dn, g5, g6, gr6, p4d, p5...: the families the NVIDIA AMI serves (g4ad has AMD GPUs)."""
    match = _INSTANCE_TYPE.match(value)
    if not match or match.group("family") not in ("g", "gr", "p"):
        return False
    return "a" not in match.group("attrs").split("-")[0]


def db_instance_class(value: str) -> str:
    if not (value.startswith("db.") and _INSTANCE_TYPE.match(value[3:])):
        raise ValueError("is not an RDS instance class; classes start with 'db.', e.g. db.t4g.medium")
    return value


def aws_id(prefix: str, example: str) -> Callable[[str], str]:
    pattern = re.compile(rf"^{prefix}-([0-9a-f]{{8}}|[0-9a-f]{{17}})$")

    def check(value: str) -> str:
        if pattern.match(value):
            return value
        try:
            ipaddress.ip_network(value, strict=False)
            hint = f"is a CIDR block; give the {prefix} id"
        except ValueError:
            hint = f"is not a {prefix} id; give one"
        raise ValueError(f"{hint} such as {example}")

    return check


InstanceType = Annotated[str, AfterValidator(instance_type)]
DbInstanceClass = Annotated[str, AfterValidator(db_instance_class)]
SubnetId = Annotated[str, AfterValidator(aws_id("subnet", "subnet-0123456789abcdef0"))]
VpcId = Annotated[str, AfterValidator(aws_id("vpc", "vpc-0123456789abcdef0"))]

# --- tags and labels -----------------------------------------------------------------------

# Set on every resource by the platform (EnvironmentConfig.resource_tags): extra tags can't.
PLATFORM_TAGS = frozenset({"owner", "cost-center", "environment", "managed-by", "project"})
_TAG_TEXT = re.compile(r"^[\w .:/=+\-@]*$")


def aws_tag_value(value: str) -> str:
    if len(value) > 256 or not _TAG_TEXT.match(value):
        raise ValueError("is not an AWS tag value: at most 256 letters, digits, spaces and _.:/=+-@")
    return value


def aws_tags(tags: dict[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        if key.lower().startswith("aws:"):
            raise ValueError(f"key {key!r} starts with 'aws:', which AWS reserves; choose another key")
        if key in PLATFORM_TAGS:
            raise ValueError(f"key {key!r} is set by the platform; allowed: any key except {sorted(PLATFORM_TAGS)}")
        if not key or len(key) > 128 or not _TAG_TEXT.match(key):
            raise ValueError(f"key {key!r} is not an AWS tag key: 1-128 letters, digits, spaces and _.:/=+-@")
        try:
            aws_tag_value(value)
        except ValueError as exc:
            raise ValueError(f"value {value!r} of {key!r} {exc}") from None
    return tags


_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# Node labels also become cluster-autoscaler tags `k8s.io/cluster-autoscaler/node-template/label/<key>`
# (AWS tag keys are <= 128 characters).
NODE_LABEL_KEY_MAX = 128 - len("k8s.io/cluster-autoscaler/node-template/label/")
PLATFORM_LABELS = frozenset({"mlops-platform/pool", "mlops-platform/node-role", "nvidia.com/gpu.present"})


def node_labels(labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes label keys and values, none reserved by Kubernetes or set by the platform."""
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if not _LABEL_NAME.match(name) or (prefix and not _LABEL_PREFIX.match(prefix)) \
                or len(key) > NODE_LABEL_KEY_MAX:
            raise ValueError(f"key {key!r} is not a label key: [prefix/]name, name <= 63 characters "
                             f"of letters, digits, '-_.', {NODE_LABEL_KEY_MAX} characters in all")
        if prefix.endswith(("kubernetes.io", "k8s.io")) or key in PLATFORM_LABELS:
            raise ValueError(f"key {key!r} is reserved (kubernetes.io, k8s.io and {sorted(PLATFORM_LABELS)})")
        if not isinstance(value, str) or not (value == "" or _LABEL_NAME.match(value)):
            raise ValueError(f"value {value!r} of {key!r} is not a label value: <= 63 letters, digits, '-_.'")
    return labels


AwsTags = Annotated[dict[str, str], AfterValidator(aws_tags)]
TagValue = Annotated[str, AfterValidator(aws_tag_value)]
NodeLabels = Annotated[dict[str, str], AfterValidator(node_labels)]

# --- hosts, URLs, images --------------------------------------------------------------------

_HOST_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def host_name(value: str) -> str:
    """A DNS name for an Ingress rule: lowercase, dotted, no scheme, port, path or IP address."""
    allowed = "give only the host name, e.g. mlflow.example.com"
    if "://" in value or "/" in value:
        raise ValueError(f"is a URL; {allowed}")
    if ":" in value:
        raise ValueError(f"has a port; {allowed}")
    if re.fullmatch(r"[0-9.]+", value):
        raise ValueError(f"is an IP address; Ingress rules need a DNS name: {allowed}")
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"is not a DNS name (lowercase labels of letters, digits, '-', dotted); {allowed}")
    return value


def webhook_url(value: str) -> str:
    """https, or http to a host inside the cluster (`*.svc`, `*.cluster.local`)."""
    parts = urlsplit(value)
    allowed = "give a full URL such as https://hooks.example.com/alerts (http only for *.svc hosts)"
    if any(c.isspace() for c in value) or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"is not a URL; {allowed}")
    in_cluster = parts.hostname.endswith((".svc", ".cluster.local"))
    if parts.scheme == "http" and not in_cluster:
        raise ValueError(f"sends alerts in clear text; {allowed}")
    return value


_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
_REPOSITORY = re.compile(rf"^{_REGISTRY}{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def image_repository(value: str) -> str:
    if not _REPOSITORY.match(value):
        raise ValueError("is not an image repository: [registry/]path in lowercase, no spaces or tag, "
                         "e.g. ghcr.io/mlops-platform/workloads")
    return value


def image_reference(value: str) -> str:
    """A pinned image: `repository:tag` or `repository@sha256:...`, never `latest`."""
    allowed = "use repository:tag or repository@sha256:<digest>, e.g. postgres:16.4-alpine"
    name, _, digest = value.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    repository, tag = (name[:colon], name[colon + 1:]) if colon > slash else (name, "")
    if not _REPOSITORY.match(repository) or (tag and not IMAGE_TAG.match(tag)) \
            or (digest and not _DIGEST.match(digest)):
        raise ValueError(f"is not an image reference; {allowed}")
    if not tag and not digest:
        raise ValueError(f"has no tag, so it means 'latest'; pin it: {allowed}")
    if tag == "latest" and not digest:
        raise ValueError(f"'latest' is not allowed: pin a version so rollouts are reproducible; {allowed}")
    return value


HostName = Annotated[str, AfterValidator(host_name)]
WebhookUrl = Annotated[str, AfterValidator(webhook_url)]
ImageRepository = Annotated[str, AfterValidator(image_repository)]
ImageReference = Annotated[str, AfterValidator(image_reference)]

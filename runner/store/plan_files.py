"""Plan files and finished run logs, where every worker that may apply can reach them.

Terraform writes a plan file into the checkout that planned it, on one machine. With
one machine that is enough (`LocalPlanStore`, the default: nothing leaves the data
dir). With several workers, the worker that applies a pull request is often not the
one that planned it, so plans are uploaded to object storage (`S3PlanStore`,
`GITOPS_PLAN_STORE=s3://bucket/prefix`) and fetched into the applying worker's own
checkout. Objects are named by the sha256 of the plan file, the checksum the store's
`plans` table already records: a fetched file whose bytes do not hash to its name is
deleted before Terraform could read it (`PlanFileMismatch`), so a replaced object in
the bucket can never be applied.

Run logs are uploaded when the run ends and read back by the API when the machine
that served the request does not have the file. Plan objects that can no longer be
applied (their plan was discarded: the PR closed, a newer push, applied once) are
deleted after a retention period; logs are kept (the audit trail; expire them with a
bucket lifecycle rule if needed).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from runner.settings import SettingsError
from runner.terraform.planfile import plan_checksum

log = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_PLAN_SUFFIX = ".tfplan"
# Retention is enforced at most this often per process, after an upload.
_EXPIRE_EVERY_S = 3600.0


# The checksums of every plan that may still be applied (read from the `plans` table).
LiveChecksums = Callable[[], Collection[str]]


class PlanStoreError(Exception):
    """The plan store is misconfigured or unreachable; the message says which."""


class PlanNotStored(PlanStoreError):
    """No object holds a plan with this checksum (never uploaded, or expired)."""


class PlanFileMismatch(PlanStoreError):
    """The stored object's bytes do not hash to the checksum recorded at plan time."""


class PlanStore(Protocol):
    """Where plan files and finished run logs are kept beyond the machine that made them."""

    def keep_plan(self, path: Path, checksum: str) -> None:
        """Keep the plan file at `path`, whose sha256 is `checksum`."""
        ...

    def fetch_plan(self, checksum: str, destination: Path) -> Path:
        """Write the plan with this checksum to `destination`, verified byte for byte.

        Raises `PlanNotStored` or `PlanFileMismatch`; on either, nothing is left at
        `destination`.
        """
        ...

    def keep_log(self, path: Path) -> None:
        """Keep a finished run's log (best effort: a failure is logged, never raised)."""
        ...

    def read_log(self, name: str) -> bytes | None:
        """The log kept under this file name, or None."""
        ...

    def expire(self, live: LiveChecksums, now: datetime | None = None) -> int:
        """Delete plans older than the retention whose checksum is not in `live()`."""
        ...


class LocalPlanStore:
    """One machine: plan files stay where Terraform wrote them, logs under the data dir."""

    def keep_plan(self, path: Path, checksum: str) -> None:
        return None

    def fetch_plan(self, checksum: str, destination: Path) -> Path:
        raise PlanNotStored(f"plan {checksum[:12]} is only kept on the machine that made it")

    def keep_log(self, path: Path) -> None:
        return None

    def read_log(self, name: str) -> bytes | None:
        return None

    def expire(self, live: LiveChecksums, now: datetime | None = None) -> int:
        return 0


@dataclass(frozen=True)
class S3Location:
    """`s3://bucket/prefix`, parsed once."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise SettingsError(
                f"GITOPS_PLAN_STORE={url!r}: expected s3://bucket/prefix, or empty for the data dir"
            )
        return cls(parts.netloc, parts.path.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)


@dataclass(frozen=True)
class Encryption:
    """Server-side encryption of every uploaded object: none, SSE-S3 or SSE-KMS."""

    algorithm: str = ""  # "", "AES256" or "aws:kms"
    kms_key_id: str | None = None

    def __post_init__(self) -> None:
        if self.kms_key_id and self.algorithm != "aws:kms":
            raise SettingsError("GITOPS_S3_KMS_KEY_ID needs GITOPS_S3_SSE=aws:kms")

    def upload_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.algorithm:
            args["ServerSideEncryption"] = self.algorithm
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args


@dataclass
class S3PlanStore:
    """Plans under `<prefix>/plans/<sha256>.tfplan`, logs under `<prefix>/logs/<name>`."""

    client: Any  # a boto3 S3 client
    location: S3Location
    encryption: Encryption = field(default_factory=Encryption)
    retention: timedelta = timedelta(days=14)
    # What expiry must keep (plans still appliable); given: retention is enforced after
    # uploads, at most hourly per process. None: only when `expire` is called.
    liveness: LiveChecksums | None = None
    _next_expiry: float = field(default=0.0, repr=False)  # time.monotonic()
    _expiry_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def keep_plan(self, path: Path, checksum: str) -> None:
        _check_checksum(checksum)
        extra = {"Metadata": {"sha256": checksum}, **self.encryption.upload_args()}
        self._upload(path, self._plan_key(checksum), extra)
        self._expire_if_due()

    def fetch_plan(self, checksum: str, destination: Path) -> Path:
        _check_checksum(checksum)
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the destination, renamed only once verified: Terraform never
        # sees a partial or foreign file under the plan's name.
        handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".fetch-")
        try:
            with os.fdopen(handle, "wb") as file:
                self._download(self._plan_key(checksum), file)
            if plan_checksum(Path(temporary)) != checksum:
                raise PlanFileMismatch(
                    f"the stored plan {checksum[:12]} does not match its checksum"
                )
            os.replace(temporary, destination)
        finally:
            Path(temporary).unlink(missing_ok=True)
        return destination

    def keep_log(self, path: Path) -> None:
        try:
            self._upload(path, self.location.key("logs", path.name), self.encryption.upload_args())
        except (PlanStoreError, OSError) as error:
            log.warning("run log %s not uploaded to the plan store: %s", path.name, error)

    def read_log(self, name: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        if "/" in name or name in ("", ".", ".."):
            return None
        key = self.location.key("logs", name)
        try:
            response = self.client.get_object(Bucket=self.location.bucket, Key=key)
            return bytes(response["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None
        except (BotoCoreError, ClientError) as error:  # the API answers 404, not 500
            log.warning("run log %s not readable from the plan store: %s", name, error)
            return None

    def expire(self, live: LiveChecksums, now: datetime | None = None) -> int:
        cutoff = (now or datetime.now(UTC)) - self.retention
        old = [key for key, modified in self._plan_objects() if modified <= cutoff]
        needed = set(live()) if old else set()
        expired = [key for key in old if _checksum_of(key) not in needed]
        for batch in _batches(expired, 1000):  # DeleteObjects takes at most 1000 keys
            self.client.delete_objects(
                Bucket=self.location.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
        return len(expired)

    def _plan_key(self, checksum: str) -> str:
        return self.location.key("plans", checksum + _PLAN_SUFFIX)

    def _plan_objects(self) -> Iterator[tuple[str, datetime]]:
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self.location.key("plans") + "/"
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                if _SHA256_HEX.fullmatch(_checksum_of(item["Key"])):
                    yield item["Key"], item["LastModified"]

    def _upload(self, path: Path, key: str, extra: dict[str, Any]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(path), self.location.bucket, key, ExtraArgs=extra)
        except (BotoCoreError, ClientError) as error:
            raise PlanStoreError(f"upload to s3://{self.location.bucket}/{key}: {error}") from error

    def _download(self, key: str, file: Any) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.download_fileobj(self.location.bucket, key, file)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise PlanNotStored(f"no object s3://{self.location.bucket}/{key}") from error
            raise PlanStoreError(f"download s3://{self.location.bucket}/{key}: {error}") from error
        except BotoCoreError as error:
            raise PlanStoreError(f"download s3://{self.location.bucket}/{key}: {error}") from error

    def _expire_if_due(self) -> None:
        if self.liveness is None:
            return
        with self._expiry_lock:
            if time.monotonic() < self._next_expiry:
                return
            self._next_expiry = time.monotonic() + _EXPIRE_EVERY_S
        try:
            self.expire(self.liveness)
        except Exception:  # retention is housekeeping: a failure must not fail the plan
            log.exception("expiring old plan objects failed")


def build_plan_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    encryption: Encryption | None = None,
    retention_days: float = 14,
    liveness: LiveChecksums | None = None,
) -> PlanStore:
    """The store `url` names: "" → `LocalPlanStore`, `s3://bucket/prefix` → `S3PlanStore`.

    boto3 is imported only here, when S3 is configured. Credentials come from boto3's
    usual chain (AWS_* variables, a profile, the instance or pod role).
    """
    if not url:
        return LocalPlanStore()
    import boto3
    from botocore.config import Config

    location = S3Location.parse(url)
    # Path-style addressing: MinIO and other S3-compatible services need it.
    config = Config(s3={"addressing_style": "path"}) if endpoint_url else None
    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    return S3PlanStore(
        client,
        location,
        encryption or Encryption(),
        timedelta(days=retention_days),
        liveness,
    )


def _check_checksum(checksum: str) -> None:
    if not _SHA256_HEX.fullmatch(checksum):
        raise ValueError("a plan is named by the lowercase hex sha256 of its file")


def _checksum_of(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(_PLAN_SUFFIX)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

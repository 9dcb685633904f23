"""Capability links for the review page: HMAC tokens bound to one question, its digest and its expiry.

A token is `<expiry unix seconds>.<base64url HMAC-SHA256>` over the question id,
the arguments digest and the expiry. It is never stored: links are minted when a
stream is written or replayed, and checked in constant time by the review page.
A token is used up by the POST that decides its question (a question is decided
once), so a reused token finds the question answered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

__all__ = ["ReviewLinks", "load_review_secret", "mint", "verify"]

SECRET_FILE = "review_secret"


def _mac(secret: bytes, question_id: str, digest: str, expiry: int) -> str:
    message = f"bmo-review\n{question_id}\n{digest}\n{expiry}".encode()
    raw = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def mint(secret: bytes, question_id: str, digest: str, expires_at: datetime) -> str:
    expiry = int(expires_at.timestamp())
    return f"{expiry}.{_mac(secret, question_id, digest, expiry)}"


def verify(secret: bytes, token: str, question_id: str, digest: str, now: datetime) -> str | None:
    """None when the token is good for this question and digest now; else why not ("invalid", "expired")."""
    expiry_text, _, mac = token.partition(".")
    if not expiry_text.isdigit() or not mac or len(token) > 200:
        return "invalid"
    expiry = int(expiry_text)
    expected = _mac(secret, question_id, digest, expiry)
    if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
        return "invalid"
    if now.timestamp() >= expiry:
        return "expired"
    return None


@dataclass(frozen=True, slots=True)
class ReviewLinks:
    """Builds the two links of a question block; without a public URL there are none."""

    public_url: str
    secret: bytes

    def for_question(self, question_id: str, digest: str, expires_at: datetime) -> tuple[str, str] | None:
        if not self.public_url:
            return None
        token = quote(mint(self.secret, question_id, digest, expires_at), safe="")
        page = f"{self.public_url.rstrip('/')}/review/{question_id}?token={token}"
        return page, page + "&action=deny"


def load_review_secret(data_dir: Path, configured: str | None) -> bytes:
    """The configured secret (several instances can share it), else one kept under the data dir."""
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    path.touch(mode=0o600)
    path.write_text(value.hex())
    return value

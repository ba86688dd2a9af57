"""Hiding credentials wherever storage options or URLs are shown.

``storage_options`` may hold object-store credentials (``key``, ``secret``,
``token``, an Azure ``connection_string`` or SAS token, a GCS service-account
mapping …). Everything that shows options — log records, error messages,
summaries — goes through :func:`redact` or :func:`format_options`; the CLI
also passes its messages through :func:`scrub`, which replaces the secret
values themselves wherever an underlying library quoted one.

A key is secret-looking when its name contains, in any case, one of
``key``, ``secret``, ``token``, ``passw``, ``credential``, ``session``,
``sas``, ``auth``, ``private``, ``signature`` or ``connection_string``; its
whole value is hidden, nested mappings included. Hiding too much is
harmless, hiding too little is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

#: what a hidden value is shown as
HIDDEN = "***"

_SECRET_KEY = re.compile(
    r"key|secret|token|passw|credential|session|sas|auth|private|signature"
    r"|connection_string",
    re.IGNORECASE,
)
#: ``scheme://user:password@host``: the password part of a URL
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/@:\s]*:)[^/@\s]+@")
#: values shorter than this are not scrubbed from text (they would hit
#: ordinary words and numbers); they are still hidden by :func:`redact`
_MIN_SCRUB = 4


def is_secret_key(key: Any) -> bool:
    """Whether a storage-option key looks like it holds a secret.

    Examples
    --------
    >>> is_secret_key("aws_secret_access_key"), is_secret_key("endpoint_url")
    (True, False)
    """
    return bool(_SECRET_KEY.search(str(key)))


def redact_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` hidden.

    Examples
    --------
    >>> redact_url("ftp://me:hunter2@host/data")
    'ftp://me:***@host/data'
    """
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{HIDDEN}@", text)


def has_url_password(text: str) -> bool:
    """Whether ``text`` holds a URL with a password in it."""
    return bool(_URL_PASSWORD.search(text))


def redact(options: Mapping | None) -> dict:
    """A copy of ``options`` with the values of secret-looking keys hidden.

    Nested mappings and lists are redacted too; a secret-looking key hides
    its whole value, even a mapping; passwords in URLs are hidden wherever
    they appear.

    Examples
    --------
    >>> redact({"anon": False, "secret": "abc", "client_kwargs": {"aws_session_token": "t"}})
    {'anon': False, 'secret': '***', 'client_kwargs': {'aws_session_token': '***'}}
    """
    return {str(k): _redact_value(k, v) for k, v in dict(options or {}).items()}


def _redact_value(key: Any, value: Any) -> Any:
    if is_secret_key(key):
        return HIDDEN
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def format_options(options: Mapping | None) -> str:
    """The options as text for a log line or a message, secrets hidden.

    Examples
    --------
    >>> format_options({"key": "AKIA", "endpoint_url": "http://127.0.0.1:9000"})
    "{'key': '***', 'endpoint_url': 'http://127.0.0.1:9000'}"
    """
    return repr(redact(options))


def secret_values(options: Mapping | None) -> set[str]:
    """The text of every secret in ``options`` (for :func:`scrub`).

    Values under secret-looking keys (nested ones, lists and mappings
    included, as text) and URL passwords.
    """
    found: set[str] = set()

    def visit(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(v, secret or is_secret_key(k))
        elif isinstance(value, list | tuple | set):
            for v in value:
                visit(v, secret)
        elif value is not None and not isinstance(value, bool):
            text = str(value)
            if secret:
                found.add(text)
            for match in _URL_PASSWORD.finditer(text):
                found.add(match.group(0)[len(match["head"]) : -1])

    visit(dict(options or {}), False)
    return {s for s in found if len(s) >= _MIN_SCRUB}


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` and every URL password replaced.

    Examples
    --------
    >>> scrub("denied for key S3CR3T-value", {"S3CR3T-value"})
    'denied for key ***'
    """
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_SCRUB:
            text = text.replace(secret, HIDDEN)
    return redact_url(text)

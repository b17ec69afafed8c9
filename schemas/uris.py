"""Which ``image_uri`` values the pipeline may read, and which a web page may show. Stdlib only.

A listing feed is untrusted input: an ``image_uri`` of ``/etc/passwd``, ``../../secrets`` or an
internal ``http://`` URL must not be read, and ``javascript:`` must never reach a page. The embed
stage asks ``check_image_uri`` before it opens anything (config ``validation.image_uri_*``); the
review app asks ``renderable_image_src`` before it writes an ``<img src>``.

* A bare path counts as scheme ``file``. ``file:`` URIs and bare paths are allowed only when
  ``file`` is an allowed scheme and the path, resolved with ``os.path.realpath`` (so ``..`` and
  symlinks cannot escape), lies inside one of the roots (each resolved the same way; a relative
  root is relative to the working directory). ``local_image_path`` gives that resolved path, which
  is what the embed stage opens, so the file checked is the file read.
* A remote URL (``https``, ``http``, ``s3``, ...) is allowed only when its scheme is listed and its
  host (lower-cased; the bucket for ``s3``) is one of the hosts, or a subdomain of one given with a
  leading dot: ``.example.com`` allows ``img.example.com``, not ``example.com`` itself.
* Everything else is refused: an empty uri, whitespace or control characters anywhere, backslashes,
  fsspec chains (``::``), user info in a URL (``user@host``), ``data:``, ``javascript:`` and any
  scheme not listed (``c:\\images\\a.jpg`` is the unknown scheme ``c``).

Example:
    >>> check_image_uri("javascript:alert(1)", schemes=("file", "https"), roots=(), hosts=())
    "image_uri_not_allowed: scheme 'javascript' is not in validation.image_uri_schemes"
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from urllib.parse import urlsplit

PREFIX = "image_uri_not_allowed: "

# RFC 3986 scheme: a letter, then letters, digits, "+", "-" or "."
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# raster types a browser decodes without running anything; SVG is left out: it can carry script
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+={0,2}$")
_WEB_SCHEMES = ("http", "https")
# characters that would end or break out of an HTML attribute even when a page forgets to escape
_HTML_BREAKERS = frozenset("\"'<>`")


def check_image_uri(uri: str, *, schemes: Sequence[str], roots: Sequence[str], hosts: Sequence[str]) -> str | None:
    """Checks whether the embed stage may read ``uri``.

    Args:
        uri: the listing's ``image_uri`` (a bare path or a URL).
        schemes: allowed schemes, lower-case (``file`` covers bare paths).
        roots: local folders whose files may be read.
        hosts: allowed remote hosts; ``.example.com`` allows its subdomains.

    Returns:
        None when the uri may be read, else a reason starting with ``image_uri_not_allowed: ``.
    """
    problem = _malformed(uri)
    if problem:
        return PREFIX + problem
    scheme = _scheme(uri)
    if scheme not in {s.lower() for s in schemes}:
        return PREFIX + f"scheme {scheme!r} is not in validation.image_uri_schemes"
    if scheme == "file":
        path = local_image_path(uri)
        if path is None:
            return PREFIX + "a file: URI must be file:///absolute/path (no host, query or fragment)"
        if not any(_is_inside(path, os.path.realpath(root)) for root in roots if root):
            return PREFIX + f"{path!r} is not inside validation.image_uri_roots"
        return None
    netloc = _netloc(uri)
    if "@" in netloc:
        return PREFIX + "user info (user@host) is not allowed in a URL"
    host = _host(uri)
    if not host:
        return PREFIX + "the URL has no host"
    if not host_allowed(host, hosts):
        return PREFIX + f"host {host!r} is not in validation.image_uri_hosts"
    return None


def local_image_path(uri: str) -> str | None:
    """Returns the realpath-resolved local file a bare path or ``file:`` URI names, else None.

    None also for a ``file:`` URI with a host (``file://server/x``), a query or a fragment, which
    are left out rather than guessed at.
    """
    if _malformed(uri):
        return None
    scheme = _scheme(uri)
    if scheme != "file":
        return None
    if _SCHEME.match(uri) is None:  # a bare path
        return os.path.realpath(uri)
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if parts.netloc or parts.query or parts.fragment or "?" in uri or "#" in uri or not parts.path:
        return None
    # No percent-decoding: fsspec does not decode either, so "%2e%2e" stays a literal name.
    return os.path.realpath(parts.path)


def host_allowed(host: str, hosts: Sequence[str]) -> bool:
    """Returns whether ``host`` is one of ``hosts`` or a subdomain of a ``.domain`` entry in it."""
    host = host.lower()
    for allowed in hosts:
        allowed = allowed.lower()
        if allowed.startswith("."):
            if host.endswith(allowed) and len(host) > len(allowed):
                return True
        elif allowed and host == allowed:
            return True
    return False


def renderable_image_src(uri: str, *, schemes: Sequence[str], hosts: Sequence[str]) -> str | None:
    """Returns ``uri`` when a browser may load it as an ``<img src>``, else None.

    Allowed: ``http`` / ``https`` URLs whose scheme is in ``schemes`` and whose host is allowed
    (see ``host_allowed``), and ``data:image/(png|jpeg|gif|webp);base64,...``. Refused: everything
    else, e.g. ``javascript:``, ``data:text/html``, SVG, file paths, relative and protocol-relative
    (``//host/x``) URLs. The page must still HTML-escape the value it writes.
    """
    if not isinstance(uri, str) or _malformed(uri) or _HTML_BREAKERS.intersection(uri):
        return None
    if _DATA_IMAGE.match(uri):
        return uri
    match = _SCHEME.match(uri)
    if match is None:  # relative, protocol-relative or a bare path
        return None
    scheme = match.group(1).lower()
    if scheme not in _WEB_SCHEMES or scheme not in {s.lower() for s in schemes}:
        return None
    if "@" in _netloc(uri) or not uri[len(scheme) + 1 :].startswith("//"):
        return None
    host = _host(uri)
    return uri if host and host_allowed(host, hosts) else None


def _malformed(uri: object) -> str | None:
    """Returns why ``uri`` is refused whatever the config says, else None."""
    if not isinstance(uri, str) or not uri:
        return "empty uri"
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in uri):
        return "whitespace or control characters in the uri"
    if "\\" in uri:
        return "backslash in the uri"
    if "::" in uri:  # fsspec would read it as a chain of filesystems
        return "'::' (an fsspec chain) in the uri"
    return None


def _scheme(uri: str) -> str:
    """Returns the uri's scheme, lower-case; ``file`` for a bare path."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else "file"


def _netloc(uri: str) -> str:
    """Returns the URL's netloc (user info, host, port); "" when it does not parse."""
    try:
        return urlsplit(uri).netloc
    except ValueError:  # e.g. an unbalanced "[" of an IPv6 host
        return ""


def _host(uri: str) -> str:
    """Returns the URL's host, lower-case, or "" when it has none or the netloc does not parse."""
    try:
        return (urlsplit(uri).hostname or "").lower()
    except ValueError:  # e.g. a bad port or bracketed host
        return ""


def _is_inside(path: str, root: str) -> bool:
    """Returns whether the resolved ``path`` is ``root`` or lies under it."""
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # one relative and one absolute, or different drives
        return False

"""Tests for schemas.uris: which image_uri values embed may read and which a page may show."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemas.uris import PREFIX, check_image_uri, host_allowed, local_image_path, renderable_image_src

SCHEMES = ("file", "https")
HOSTS = ("img.example.com", ".cdn.example.net")
PNG_DATA = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An allowed root with an image in it, a symlink out of it, and a secret next to it."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "sub" / "mug.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("secret")
    (images / "escape.png").symlink_to(tmp_path / "secret.txt")
    (images / "inside-link.png").symlink_to(images / "sub" / "mug.png")
    return images


# (uri template, allowed?, fragment of the reason); "{root}" is the allowed root
CASES = [
    ("javascript:alert(1)", False, "scheme 'javascript' is not in validation.image_uri_schemes"),
    ("JavaScript:alert(1)", False, "scheme 'javascript'"),
    ("data:text/html,<script>alert(1)</script>", False, "scheme 'data'"),
    (PNG_DATA, False, "scheme 'data'"),
    ("/etc/passwd", False, "'/etc/passwd' is not inside validation.image_uri_roots"),
    ("file:///etc/passwd", False, "is not inside validation.image_uri_roots"),
    ("{root}/../secret.txt", False, "is not inside validation.image_uri_roots"),
    ("{root}/sub/../../secret.txt", False, "is not inside"),
    ("{root}/escape.png", False, "is not inside"),  # a symlink inside the root pointing out
    ("{root}x/mug.png", False, "is not inside"),  # a sibling whose name starts like the root
    ("{root}/sub/mug.png", True, None),
    ("{root}/sub/../sub/mug.png", True, None),
    ("{root}/inside-link.png", True, None),  # a symlink that stays inside
    ("{root}/sub/missing.png", True, None),  # allowed; reading it fails later as unreadable
    ("file://{root}/sub/mug.png", True, None),
    ("file:{root}/sub/mug.png", True, None),
    ("file://localhost{root}/sub/mug.png", False, "file:///absolute/path"),
    ("file://{root}/sub/mug.png?x=1", False, "file:///absolute/path"),
    ("https://img.example.com/a/mug.jpg", True, None),
    ("HTTPS://IMG.EXAMPLE.COM/a/mug.jpg", True, None),
    ("https://img.example.com:8443/a/mug.jpg", True, None),
    ("https://evil.example.org/mug.jpg", False, "host 'evil.example.org' is not in validation.image_uri_hosts"),
    ("https://example.com/mug.jpg", False, "host 'example.com'"),
    ("https://img.example.com.evil.org/mug.jpg", False, "host 'img.example.com.evil.org'"),
    ("https://eu.cdn.example.net/mug.jpg", True, None),  # subdomain of ".cdn.example.net"
    ("https://a.b.cdn.example.net/mug.jpg", True, None),
    ("https://cdn.example.net/mug.jpg", False, "host 'cdn.example.net'"),  # the dot entry is subdomains only
    ("https://evilcdn.example.net/mug.jpg", False, "host 'evilcdn.example.net'"),
    ("https://img.example.com@evil.org/mug.jpg", False, "user info"),
    ("https:///mug.jpg", False, "no host"),
    ("http://img.example.com/mug.jpg", False, "scheme 'http' is not in validation.image_uri_schemes"),
    ("http://169.254.169.254/latest/meta-data", False, "scheme 'http'"),
    ("s3://bucket/mug.jpg", False, "scheme 's3'"),
    ("c:/images/mug.jpg", False, "scheme 'c' is not in"),  # a Windows drive is an unknown scheme
    ("C:\\images\\mug.jpg", False, "backslash"),
    ("https://img.example.com/a.jpg::file:///etc/passwd", False, "fsspec chain"),
    ("", False, "empty uri"),
    ("   ", False, "whitespace"),
    ("{root}/sub/mug.png\n", False, "whitespace or control characters"),
    ("https://img.example.com/a b.jpg", False, "whitespace"),
    ("{root}/sub/mug\x00.png", False, "control characters"),
    ("https://img.example.com/a\u200b.jpg", False, "control characters"),  # zero-width space (Cf)
]


@pytest.mark.parametrize(("template", "allowed", "fragment"), CASES)
def test_check_image_uri(root, template, allowed, fragment):
    uri = template.replace("{root}", str(root))
    reason = check_image_uri(uri, schemes=SCHEMES, roots=(str(root),), hosts=HOSTS)
    if allowed:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(PREFIX), reason
        assert fragment in reason, reason


def test_file_needs_the_file_scheme_even_inside_a_root(root):
    reason = check_image_uri(str(root / "sub" / "mug.png"), schemes=("https",), roots=(str(root),), hosts=HOSTS)
    assert reason == PREFIX + "scheme 'file' is not in validation.image_uri_schemes"


def test_no_roots_means_no_local_file(root):
    assert check_image_uri(str(root / "sub" / "mug.png"), schemes=SCHEMES, roots=(), hosts=HOSTS)


def test_no_hosts_means_no_remote_url():
    assert check_image_uri("https://img.example.com/a.jpg", schemes=SCHEMES, roots=(), hosts=())


def test_listed_s3_bucket_is_allowed():
    schemes = ("s3",)
    assert check_image_uri("s3://images-bucket/a.jpg", schemes=schemes, roots=(), hosts=("images-bucket",)) is None
    assert check_image_uri("s3://other-bucket/a.jpg", schemes=schemes, roots=(), hosts=("images-bucket",))


def test_relative_paths_and_roots_resolve_against_the_working_directory(root, monkeypatch):
    monkeypatch.chdir(root.parent)
    assert check_image_uri("images/sub/mug.png", schemes=SCHEMES, roots=("images",), hosts=()) is None
    assert check_image_uri("images/../secret.txt", schemes=SCHEMES, roots=("images",), hosts=())
    assert check_image_uri("javascript:alert(1)", schemes=SCHEMES, roots=(".",), hosts=())


def test_a_symlinked_root_is_resolved_too(root, tmp_path):
    link = tmp_path / "link-to-images"
    link.symlink_to(root)
    assert check_image_uri(str(root / "sub" / "mug.png"), schemes=SCHEMES, roots=(str(link),), hosts=()) is None
    assert check_image_uri(str(link / "sub" / "mug.png"), schemes=SCHEMES, roots=(str(root),), hosts=()) is None
    assert check_image_uri(str(link / "escape.png"), schemes=SCHEMES, roots=(str(link),), hosts=())


def test_local_image_path_is_the_resolved_file(root):
    expected = os.path.realpath(root / "sub" / "mug.png")
    assert local_image_path(f"file://{root}/sub/../sub/mug.png") == expected
    assert local_image_path(str(root / "inside-link.png")) == expected
    assert local_image_path("https://img.example.com/a.jpg") is None
    assert local_image_path("file://server/share/a.jpg") is None


def test_host_allowed():
    assert host_allowed("IMG.example.com", HOSTS)
    assert host_allowed("x.cdn.example.net", HOSTS)
    assert not host_allowed("cdn.example.net", HOSTS)
    assert not host_allowed("img.example.com", ())


# (uri, renderable?)
RENDER_CASES = [
    ("https://img.example.com/a/mug.jpg", True),
    ("https://eu.cdn.example.net/mug.jpg", True),
    ("https://evil.example.org/mug.jpg", False),
    ("http://img.example.com/mug.jpg", False),  # http is not in SCHEMES
    (PNG_DATA, True),
    ("data:image/jpeg;base64,/9j/4AAQSkZJRg==", True),
    ("data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=", False),
    ("data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", False),
    ("data:text/html,<script>alert(1)</script>", False),
    ("data:image/png,rawbytes", False),  # not base64
    ("javascript:alert(1)", False),
    ("JAVASCRIPT:alert(1)", False),
    ("/etc/passwd", False),
    ("file:///srv/images/mug.png", False),
    ("images/mug.png", False),
    ("//img.example.com/mug.jpg", False),  # protocol-relative
    ("https:img.example.com/mug.jpg", False),
    ("https://img.example.com@evil.org/mug.jpg", False),
    ("https://img.example.com/mug.jpg' onerror='alert(1)", False),
    ("https://img.example.com/a b.jpg", False),
    ("", False),
]


@pytest.mark.parametrize(("uri", "renderable"), RENDER_CASES)
def test_renderable_image_src(uri, renderable):
    src = renderable_image_src(uri, schemes=SCHEMES, hosts=HOSTS)
    assert src == (uri if renderable else None)


def test_renderable_http_when_listed():
    uri = "http://img.example.com/mug.jpg"
    assert renderable_image_src(uri, schemes=("http",), hosts=HOSTS) == uri
    assert renderable_image_src("s3://img.example.com/mug.jpg", schemes=("s3",), hosts=HOSTS) is None

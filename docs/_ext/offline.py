"""mkdocs hooks: the documentation site works offline, with nothing loaded from a CDN.

The Material theme loads two scripts from unpkg when a page needs them: mermaid.js (for
the ```` ```mermaid ```` pictures) and a ResizeObserver polyfill (for old browsers).
Offline, or behind a firewall, the pictures would show as their source. So the build:

1. takes each script from its npm package, at a pinned version whose tarball's sha256 is
   checked (downloaded from the npm registry once, then kept in ``build/npm/``; the
   ``CONVEYOR_NPM_CACHE`` environment variable names another folder), and adds it to the
   site under ``assets/vendor/``;
2. points Material's bundle at the local copy: the CDN address in the bundle becomes
   the copy's address under the site's root (``__md_scope``, which Material's pages
   define), so every page, at any depth, loads the copy, and only a page with a picture;
   the theme's source maps, which still hold the CDN addresses, are left out;
3. checks the built site names no CDN host (:data:`CDN_HOSTS`) in any file: a new theme
   version that loads something else from a CDN fails the build (``--strict`` or not).

Google Fonts, the theme's other remote assets, are turned off in mkdocs.yml
(``theme.font: false``: the system's fonts); the check catches them too.

mkdocs.yml loads this file (``hooks:``); tests/test_docs_site.py checks the rewriting and
the check without mkdocs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class Vendored:
    """One file of an npm package, served by the site instead of by a CDN."""

    package: str
    version: str
    sha256: str  # of the package's tarball, as the registry serves it
    member: str  # the file, inside the tarball
    site_path: str  # where the site serves it (relative to its root)
    cdn_url: str  # the address Material's bundle loads it from (replaced)

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.package}/-/{self.package}-{self.version}.tgz"


VENDORED = (
    # Material 9.x loads mermaid@11: the latest 11.x.
    Vendored(
        "mermaid",
        "11.17.2",
        "6ad2f42c3fc26bbf9e45cbb6d11898972573ea52b33a5f4ff51952899f950ffd",
        "package/dist/mermaid.min.js",
        "assets/vendor/mermaid.min.js",
        "https://unpkg.com/mermaid@11/dist/mermaid.min.js",
    ),
    Vendored(
        "resize-observer-polyfill",
        "1.5.1",
        "40fcbb21fabb32098277c04b9afce8b1f0d45a0c37ae9bd968482dc59076fa8d",
        "package/dist/ResizeObserver.js",
        "assets/vendor/resize-observer-polyfill.js",
        "https://unpkg.com/resize-observer-polyfill",
    ),
)

CDN_HOSTS = (
    "unpkg.com",
    "cdn.jsdelivr.net",
    "cdnjs.cloudflare.com",
    "esm.sh",
    "ga.jspm.io",
    "cdn.skypack.dev",
    "fonts.googleapis.com",
    "fonts.gstatic.com",
)
CDN = re.compile("|".join(re.escape(host) for host in CDN_HOSTS))
CHECKED = {".html", ".js", ".css", ".json", ".map", ".xml", ".txt", ".svg"}


class OfflineError(Exception):
    """The site would load something from a CDN, or a vendored file is not as pinned."""


def cache_dir() -> Path:
    return Path(os.environ.get("CONVEYOR_NPM_CACHE") or ROOT / "build" / "npm")


def fetched(vendored: Vendored, cache: Path) -> Path:
    """The vendored file, extracted from its tarball (downloaded if not cached; its
    sha256 checked either way)."""
    out = cache / f"{vendored.package}-{vendored.version}" / Path(vendored.member).name
    if out.is_file():
        return out
    tarball = cache / f"{vendored.package}-{vendored.version}.tgz"
    if tarball.is_file():
        data = tarball.read_bytes()
    else:
        with urllib.request.urlopen(vendored.tarball, timeout=120) as answer:
            data = answer.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != vendored.sha256:
        raise OfflineError(
            f"{vendored.tarball}: sha256 {digest}, expected {vendored.sha256} "
            f"(docs/_ext/offline.py pins it)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    tarball.write_bytes(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        member = archive.extractfile(vendored.member)
        if member is None:
            raise OfflineError(f"{vendored.tarball} has no file {vendored.member}")
        content = member.read()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_bytes(content)
    partial.replace(out)
    return out


def point_at_copies(site: Path, vendored: tuple[Vendored, ...] = VENDORED) -> None:
    """Make Material's bundle load each vendored file from the site, not from its CDN.

    The bundle names each CDN address once, as a string literal; it becomes an
    expression: the copy's address under the site's root."""
    scripts = site / "assets" / "javascripts"
    bundles = sorted(scripts.glob("bundle.*.js"))
    if not bundles:
        raise OfflineError(f"no Material bundle under {scripts}")
    for bundle in bundles:
        text = bundle.read_text(encoding="utf-8")
        for item in vendored:
            literal = f'"{item.cdn_url}"'
            if text.count(literal) != 1:
                raise OfflineError(
                    f"{bundle.name} names {item.cdn_url!r} {text.count(literal)} times, not "
                    f"once: the theme changed how it loads {item.package}; update "
                    f"docs/_ext/offline.py"
                )
            text = text.replace(literal, f'new URL("{item.site_path}",__md_scope).href')
        bundle.write_text(text, encoding="utf-8")


def drop_source_maps(site: Path) -> None:
    """Remove the theme's source maps (and the lines that name them): only a browser's
    developer tools read them, and they hold the theme's sources with the CDN addresses
    (in code and comments) that :func:`point_at_copies` replaced in the bundle."""
    for source_map in sorted((site / "assets").rglob("*.map")):
        source_map.unlink()
        script = source_map.with_suffix("")  # bundle.x.min.js.map -> bundle.x.min.js
        if script.is_file():
            text = script.read_text(encoding="utf-8")
            text = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "\n", text)
            script.write_text(text, encoding="utf-8")


def cdn_references(site: Path) -> list[str]:
    """Every file of the site that names a CDN host, with the first one it names."""
    found = []
    for path in sorted(site.rglob("*")):
        if path.suffix in CHECKED and path.is_file():
            match = CDN.search(path.read_text(encoding="utf-8", errors="replace"))
            if match is not None:
                found.append(f"{path.relative_to(site)}: {match.group()}")
    return found


# -- the mkdocs hooks ----------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    """Add the vendored files to the site."""
    from mkdocs.structure.files import File

    cache = cache_dir()
    for item in VENDORED:
        files.append(File.generated(config, item.site_path, abs_src_path=str(fetched(item, cache))))
    return files


def on_post_build(config: Any) -> None:
    """Point the bundle at the copies, then check that no file names a CDN."""
    from mkdocs.exceptions import PluginError

    site = Path(config["site_dir"])
    try:
        point_at_copies(site)
        drop_source_maps(site)
        if left := cdn_references(site):
            raise OfflineError(
                "the site still loads from a CDN (docs/_ext/offline.py): " + "; ".join(left)
            )
    except OfflineError as error:
        raise PluginError(str(error)) from error

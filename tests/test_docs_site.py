"""The documentation site loads nothing from a CDN (docs/_ext/offline.py, the mkdocs hook
that ``nox -s docs`` runs): the vendored files are checked against their pinned sha256,
Material's bundle is pointed at the copies, and a site that still names a CDN fails.

These check the hook's parts on small files; the real build (``nox -s docs``) runs them on
the real theme and fails if its bundle no longer matches."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_offline() -> ModuleType:
    name = "conveyor_docs_offline"
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs/_ext/offline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (its dataclass looks its module up)
    spec.loader.exec_module(module)
    return module


offline = load_offline()

BUNDLE = (
    'function as(){return typeof mermaid=="undefined"?_t("https://unpkg.com/mermaid@11/dist/'
    'mermaid.min.js"):$(void 0)}var Ia=H(()=>typeof ResizeObserver=="undefined"?_t("https://'
    'unpkg.com/resize-observer-polyfill"):$(void 0));\n//# sourceMappingURL=bundle.1.min.js.map\n'
)


def material_site(tmp_path: Path, bundle: str = BUNDLE) -> Path:
    scripts = tmp_path / "site" / "assets" / "javascripts"
    scripts.mkdir(parents=True)
    (scripts / "bundle.1.min.js").write_text(bundle)
    (scripts / "bundle.1.min.js.map").write_text('{"sourcesContent": ["// from unpkg.com"]}')
    (tmp_path / "site" / "index.html").write_text('<script src="assets/x.js"></script>')
    return tmp_path / "site"


def test_the_bundle_loads_the_copies_and_the_site_names_no_cdn(tmp_path: Path) -> None:
    site = material_site(tmp_path)
    assert offline.cdn_references(site) == [
        "assets/javascripts/bundle.1.min.js: unpkg.com",
        "assets/javascripts/bundle.1.min.js.map: unpkg.com",
    ]
    offline.point_at_copies(site)
    offline.drop_source_maps(site)
    bundle = (site / "assets/javascripts/bundle.1.min.js").read_text()
    assert '_t(new URL("assets/vendor/mermaid.min.js",__md_scope).href)' in bundle
    assert '_t(new URL("assets/vendor/resize-observer-polyfill.js",__md_scope).href)' in bundle
    assert "sourceMappingURL" not in bundle
    assert not (site / "assets/javascripts/bundle.1.min.js.map").exists()
    assert offline.cdn_references(site) == []


def test_a_theme_that_loads_mermaid_otherwise_fails_the_build(tmp_path: Path) -> None:
    site = material_site(tmp_path, BUNDLE.replace("mermaid@11", "mermaid@12"))
    with pytest.raises(
        offline.OfflineError, match=r"names 'https://unpkg.com/mermaid@11.* 0 times"
    ):
        offline.point_at_copies(site)


def test_a_page_that_names_a_cdn_is_found(tmp_path: Path) -> None:
    site = material_site(tmp_path)
    (site / "fonts.html").write_text('<link href="https://fonts.googleapis.com/css?f=Roboto">')
    assert "fonts.html: fonts.googleapis.com" in offline.cdn_references(site)


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_vendored_file_is_taken_only_from_its_pinned_tarball(tmp_path: Path) -> None:
    data = tarball({"package/dist/thing.min.js": b"window.thing = 1;"})
    pinned = offline.Vendored(
        "thing",
        "1.0.0",
        hashlib.sha256(data).hexdigest(),
        "package/dist/thing.min.js",
        "assets/vendor/thing.min.js",
        "https://unpkg.com/thing@1",
    )
    (tmp_path / "thing-1.0.0.tgz").write_bytes(data)  # cached: no download
    assert offline.fetched(pinned, tmp_path).read_bytes() == b"window.thing = 1;"

    other = tmp_path / "other"
    other.mkdir()
    (other / "thing-1.0.0.tgz").write_bytes(tarball({"package/dist/thing.min.js": b"evil()"}))
    with pytest.raises(offline.OfflineError, match="sha256 .* expected " + pinned.sha256):
        offline.fetched(pinned, other)
    assert not (other / "thing-1.0.0").exists()


def test_the_pins_are_npm_tarballs() -> None:
    for item in offline.VENDORED:
        assert item.tarball == (
            f"https://registry.npmjs.org/{item.package}/-/{item.package}-{item.version}.tgz"
        )
        assert len(item.sha256) == 64
        assert item.site_path.startswith("assets/vendor/")

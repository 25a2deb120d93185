"""Build the Blender extension zip: ``python scripts/build_extension.py`` -> ``dist/prd_blender-<version>.zip``.

Stages the extension (``blender_manifest.toml`` + the ``prd_blender`` package, trainer included, without
tests and caches) in a temporary folder and runs Blender's own extension tool (``blender_ext.py build``
and ``validate``). That tool is plain Python: it is taken from the ``bpy`` module when installed, or
from ``--blender-ext PATH``, or a ``blender`` executable is used (``blender --command extension build``).

The extension bundles no wheels (the Blender side needs only bpy, numpy and the standard library), so
one zip serves every platform. If ``wheels/*.whl`` exist they are listed in the staged manifest and one
zip per platform is built (``--split-platforms``); such wheels must cover cp311 and cp313.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "prd_blender"
MANIFEST = REPO / "blender_manifest.toml"
# Never shipped: byte code, Numba caches, editor leftovers.
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.nbi", "*.nbc", ".*", "*.egg-info", "tests")


def manifest_version(text: str) -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if not m:
        raise SystemExit(f"{MANIFEST}: no version")
    return m.group(1)


def package_version() -> str:
    m = re.search(r'^__version__\s*=\s*"([^"]+)"', (PACKAGE / "__init__.py").read_text(encoding="utf-8"), re.MULTILINE)
    return m.group(1) if m else ""


def find_blender_ext(explicit: str | None) -> list[str]:
    """The command prefix that runs Blender's extension CLI."""
    if explicit:
        return [sys.executable, explicit]
    spec = importlib.util.find_spec("bpy")
    if spec and spec.origin:
        # Found without importing bpy (slow, and it would start a whole Blender).
        hits = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if hits:
            return [sys.executable, str(hits[-1])]
    blender = shutil.which("blender")
    if blender:
        return [blender, "--factory-startup", "--command", "extension"]
    raise SystemExit("Blender's extension tool not found: pip install bpy, put blender on PATH, or pass --blender-ext")


def stage(dest: Path) -> list[str]:
    """Copy what the extension ships into ``dest`` (the zip's root); returns the bundled wheel paths."""
    shutil.copytree(PACKAGE, dest, ignore=IGNORE)
    wheels = sorted((REPO / "wheels").glob("*.whl"))
    text = MANIFEST.read_text(encoding="utf-8")
    if wheels:
        (dest / "wheels").mkdir()
        for w in wheels:
            shutil.copy2(w, dest / "wheels" / w.name)
        listing = "wheels = [\n" + "".join(f'  "./wheels/{w.name}",\n' for w in wheels) + "]\n\n"
        # A top-level key must come before the first [table].
        i = text.index("\n[") + 1
        text = text[:i] + listing + text[i:]
    (dest / "blender_manifest.toml").write_text(text, encoding="utf-8")
    return [w.name for w in wheels]


def run(cmd: list[str]) -> None:
    print("+", subprocess.list2cmdline(cmd), flush=True)
    r = subprocess.run(cmd)
    if r.returncode:
        raise SystemExit(f"failed (exit {r.returncode}): {subprocess.list2cmdline(cmd)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    p.add_argument("--blender-ext", help="path to Blender's bl_pkg/cli/blender_ext.py")
    args = p.parse_args(argv)

    version = manifest_version(MANIFEST.read_text(encoding="utf-8"))
    if version != package_version():
        raise SystemExit(f"version mismatch: blender_manifest.toml {version} vs prd_blender.__version__ "
                         f"{package_version()}")
    tool = find_blender_ext(args.blender_ext)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prd-ext-") as tmp:
        src = Path(tmp) / "prd_blender"
        wheels = stage(src)
        run(tool + ["validate", str(src)])
        build = tool + ["build", "--source-dir", str(src), "--output-dir", str(args.out.resolve())]
        if wheels:
            build.append("--split-platforms")  # one zip per platform, each with its own wheels
        for old in args.out.glob(f"prd_blender-{version}*.zip"):
            old.unlink()
        run(build)
    zips = sorted(args.out.glob(f"prd_blender-{version}*.zip"))
    for z in zips:
        run(tool + ["validate", str(z)])
        print(f"built {z} ({z.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

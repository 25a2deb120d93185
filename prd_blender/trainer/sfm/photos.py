"""Photo folders: find, validate and normalise the photos that structure-from-motion will see.

Decisions:
- EXIF orientation is *applied* here (``ImageOps.exif_transpose``) and the normalised copies carry no
  orientation tag. SfM and training then both see the upright pixel grid a photo viewer shows, and
  the COLMAP model we write describes exactly those files (the capture loaders ignore EXIF orientation
  for that reason: a model must match its stored pixel grid).
- Alpha is *kept* in the training copies: the trainer composites over its own background and uses the
  alpha as a mask (stage 3's progress loss). SIFT, though, only gets an RGB copy composited over white,
  so features never depend on whatever colour hides under fully transparent pixels (NeRF Synthetic
  stores black there) and silhouettes stay high-contrast against dark objects.
- One camera for the whole set: mixed image sizes or mixed EXIF camera bodies/focal lengths are refused
  (COLMAP would share one focal length between them and fail or, worse, register them wrongly).
- HEIC/HEIF/AVIF and camera RAW files are refused by name before anything runs: Pillow cannot decode
  them here, and a silent skip would leave the user wondering where views went.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..capture.types import CaptureError

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
HEIC_EXTENSIONS = (".heic", ".heif", ".avif")
RAW_EXTENSIONS = (
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".raw",
    ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mos", ".mrw", ".iiq",
)
MIN_PHOTOS = 3
_EXIF_ORIENTATION = 0x0112
_EXIF_MAKE, _EXIF_MODEL = 0x010F, 0x0110
_EXIF_IFD, _EXIF_FOCAL = 0x8769, 0x920A
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class Photo:
    """One input photo, as validated: size is after EXIF orientation."""

    path: Path
    name: str  # file name of the normalised copy (the name used in the COLMAP model)
    width: int
    height: int
    orientation: int  # EXIF orientation of the original (1 = as stored)
    has_alpha: bool
    camera: str  # "make model focal" from EXIF, "" when the file has none

    @property
    def needs_rewrite(self) -> bool:
        """False when the file can be copied byte for byte (already upright, a format the loader reads)."""
        return self.orientation != 1 or self.path.suffix.lower() not in (".jpg", ".jpeg", ".png")


def list_photos(folder: str | Path) -> list[Path]:
    """The photo files of ``folder`` (not recursive), sorted by name; refuses HEIC and RAW files by name.

    Other files (sidecars, .txt, hidden files) are ignored.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CaptureError(f"Photo folder {folder} does not exist or is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    heic = [p.name for p in files if p.suffix.lower() in HEIC_EXTENSIONS]
    raw = [p.name for p in files if p.suffix.lower() in RAW_EXTENSIONS]
    if heic:
        raise CaptureError(
            f"{folder}: cannot read HEIC/HEIF/AVIF photos ({_few(heic)}). Export them as JPEG first "
            "(on a Mac: Preview > Export, or set the iPhone camera to 'Most Compatible')."
        )
    if raw:
        raise CaptureError(
            f"{folder}: cannot read camera RAW files ({_few(raw)}). Develop them to JPEG, PNG or 16-bit TIFF "
            "first (e.g. darktable or RawTherapee), with the same settings for every photo and no lens "
            "correction crops."
        )
    return [p for p in files if p.suffix.lower() in PHOTO_EXTENSIONS]


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def probe_photo(path: Path) -> Photo:
    """Read a photo's header and EXIF, and decode it once so corrupt files fail here, naming the file."""
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            orientation = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
            width, height = im.size
            has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
            make = str(exif.get(_EXIF_MAKE, "") or "").strip("\x00 ")
            model = str(exif.get(_EXIF_MODEL, "") or "").strip("\x00 ")
            focal = exif.get_ifd(_EXIF_IFD).get(_EXIF_FOCAL)
            im.load()  # truncated or corrupt pixel data raises here, not halfway through SfM
    except UnidentifiedImageError as exc:
        raise CaptureError(f"{path}: not a readable image (unknown format or corrupt file).") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for damaged files
        raise CaptureError(f"{path}: corrupt or truncated image ({exc}).") from exc
    if orientation not in range(1, 9):
        orientation = 1  # invalid tags are ignored by viewers too
    if orientation >= 5:  # 90 degree turns swap the sides
        width, height = height, width
    camera = " ".join(s for s in (make, model, f"{float(focal):g}mm" if focal else "") if s)
    suffix = ".png" if path.suffix.lower() not in (".jpg", ".jpeg", ".png") else path.suffix
    return Photo(path, path.stem + suffix, int(width), int(height), orientation, bool(has_alpha), camera)


def validate_photos(folder: str | Path) -> list[Photo]:
    """Every photo in ``folder``, checked: enough of them, all readable, one camera (size and EXIF body)."""
    paths = list_photos(folder)
    if len(paths) < MIN_PHOTOS:
        found = f"found {len(paths)}" + (f" ({_few([p.name for p in paths])})" if paths else "")
        raise CaptureError(
            f"{folder}: structure-from-motion needs at least {MIN_PHOTOS} photos ({found}; "
            f"accepted: {', '.join(PHOTO_EXTENSIONS)}). Take 20 or more, overlapping, from all around the object."
        )
    photos = [probe_photo(p) for p in paths]
    names: dict[str, Path] = {}
    for ph in photos:
        if ph.name.lower() in names:
            raise CaptureError(
                f"{folder}: {ph.path.name} and {names[ph.name.lower()].name} would both become {ph.name}; "
                "rename one of them."
            )
        names[ph.name.lower()] = ph.path
    groups: dict[tuple, list[Photo]] = {}
    for ph in photos:
        groups.setdefault((ph.width, ph.height, ph.camera), []).append(ph)
    if len(groups) > 1:
        desc = "; ".join(
            f"{w}x{h}{' ' + cam if cam else ''}: {len(g)} photo(s), e.g. {g[0].path.name}"
            for (w, h, cam), g in sorted(groups.items(), key=lambda kv: -len(kv[1]))
        )
        raise CaptureError(
            f"{folder}: the photos come from more than one camera or image size ({desc}). "
            "Use photos from one camera at one zoom and size (portrait and landscape shots of the same "
            "camera count as different sizes: rotate or crop them to one orientation)."
        )
    return photos


def normalise_photos(photos: list[Photo], dest: Path, sift_dest: Path | None) -> None:
    """Write upright copies into ``dest`` (alpha kept) and, if given, RGB-over-white copies into ``sift_dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if sift_dest is not None:
        sift_dest.mkdir(parents=True, exist_ok=True)
    for ph in photos:
        target = dest / ph.name
        if not ph.needs_rewrite:
            shutil.copyfile(ph.path, target)
        with Image.open(ph.path) as im:
            if ph.needs_rewrite:
                upright = ImageOps.exif_transpose(im)
                _save(upright, target)
            else:
                upright = im
            if sift_dest is not None:  # temporary files: fast compression beats small ones
                _save(_over_white(upright), sift_dest / ph.name, compress_level=1)


def _over_white(im: Image.Image) -> Image.Image:
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return im.convert("RGB")


def _save(im: Image.Image, path: Path, compress_level: int = 6) -> None:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        # re-encoding only happens for rotated JPEGs; 95 keeps the second generation loss invisible
        im.convert("RGB").save(path, quality=95, subsampling=0)
    else:
        if im.mode not in ("RGB", "RGBA", "L", "LA", "I;16", "I"):
            im = im.convert("RGBA" if im.mode in _ALPHA_MODES or "transparency" in im.info else "RGB")
        im.save(path, compress_level=compress_level) if path.suffix.lower() == ".png" else im.save(path)

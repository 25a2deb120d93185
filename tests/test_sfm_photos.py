"""prd poses on bad photo folders: every problem is a CaptureError naming the files, before any SfM runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prd_blender.trainer.capture import CaptureError, load_capture
from prd_blender.trainer.cli import main
from prd_blender.trainer.sfm import is_photo_folder
from prd_blender.trainer.sfm.photos import normalise_photos, validate_photos
from prd_blender.trainer.sfm.run import PosesConfig, run_poses


def photo(path: Path, size=(24, 16), mode="RGB", exif: Image.Exif | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(path.name.encode()))  # different pixels per file name
    arr = rng.integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    im = Image.fromarray(arr, mode)
    kwargs = {"exif": exif} if exif is not None else {}
    im.save(path, **kwargs)
    return path


def folder(tmp_path: Path, n=3, **kw) -> Path:
    d = tmp_path / "photos"
    for i in range(n):
        photo(d / f"p{i}.jpg", **kw)
    return d


def test_too_few_photos(tmp_path):
    d = folder(tmp_path, n=2)
    with pytest.raises(CaptureError, match=r"at least 3 photos \(found 2 \(p0.jpg, p1.jpg\)"):
        validate_photos(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureError, match="found 0"):
        validate_photos(tmp_path / "empty")
    with pytest.raises(CaptureError, match="does not exist"):
        validate_photos(tmp_path / "nowhere")


def test_corrupt_photo_is_named(tmp_path):
    d = folder(tmp_path)
    good = (d / "p0.jpg").read_bytes()
    (d / "broken.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(CaptureError, match="broken.jpg: corrupt or truncated"):
        validate_photos(d)
    (d / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(CaptureError, match="broken.jpg: not a readable image"):
        validate_photos(d)


@pytest.mark.parametrize("name, what", [("IMG_0001.HEIC", "HEIC"), ("a.heif", "HEIC"), ("DSC_1.NEF", "RAW"),
                                        ("x.dng", "RAW"), ("y.CR3", "RAW")])
def test_heic_and_raw_are_refused_by_name(tmp_path, name, what):
    d = folder(tmp_path)
    (d / name).write_bytes(b"\x00" * 64)
    with pytest.raises(CaptureError, match=f"cannot read .*{what}.*{name}"):
        validate_photos(d)


def test_other_files_are_ignored(tmp_path):
    d = folder(tmp_path)
    (d / "notes.txt").write_text("hello")
    (d / ".DS_Store").write_bytes(b"\x00")
    assert [p.path.name for p in validate_photos(d)] == ["p0.jpg", "p1.jpg", "p2.jpg"]


def test_mixed_sizes_and_cameras_are_refused(tmp_path):
    d = folder(tmp_path)
    photo(d / "big.jpg", size=(32, 16))
    with pytest.raises(CaptureError, match=r"more than one camera or image size \(24x16: 3 photo\(s\), e.g. p0.jpg; "
                                           r"32x16: 1 photo\(s\), e.g. big.jpg\)"):
        validate_photos(d)
    (d / "big.jpg").unlink()
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS R"
    photo(d / "canon.jpg", exif=exif)
    with pytest.raises(CaptureError, match="Canon EOS R: 1 photo"):
        validate_photos(d)


def test_exif_orientation_is_applied(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    for i in range(3):
        arr = np.zeros((16, 24, 3), np.uint8)
        arr[:4, :4] = 255  # a white top-left block ends up top-right after the turn
        Image.fromarray(arr).save(d / f"r{i}.jpg", exif=exif, quality=100)
    photos = validate_photos(d)
    assert [(p.width, p.height, p.orientation) for p in photos] == [(16, 24, 6)] * 3
    normalise_photos(photos, tmp_path / "out", None)
    with Image.open(tmp_path / "out" / "r0.jpg") as im:
        assert im.size == (16, 24)
        assert im.getexif().get(0x0112, 1) == 1
        arr = np.asarray(im.convert("RGB")).astype(int)
    assert arr[1, -2].min() > 200 and arr[1, 1].max() < 50


def test_alpha_kept_for_training_and_composited_over_white_for_sift(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(3):
        arr = np.zeros((8, 8, 4), np.uint8)
        arr[2:6, 2:6] = (10, 200, 30, 255)
        Image.fromarray(arr, "RGBA").save(d / f"a{i}.png")
    photos = validate_photos(d)
    normalise_photos(photos, tmp_path / "img", tmp_path / "sift")
    with Image.open(tmp_path / "img" / "a0.png") as im:
        assert im.mode == "RGBA" and np.asarray(im)[0, 0, 3] == 0
    with Image.open(tmp_path / "sift" / "a0.png") as im:
        assert im.mode == "RGB"
        sift = np.asarray(im)
    assert tuple(sift[0, 0]) == (255, 255, 255) and tuple(sift[3, 3]) == (10, 200, 30)


def test_tiff_photos_get_png_copies(tmp_path):
    d = tmp_path / "photos"
    for i in range(3):
        photo(d / f"t{i}.tif")
    photos = validate_photos(d)
    assert [p.name for p in photos] == ["t0.png", "t1.png", "t2.png"]


def test_photo_folder_detection_and_loader_message(tmp_path):
    d = folder(tmp_path)
    assert is_photo_folder(d)
    with pytest.raises(CaptureError, match="folder of photos without camera poses.*prd poses"):
        load_capture(d)
    (d / "transforms.json").write_text(json.dumps({"frames": []}))
    assert not is_photo_folder(d)


def test_output_folder_rules(tmp_path):
    d = folder(tmp_path, n=2)  # bad input: nothing may be written
    out = tmp_path / "out"
    with pytest.raises(CaptureError):
        run_poses(d, out, quiet=True)
    assert not out.exists()
    photo(d / "p2.jpg")
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    with pytest.raises(CaptureError, match="not empty and holds no earlier poses"):
        run_poses(d, out, quiet=True)
    (out / "mine.txt").unlink()
    (out / "sfm.json").write_text("{}")
    with pytest.raises(CaptureError, match="already holds poses; pass --overwrite"):
        run_poses(d, out, quiet=True)


def test_cli_exit_code_and_message(tmp_path, capsys):
    d = folder(tmp_path, n=1)
    assert main(["poses", str(d), "--out", str(tmp_path / "out")]) == 2
    assert "at least 3 photos" in capsys.readouterr().err
    assert main(["train", str(d), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "at least 3 photos" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "at least 3 photos" in manifest["error"]


def test_unmatchable_photos_fail_clearly(tmp_path):
    pytest.importorskip("pycolmap")
    d = tmp_path / "photos"
    for i in range(4):  # independent noise: features everywhere, nothing in common
        photo(d / f"n{i}.png", size=(96, 96))
    with pytest.raises(CaptureError, match="No reconstruction.*only 96x96 pixels"):
        run_poses(d, tmp_path / "out", quiet=True)
    events = [json.loads(x) for x in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "error" and "No reconstruction" in events[-1]["message"]


def test_spatial_matching_without_gps_is_refused(tmp_path):
    pytest.importorskip("pycolmap")
    d = tmp_path / "photos"
    for i in range(3):
        photo(d / f"g{i}.jpg", size=(64, 48))
    with pytest.raises(CaptureError, match="Spatial matching needs GPS"):
        run_poses(d, tmp_path / "out", PosesConfig(matcher="spatial"), quiet=True)

"""Honest inputs (issue 14; audit rows S3-S6, S8-S10, O6, O8, U2, U3, U9): how image files are read,
what ``tok.encode``/``decode`` accept, the decode/encode CLI refusals, hand-edited token manifests and
file names that cannot be stored one per line."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo, photo_crops, tiny_digit_tokenizer, tiny_model
from PIL import Image

from vqgan_lc import VQGANLC
from vqgan_lc.cli import main as cli_main
from vqgan_lc.data import IMAGE_READING, ImageSourceError, Preprocessing, list_images, load_rgb
from vqgan_lc.errors import CheckpointError, ImageShapeError, TokenRangeError
from vqgan_lc.mage import MAGEVQGAN, MAGEConfig
from vqgan_lc.tokenizer import check_preprocessing, load_tokenizer
from vqgan_lc.tokens import EncodeOptions, TokenFormatError, encode_dataset, open_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


def run_cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """``vqgan-lc ARGS`` in this process: (exit status, stdout, the last stderr line); never a traceback."""
    try:
        code = cli_main.main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    return code, out, lines[-1] if lines else ""


def crop(img: np.ndarray, h: int = 96, w: int = 128) -> np.ndarray:
    return np.ascontiguousarray(img[:h, :w])


def ids_of(model: VQGANLC, img: Image.Image) -> torch.Tensor:
    return model.encode(Preprocessing(SIZE)(img)[None])


# ----------------------------------------------------------------------------------------- image files
def hostile_and_reference(tmp_path: Path) -> tuple[Path, Path]:
    """Two folders of the same three pictures: ``hostile`` as a 16-bit grayscale PNG, a JPEG stored sideways
    with EXIF Orientation 6 and an RGBA PNG; ``ref`` as the 8-bit, upright and white-composited RGB PNGs."""
    hostile, ref = tmp_path / "hostile", tmp_path / "ref"
    hostile.mkdir()
    ref.mkdir()
    gray = crop(photo("camera")[..., 0])
    Image.fromarray(gray.astype(np.uint16) * 257).save(hostile / "a.png")  # mode I;16, 0..65535
    Image.fromarray(gray).convert("RGB").save(ref / "a.png")

    upright = crop(photo("chelsea"), 128, 96)  # portrait: 128 high, 96 wide
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # what a phone writes: the sensor's landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(hostile / "b.jpg", quality=95, exif=exif)
    with Image.open(hostile / "b.jpg") as im:  # the decoded pixels, turned by hand
        Image.fromarray(np.rot90(np.asarray(im.convert("RGB")), k=-1).copy()).save(ref / "b.png")

    rgb = crop(photo("astronaut"))
    yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    alpha = ((xx * 255) // (rgb.shape[1] - 1)).astype(np.uint8)[..., None]  # transparent on the left
    alpha[:, :8] = 0
    Image.fromarray(np.dstack([rgb, alpha])).save(hostile / "c.png")
    a = alpha.astype(np.float64) / 255
    Image.fromarray(np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)).save(ref / "c.png")
    return hostile, ref


def test_16bit_exif_and_alpha_images_read_as_their_8bit_upright_composited_references(tmp_path: Path) -> None:
    hostile, ref = hostile_and_reference(tmp_path)
    with Image.open(hostile / "a.png") as im:
        assert im.mode == "I;16"
        clipped = np.asarray(im.convert("RGB"))
    assert (clipped == 255).mean() > 0.5  # what PIL's own conversion did (audit S3: 89.5% white)
    for name, ref_name in (("a.png", "a.png"), ("b.jpg", "b.png"), ("c.png", "c.png")):
        got, want = np.asarray(load_rgb(hostile / name)), np.asarray(load_rgb(ref / ref_name))
        assert got.shape == want.shape and np.array_equal(got, want), name
    assert np.asarray(load_rgb(hostile / "b.jpg")).shape == (128, 96, 3)  # upright
    assert np.asarray(load_rgb(hostile / "c.png"))[:, :8].min() == 255  # transparent -> white
    # the same ids through the whole encode pipeline
    model = tiny_model()
    opts = EncodeOptions(image_size=SIZE, batch_size=3, num_workers=0, shard_size=8)
    m_h = encode_dataset(model, hostile, tmp_path / "tok_h", options=opts, progress=False)
    m_r = encode_dataset(model, ref, tmp_path / "tok_r", options=opts, progress=False)
    assert m_h["num_rows"] == m_r["num_rows"] == 3
    assert np.array_equal(open_tokens(tmp_path / "tok_h")[:], open_tokens(tmp_path / "tok_r")[:])
    # and through tok.preprocess on opened PIL images (EXIF and alpha applied there too)
    with Image.open(hostile / "b.jpg") as b, Image.open(ref / "b.png") as rb:
        assert torch.equal(model.preprocess(b), model.preprocess(rb))


def test_32bit_int_and_float_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    gray = crop(photo("camera")[..., 0])
    ref = np.asarray(Image.fromarray(gray).convert("RGB"))
    Image.fromarray(gray.astype(np.int32) * 257, "I").save(tmp_path / "i32.tif")
    Image.fromarray(gray.astype(np.float32) / 255, "F").save(tmp_path / "f32.tif")
    Image.fromarray(gray.astype(np.float32) * 257, "F").save(tmp_path / "f16range.tif")
    Image.fromarray(gray.astype(np.int32), "I").save(tmp_path / "i8range.tif")
    for name in ("i32.tif", "f32.tif", "f16range.tif", "i8range.tif"):
        with Image.open(tmp_path / name) as im:
            assert im.mode in ("I", "F"), name
        assert np.array_equal(np.asarray(load_rgb(tmp_path / name)), ref), name
    nan = gray.astype(np.float32) / 255
    nan[0, :5] = np.nan
    Image.fromarray(nan, "F").save(tmp_path / "nan.tif")
    out = np.asarray(load_rgb(tmp_path / "nan.tif"))
    assert (out[0, :5] == 0).all() and np.array_equal(out[1:], ref[1:])


def test_gray_alpha_and_palette_transparency_are_composited_on_white(tmp_path: Path) -> None:
    gray = crop(photo("camera")[..., 0], 40, 50)
    alpha = np.zeros_like(gray)
    alpha[:, 25:] = 255  # left half transparent
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    out = np.asarray(load_rgb(tmp_path / "la.png"))
    assert (out[:, :25] == 255).all() and np.array_equal(out[:, 25:, 0], gray[:, 25:])
    pal = Image.fromarray(crop(photo("astronaut"), 40, 50)).quantize(16)
    index = np.asarray(pal)[0, 0]
    pal.save(tmp_path / "p.png", transparency=int(index))
    out = np.asarray(load_rgb(tmp_path / "p.png"))
    opaque = np.asarray(pal.convert("RGB"))
    hole = np.asarray(pal) == index
    assert hole.any() and (out[hole] == 255).all() and np.array_equal(out[~hole], opaque[~hole])


def test_reading_rules_are_recorded_and_old_records_still_open(tmp_path: Path) -> None:
    assert IMAGE_READING == {"orientation": "exif", "alpha": "white"}
    model = tiny_model()
    d = model.save_pretrained(tmp_path / "m")
    assert {k: json.loads((d / "config.json").read_text())["preprocessing"][k] for k in IMAGE_READING} == IMAGE_READING
    assert Preprocessing(SIZE).to_dict()["orientation"] == "exif" and Preprocessing(SIZE).to_dict()["alpha"] == "white"
    old = {"image_size": 64, "resize": "shorter-side", "interpolation": "bicubic", "crop": "center", "range": [-1, 1]}
    assert check_preprocessing(old) == {**old, **IMAGE_READING}  # a config.json written before the fields
    with pytest.raises(ValueError, match="alpha 'black' is not supported"):
        check_preprocessing({**old, "alpha": "black"})
    # a token directory written before the fields: it opens, and a rerun refuses to mix the two rules
    write_images(tmp_path / "imgs", 3)
    opts = EncodeOptions(image_size=SIZE, batch_size=4, num_workers=0, shard_size=8)
    m = encode_dataset(model, tmp_path / "imgs", tmp_path / "tok", options=opts, progress=False)
    assert {k: m["preprocessing"][k] for k in IMAGE_READING} == IMAGE_READING
    for name in ("encode.json", "manifest.json"):
        rec = json.loads((tmp_path / "tok" / name).read_text())
        for k in IMAGE_READING:
            del rec["preprocessing"][k]
        (tmp_path / "tok" / name).write_text(json.dumps(rec))
    assert len(open_tokens(tmp_path / "tok")) == 3
    with pytest.raises(TokenFormatError, match="differs in: preprocessing"):
        encode_dataset(model, tmp_path / "imgs", tmp_path / "tok", options=opts, progress=False)


def test_decompression_bomb_warning_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(crop(photo("coffee"))).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 96 * 128 - 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = load_rgb(tmp_path / "big.png")
    bombs = [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert img.size == (128, 96)
    assert len(bombs) == 1 and str(tmp_path / "big.png") in str(bombs[0].message), [str(w.message) for w in caught]


# ----------------------------------------------------------------------------------------- tok.encode / decode
def tokenizers() -> list[tuple[str, torch.nn.Module, int]]:
    mage = MAGEVQGAN(MAGEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, embed_dim=16, n_embed=64,
                                resolution=32)).eval()
    return [("vqgan-lc", tiny_model(), 64), ("mage", mage, 32), ("digit", tiny_digit_tokenizer().eval(), 256)]


@pytest.mark.parametrize("kind", ["vqgan-lc", "mage", "digit"])
def test_encode_refuses_values_outside_the_range_and_casts_float_dtypes(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    name, tok, size = next(t for t in tokenizers() if t[0] == kind)
    x = photo_crops(size, 1, seed=2)
    ids = tok.encode(x)
    slightly_over = torch.full_like(x, 0.5)
    slightly_over[0, 0, 0, 0] = 1.02  # one pixel beyond the tolerance is enough
    for bad, match in (((x + 1) / 2 * 255, r"\[0, 255\] pixels: pass x / 127.5 - 1"),
                       ((x + 1) / 2 + 0.2, r"\[0, 1\] pixels: pass x \* 2 - 1"),
                       (slightly_over, r"images must lie in \[-1, 1\], got values in \[0.5, 1.02\]"),
                       (x * 1.5, "rescale them")):
        with pytest.raises(ImageShapeError, match=match):
            tok.encode(bad)
    assert not caplog.records
    tok.encode((x + 1) / 2)  # [0, 1] pixels lie inside [-1, 1]: they cannot be refused, only warned about
    assert [r.getMessage() for r in caplog.records] == [
        f"images passed to encode hold no value below 0 (range [{float(x.min() + 1) / 2:.4g}, "
        f"{float(x.max() + 1) / 2:.4g}]); if they are [0, 1] pixels, pass x * 2 - 1: encode expects [-1, 1]"]
    for value in (float("nan"), float("inf")):
        y = x.clone()
        y[0, 1, 2, 3] = value
        with pytest.raises(ImageShapeError, match="1 NaN or infinite values"):
            tok.encode(y)
    assert tok.encode(x * 1.005).shape == ids.shape  # within the tolerance: accepted
    assert torch.equal(tok.encode(x.double()), ids)
    for dt in (torch.float16, torch.bfloat16):
        assert torch.equal(tok.encode(x.to(dt)), tok.encode(x.to(dt).float())), dt
    with pytest.raises(ImageShapeError, match="meta tensors"):
        tok.encode(torch.empty(1, 3, size, size, device="meta"))


@pytest.mark.parametrize("kind", ["vqgan-lc", "mage"])
def test_decode_accepts_the_uint32_ids_of_token_files(kind: str) -> None:
    name, tok, size = next(t for t in tokenizers() if t[0] == kind)
    ids = tok.encode(photo_crops(size, 2, seed=4))
    want = tok.decode(ids)
    assert torch.equal(tok.decode(ids.to(torch.uint32)), want)
    assert torch.equal(tok.decode(torch.from_numpy(ids.numpy().astype(np.uint32))), want)
    too_big = ids.to(torch.uint32)
    too_big[0, 0, 0] = 2**32 - 1
    with pytest.raises(TokenRangeError, match=rf"ids must lie in \[0, {tok.codebook_size}\).*4294967295"):
        tok.decode(too_big)
    with pytest.raises(TokenRangeError, match="meta tensor"):
        tok.decode(torch.empty(ids.shape, dtype=torch.int64, device="meta"))


def test_meta_weights_and_from_pretrained_none_are_one_sentence() -> None:
    config = tiny_model().config
    with torch.device("meta"):
        meta_model = VQGANLC(config)
    with pytest.raises(CheckpointError, match="weights are on the meta device"):
        meta_model.encode(photo_crops(SIZE, 1))
    for load in (VQGANLC.from_pretrained, load_tokenizer):
        with pytest.raises(CheckpointError, match="got NoneType; pass e.g. 'vqgan-lc-f16-100k'"):
            load(None)  # type: ignore[arg-type]



def test_save_pretrained_onto_a_file_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("the user's file")
    for _kind, tok, _ in tokenizers():
        for target in (tmp_path / "taken", tmp_path / "taken" / "sub"):
            with pytest.raises(CheckpointError, match=f"cannot save to {target}: {tmp_path / 'taken'} is a file"):
                tok.save_pretrained(target)
    assert (tmp_path / "taken").read_text() == "the user's file"


# ----------------------------------------------------------------------------------------- CLI
def write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    crops = (photo_crops(SIZE, n, seed=9) + 1) * 127.5
    paths = []
    for i, x in enumerate(crops):
        p = folder / f"img_{i:02d}.png"
        Image.fromarray(x.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def encoded(tmp_path: Path) -> dict[str, Path]:
    model_dir = tiny_model().save_pretrained(tmp_path / "model")
    write_images(tmp_path / "imgs" / "cat", 3)
    write_images(tmp_path / "imgs" / "dog", 2)
    encode_dataset(model_dir, tmp_path / "imgs", tmp_path / "tok",
                   options=EncodeOptions(image_size=SIZE, batch_size=4, num_workers=0, shard_size=2), progress=False)
    return {"model": model_dir, "tokens": tmp_path / "tok", "imgs": tmp_path / "imgs"}


def test_decode_counts_what_it_wrote_and_refuses_empty_selections(
    encoded: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["decode", "--model", encoded["model"], "--tokens", encoded["tokens"]]
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "d0", "--batch-size", "-1")
    assert code == 2 and "expected a positive integer, got '-1'" in err and not (tmp_path / "d0").exists()
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "d1", "--indices", "10:20")
    assert code == 1 and err == "vqgan-lc decode: error: --indices '10:20' selects none of the 5 rows; choose rows in 0:5"
    assert not (tmp_path / "d1").exists()
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "d2", "--indices", "abc")
    assert code == 1 and err.endswith("--indices 'abc' is not a row range; write e.g. 0:100, 5: or 7")
    code, out, _ = run_cli(capsys, *base, "--out", tmp_path / "d3", "--indices", "1:4", "--batch-size", "2")
    assert code == 0 and out.strip() == f"wrote 3 images to {tmp_path / 'd3'}"
    assert sorted(p.name for p in (tmp_path / "d3").iterdir()) == ["00000001.png", "00000002.png", "00000003.png"]


def test_bad_sizes_and_fractions_are_refused_by_the_parser(encoded: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(capsys, "encode", "--model", encoded["model"], "--data", encoded["imgs"], "--out",
                           tmp_path / "t0", "--image-size", "0")
    assert code == 2 and "--image-size: expected a positive integer, got '0'" in err and not (tmp_path / "t0").exists()
    code, _, err = run_cli(capsys, "build-codebook", "--data", encoded["imgs"], "--extractor", "pixels", "--out",
                           tmp_path / "cb.safetensors", "--k", "4", "--image-size", "0")
    assert code == 2 and "--image-size: expected a positive integer, got '0'" in err
    code, _, err = run_cli(capsys, "linear-probe", "--gpt", tmp_path / "nogpt", "--tokens", encoded["tokens"],
                           "--test-fraction", "0")
    assert code == 2 and "--test-fraction: expected a number strictly between 0 and 1, got '0'" in err


def test_encode_of_a_folder_without_a_readable_image_exits_1(encoded: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "lfs"
    bad.mkdir()
    for i in range(3):  # git-lfs pointer files named .png
        (bad / f"p{i}.png").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    code, out, err = run_cli(capsys, "encode", "--model", encoded["model"], "--data", bad, "--out", tmp_path / "t",
                             "--image-size", SIZE, "--num-workers", "0")
    assert code == 1 and out == ""
    assert err.startswith(f"vqgan-lc encode: error: none of the 3 images under {bad} could be read (p0.png: ")
    assert err.endswith("so " + f"{tmp_path / 't'} holds no tokens; check --data (git-lfs pointers? another folder?)")


# ----------------------------------------------------------------------------------------- token manifests
def edit_manifest(tokens: Path, change: object) -> None:
    m = json.loads((tokens / "manifest.json").read_text())
    change(m)  # type: ignore[operator]
    (tokens / "manifest.json").write_text(json.dumps(m))


def test_hand_edited_manifests_are_refused(encoded: dict[str, Path], tmp_path: Path) -> None:
    tok = encoded["tokens"]
    assert len(open_tokens(tok)) == 5 and len(json.loads((tok / "manifest.json").read_text())["shards"]) == 3
    original = (tok / "manifest.json").read_text()

    def swap(m: dict) -> None:
        m["shards"][0], m["shards"][1] = m["shards"][1], m["shards"][0]

    def drop_last(m: dict) -> None:
        m["shards"].pop()

    def drop_last_and_count(m: dict) -> None:
        m["num_rows"] -= m["shards"].pop()["rows"]

    elsewhere = tmp_path / "elsewhere.npy"
    shutil.copy(tok / "shard-00000.npy", elsewhere)

    def absolute(m: dict) -> None:
        m["shards"][0]["file"] = str(elsewhere)

    def fewer_classes(m: dict) -> None:
        m["classes"] = m["classes"][:1]

    cases = [(swap, r"shard entry 0 \(shard-00001.npy\) has row_range \[2, 4\], expected \[0, 2\]"),
             (drop_last, "hold 4 rows but the manifest says num_rows 5"),
             (drop_last_and_count, "cover 4 of its 5 sources"),
             (absolute, "names '" + str(elsewhere) + "', which is not a file in"),
             (fewer_classes, "holds label 1 but the manifest lists 1 classes")]
    for change, match in cases:
        edit_manifest(tok, change)
        with pytest.raises(TokenFormatError, match=match):
            open_tokens(tok, verify=False)
        (tok / "manifest.json").write_text(original)
    labels = np.load(tok / "labels.npy")
    np.save(tok / "labels.npy", np.where(np.arange(5) == 2, 99, labels))
    with pytest.raises(TokenFormatError, match="holds label 99 but the manifest lists 2 classes"):
        open_tokens(tok)
    np.save(tok / "labels.npy", labels)
    assert len(open_tokens(tok)) == 5


def test_paths_txt_is_split_on_newlines_only(encoded: dict[str, Path]) -> None:
    tok = encoded["tokens"]
    paths = open_tokens(tok).paths
    odd = [p.replace("img_", "img\r\u2028\x0c") for p in paths]  # a directory written before names were checked
    (tok / "paths.txt").write_bytes("".join(p + "\n" for p in odd).encode())
    assert open_tokens(tok).paths == odd
    (tok / "paths.txt").write_bytes("".join(p + "\n" for p in [*paths[:2], "a\nb", *paths[3:]]).encode())
    with pytest.raises(TokenFormatError, match="paths.txt 6 lines for the manifest's 5 rows"):
        open_tokens(tok)


# ----------------------------------------------------------------------------------------- file names
BAD_NAMES = [("a\nb.png", "contains a newline"), ("a\rb.png", "contains a carriage return"),
             ("a\x0cb.png", "contains a form feed"), ("a\u2028b.png", r"contains a line separator \(U\+2028\)")]


@pytest.mark.parametrize(("name", "why"), BAD_NAMES, ids=["newline", "cr", "formfeed", "u2028"])
def test_names_with_line_breaks_are_refused_up_front(name: str, why: str, encoded: dict[str, Path],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(encoded["imgs"], data)
    shutil.copy(data / "cat" / "img_00.png", data / "cat" / name)
    with pytest.raises(ImageSourceError, match=why + r"; rename it, since vqgan-lc stores file names one per line"):
        list_images(data)
    for cmd in (["encode", "--model", encoded["model"], "--data", data, "--out", tmp_path / "t"],
                ["build-codebook", "--data", data, "--extractor", "pixels", "--out", tmp_path / "c.safetensors",
                 "--k", "4", "--image-size", SIZE],
                ["evaluate", "--model", encoded["model"], "--data", data, "--out", tmp_path / "e"]):
        code, out, err = run_cli(capsys, *cmd)
        assert code == 1 and out == "", cmd
        assert err.startswith(f"vqgan-lc {cmd[0]}: error: image file name ") and repr(name)[1:-1] in err, err
        assert not (tmp_path / "t").exists() and not (tmp_path / "e").exists()
        assert not any(p.name.startswith("c.safetensors") for p in tmp_path.iterdir())


def test_non_utf8_names_are_refused_up_front(encoded: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(encoded["imgs"], data)
    raw = os.path.join(os.fsencode(data / "dog"), b"caf\xe9.png")
    try:
        shutil.copy(os.fsencode(data / "dog" / "img_00.png"), raw)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    code, out, err = run_cli(capsys, "encode", "--model", encoded["model"], "--data", data, "--out", tmp_path / "t")
    assert code == 1 and "caf\\udce9.png' is not valid UTF-8" in err and "rename it" in err
    assert not (tmp_path / "t").exists()


def test_file_lists_refuse_dotdot_and_non_utf8(encoded: dict[str, Path], tmp_path: Path) -> None:
    data = encoded["imgs"]
    (tmp_path / "up.txt").write_text("cat/img_00.png,cat\n../imgs/dog/img_00.png,dog\n")
    with pytest.raises(ImageSourceError, match=r"up.txt:2: ../imgs/dog/img_00.png leads out of the image folder"):
        list_images(data / "cat", tmp_path / "up.txt")
    (tmp_path / "inside.txt").write_text("cat/img_00.png,cat\r\ndog/../dog/img_01.png,dog\r\n")
    images = list_images(data, tmp_path / "inside.txt")
    assert images.paths == ("cat/img_00.png", "dog/img_01.png") and images.classes == ("cat", "dog")
    (tmp_path / "twice.txt").write_text("cat/img_00.png\ncat/../cat/img_00.png\n")
    with pytest.raises(ImageSourceError, match="twice.txt:2: cat/img_00.png is listed twice"):
        list_images(data, tmp_path / "twice.txt")
    (tmp_path / "latin1.txt").write_bytes(b"cat/caf\xe9.png\n")
    with pytest.raises(ImageSourceError, match="latin1.txt is not UTF-8 text .*; save it as UTF-8"):
        list_images(data, tmp_path / "latin1.txt")
    (tmp_path / "u2028.txt").write_text("cat/img\u2028x.png\n")
    with pytest.raises(ImageSourceError, match=r"img\\u2028x.png' contains a line separator"):
        list_images(data, tmp_path / "u2028.txt")


# ----------------------------------------------------------------------------------------- O1: orphaned workers
def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid`` and whose command line is a multiprocessing spawn."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmd:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_spawned_encode_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    model_dir = tiny_model().save_pretrained(tmp_path / "model")
    write_images(tmp_path / "imgs", 80)
    out = tmp_path / "tok"
    script = (
        "from vqgan_lc.tokens import EncodeOptions, encode_dataset\n"
        f"encode_dataset({str(model_dir)!r}, {str(tmp_path / 'imgs')!r}, {str(out)!r}, progress=False, options="
        "EncodeOptions(image_size=64, batch_size=2, num_workers=0, shard_size=2, devices=2))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    # torch's spawn asks for SIGINT on the parent's death, which a process started with SIGINT ignored (a
    # background job of a non-interactive shell, nohup, many schedulers) never acts on: start it that way.
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("shard-*.json")):  # both workers are encoding
            assert parent.poll() is None, parent.stderr.read().decode()[-3000:] if parent.stderr else ""
            assert time.monotonic() < deadline, "the workers never wrote a shard"
            time.sleep(0.05)
        workers = _children(parent.pid)
        assert len(workers) == 2
        parent.send_signal(signal.SIGKILL)  # as an OOM kill would: no cleanup in the parent
        parent.wait()
        t0 = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "orphaned encode workers kept running"
        done = len(list(out.glob("shard-*.json")))
        time.sleep(1.0)
        assert len(list(out.glob("shard-*.json"))) == done < 40  # they stopped, far from the end
    finally:
        if parent.poll() is None:
            parent.kill()
        for w in _children(parent.pid):
            os.kill(w, signal.SIGKILL)

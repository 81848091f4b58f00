"""``vqgan-lc evaluate``: the report files, "not computed" entries, token-directory mode, the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model, write_photo_folder
from PIL import Image

from vqgan_lc.metrics import EvaluateOptions, evaluate

PER_PIXEL = ("psnr_y", "psnr_rgb", "ssim")
ALWAYS = ("utilization", "perplexity", "decode_throughput")
OPTS = EvaluateOptions(batch_size=4, num_workers=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:  # noqa: ANN001
    """A tiny model directory and a folder of 6 photographs (64 px) plus one corrupt file."""
    root = tmp_path_factory.mktemp("evaluate")
    write_photo_folder(root / "data", per_class=2, size=64)
    (root / "data" / "class_0_astronaut" / "broken.png").write_bytes(b"not an image")
    model = tiny_model(0)
    model.save_pretrained(root / "model")
    return {"root": root, "model": model, "data": root / "data", "model_dir": root / "model"}


@pytest.fixture(scope="module")
def image_report(setup) -> tuple[dict, Path]:  # noqa: ANN001
    out = setup["root"] / "report-images"
    return evaluate(setup["model_dir"], setup["data"], out, options=OPTS, progress=False), out


def _direct_ids_and_psnr(setup: dict) -> tuple[torch.Tensor, list[float]]:
    """Encode the readable photographs by hand: the numbers the report must hold."""
    from vqgan_lc.data import Preprocessing, list_images, load_rgb
    from vqgan_lc.metrics import psnr, to_unit

    images = list_images(setup["data"])
    pre = Preprocessing(64)
    x = torch.stack([pre(load_rgb(images.root / p)) for p in images.paths if not p.endswith("broken.png")])
    model = setup["model"]
    with torch.inference_mode():
        ids = model.encode(x)
        p = psnr(to_unit(model.decode(ids)), to_unit(x), channel="y")
    return ids, p.tolist()


def test_report_files_are_written_and_parse(setup, image_report) -> None:  # noqa: ANN001
    report, out = image_report
    for name in ("report.json", "report.md", "per_image.csv", "reconstructions.png", "code_usage.png"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["format"] == "vqgan-lc-eval-report" and on_disk["format_version"] == 1
    assert on_disk["data"]["images"] == 6 and on_disk["data"]["skipped"] == 1
    assert on_disk["data"]["skipped_files"][0]["path"].endswith("broken.png")
    assert on_disk["data"]["grid"] == [8, 8] and on_disk["data"]["tokens_counted"] == 6 * 64
    m = on_disk["metrics"]
    for key in (*PER_PIXEL, *ALWAYS, "encode_throughput"):
        assert m[key]["computed"] is True, key
        assert math.isfinite(m[key]["value"]), key
    assert 0 < m["ssim"]["value"] <= 1 and m["psnr_y"]["value"] > 0
    assert m["encode_throughput"]["value"] > 0 and m["decode_throughput"]["value"] > 0

    # Numbers by construction: the same ids and PSNR as encoding the photographs by hand.
    ids, psnr_y = _direct_ids_and_psnr(setup)
    used = len(torch.unique(ids))
    assert m["utilization"]["used"] == used
    assert m["utilization"]["value"] == pytest.approx(used / 512)
    counts = torch.bincount(ids.flatten(), minlength=512).double()
    p = counts[counts > 0] / counts.sum()
    assert m["perplexity"]["value"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert m["psnr_y"]["value"] == pytest.approx(float(np.mean(psnr_y)), abs=1e-9)

    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "psnr_rgb", "psnr_y", "ssim"]
    assert len(rows) == 6 and not any(r["path"].endswith("broken.png") for r in rows)
    assert [float(r["psnr_y"]) for r in rows] == pytest.approx(psnr_y, abs=1e-5)

    grid = Image.open(out / "reconstructions.png")
    assert grid.size == (6 * 66 + 2, 2 * 66 + 2)  # 6 originals over 6 reconstructions, 2 px gaps
    assert Image.open(out / "code_usage.png").size[0] > 0
    md = (out / "report.md").read_text()
    assert "| Codebook utilization |" in md and "not computed" in md and "--inception-weights PATH" in md


def test_missing_weights_are_reported_not_computed(setup, image_report) -> None:  # noqa: ANN001
    report, _ = image_report  # no weights given at all
    m = report["metrics"]
    assert m["lpips_alex"] == {"computed": False, "reason": m["lpips_alex"]["reason"], "enable_with": "--lpips-alex-weights PATH"}
    assert m["lpips_vgg"]["enable_with"] == "--lpips-vgg-weights PATH"
    assert m["rfid"]["computed"] is False and m["rfid"]["enable_with"] == "--inception-weights PATH"

    # Weights files that do not exist: the same entries (naming the file); everything else still runs.
    opts = EvaluateOptions(batch_size=4, num_workers=0, lpips_alex_weights=str(setup["root"] / "no-alex.pth"),
                           inception_weights=str(setup["root"] / "no-inception.pth"))
    rep = evaluate(setup["model"], setup["data"], setup["root"] / "report-missing", options=opts, progress=False)
    assert rep["metrics"]["lpips_alex"]["computed"] is False
    assert "no-alex.pth" in rep["metrics"]["lpips_alex"]["reason"]
    assert rep["metrics"]["rfid"]["computed"] is False and "no-inception.pth" in rep["metrics"]["rfid"]["reason"]
    for key in (*PER_PIXEL, "utilization", "perplexity"):
        assert rep["metrics"][key]["value"] == pytest.approx(report["metrics"][key]["value"]), key


def test_lpips_from_local_weights_in_the_pipeline(setup, image_report) -> None:  # noqa: ANN001
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), setup["root"] / "alex.pth")
    opts = EvaluateOptions(batch_size=4, num_workers=0, lpips_alex_weights=str(setup["root"] / "alex.pth"))
    out = setup["root"] / "report-lpips"
    rep = evaluate(setup["model"], setup["data"], out, options=opts, progress=False)
    lp = rep["metrics"]["lpips_alex"]
    assert lp["computed"] and lp["value"] > 0 and math.isfinite(lp["value"]) and lp["convention"] == "lpips"
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert "lpips_alex" in rows[0] and "lpips_vgg" not in rows[0]
    assert np.mean([float(r["lpips_alex"]) for r in rows]) == pytest.approx(lp["value"], abs=1e-5)


def test_token_mode_gives_the_same_numbers(setup, image_report) -> None:  # noqa: ANN001
    from vqgan_lc.tokens import EncodeOptions, encode_dataset

    report, _ = image_report
    tokens = setup["root"] / "tokens"
    encode_dataset(setup["model"], setup["data"], tokens, options=EncodeOptions(image_size=64, num_workers=0),
                   progress=False)
    rep = evaluate(setup["model_dir"], setup["data"], setup["root"] / "report-tokens", tokens=tokens, options=OPTS,
                   progress=False)
    assert rep["data"]["mode"] == "tokens" and rep["data"]["images"] == 6
    for key in ("utilization", "perplexity", *PER_PIXEL):
        assert rep["metrics"][key]["value"] == pytest.approx(report["metrics"][key]["value"], abs=1e-9), key
    assert rep["metrics"]["utilization"]["used"] == report["metrics"]["utilization"]["used"]
    assert rep["metrics"]["encode_throughput"]["computed"] is False

    # Without the originals: usage and decoding only.
    bare = evaluate(setup["model_dir"], None, setup["root"] / "report-bare", tokens=tokens, options=OPTS, progress=False)
    assert bare["metrics"]["utilization"]["value"] == report["metrics"]["utilization"]["value"]
    assert bare["metrics"]["psnr_y"] == {"computed": False, "reason": bare["metrics"]["psnr_y"]["reason"],
                                         "enable_with": "--data FOLDER"}
    assert bare["metrics"]["lpips_alex"]["enable_with"] == "--data FOLDER"
    assert (setup["root"] / "report-bare" / "reconstructions.png").is_file()


def test_token_mode_refuses_another_model(setup) -> None:  # noqa: ANN001
    from vqgan_lc import create_model
    from vqgan_lc.metrics import EvaluateError
    from vqgan_lc.tokens import EncodeOptions, TokenFormatError, encode_dataset

    tokens = setup["root"] / "tokens-refuse"
    encode_dataset(setup["model"], setup["data"], tokens, options=EncodeOptions(image_size=64, num_workers=0),
                   progress=False)
    torch.manual_seed(1)
    other = create_model("tiny", codebook=torch.randn(1024, 768) * 0.03).eval()
    with pytest.raises(TokenFormatError, match="--force"):
        evaluate(other, setup["data"], setup["root"] / "report-refused", tokens=tokens, options=OPTS, progress=False)
    forced = EvaluateOptions(batch_size=4, num_workers=0, force=True)
    rep = evaluate(other, setup["data"], setup["root"] / "report-forced", tokens=tokens, options=forced, progress=False)
    assert rep["metrics"]["utilization"]["codebook_size"] == 1024
    with pytest.raises(EvaluateError, match="encoded at 64 px"):
        evaluate(setup["model"], setup["data"], setup["root"] / "report-size", tokens=tokens,
                 options=EvaluateOptions(image_size=32, num_workers=0), progress=False)


def test_cli_evaluate(setup, capsys) -> None:  # noqa: ANN001
    from vqgan_lc.cli.main import main

    out = setup["root"] / "report-cli"
    rc = main(["evaluate", "--model", str(setup["model_dir"]), "--data", str(setup["data"]), "--out", str(out),
               "--batch-size", "8", "--num-workers", "0", "--image-size", "32"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Codebook utilization" in printed and "not computed (pass --inception-weights PATH)" in printed
    rep = json.loads((out / "report.json").read_text())
    assert rep["data"]["image_size"] == 32 and rep["data"]["grid"] == [4, 4]
    assert rep["model"]["path"] == str(setup["model_dir"])
    assert main(["evaluate", "--model", str(setup["model_dir"]), "--out", str(out)]) == 2


@pytest.mark.slow
def test_rfid_with_local_inception_weights(setup, monkeypatch) -> None:  # noqa: ANN001
    from test_metrics import random_inception_file

    path = setup["root"] / "inception.pth"
    random_inception_file(path, monkeypatch)
    opts = EvaluateOptions(batch_size=8, num_workers=0, inception_weights=str(path))
    rep = evaluate(setup["model"], setup["data"], setup["root"] / "report-fid", options=opts, progress=False)
    fid = rep["metrics"]["rfid"]
    assert fid["computed"] and math.isfinite(fid["value"]) and fid["value"] > 0 and fid["num_images"] == 6


def _fake_inception(x: torch.Tensor) -> torch.Tensor:
    """Stands in for clean-fid's Inception: (B, 3, 299, 299) in [0, 255] -> 4 features per image."""
    assert x.shape[1:] == (3, 299, 299)
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(1, 2, 3))[:, None]], dim=1)


def test_official_protocol_report(setup, monkeypatch) -> None:  # noqa: ANN001
    """`--protocol official`: OpenCV resize, unclamped pyiqa-convention LPIPS, clean-fid of PNG reconstructions
    against the uncropped originals; the report names the protocol."""
    import torchvision
    from cleanfid import fid as cfid

    from vqgan_lc.data import Preprocessing, list_images, load_rgb
    from vqgan_lc.metrics import clean_fid, psnr, to_unit

    monkeypatch.setattr(clean_fid, "cleanfid_feature_model", lambda weights, device: _fake_inception)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), setup["root"] / "alex-off.pth")
    data = setup["root"] / "data-wide"  # 96 x 72 originals: the 64 px crops differ from the files
    for p in list_images(setup["data"]).paths:
        if not p.endswith("broken.png"):
            (data / p).parent.mkdir(parents=True, exist_ok=True)
            load_rgb(setup["data"] / p).resize((96, 72), Image.BICUBIC).save((data / p).with_suffix(".png"))
    out = setup["root"] / "report-official"
    opts = EvaluateOptions(batch_size=4, num_workers=0, protocol="official",
                           lpips_alex_weights=str(setup["root"] / "alex-off.pth"))
    rep = evaluate(setup["model"], data, out, options=opts, progress=False)
    assert rep["protocol"] == "official" and rep["data"]["resize"] == "official"
    assert rep["options"]["lpips_convention"] == "official" and rep["metrics"]["lpips_alex"]["convention"] == "official"
    assert "Protocol**: official" in (out / "report.md").read_text()
    # PSNR-Y over the officially resized crops
    images = list_images(data)
    readable = list(images.paths)
    x = torch.stack([Preprocessing(64, resize="official")(load_rgb(images.root / p)) for p in readable])
    with torch.inference_mode():
        rec = setup["model"].decode(setup["model"].encode(x))
    assert rep["metrics"]["psnr_y"]["value"] == pytest.approx(psnr(to_unit(rec), to_unit(x), channel="y").mean().item(),
                                                              rel=1e-6)
    # every reconstruction as a PNG, truncated to uint8 as the official script saves it
    pngs = sorted((out / "reconstructions-png").rglob("*.png"))
    assert len(pngs) == 6
    first = np.asarray(Image.open(out / "reconstructions-png" / Path(readable[0]).with_suffix(".png")))
    assert np.array_equal(first, rec[0].clamp(-1, 1).add(1).mul(127.5).permute(1, 2, 0).numpy().astype(np.uint8))
    # rFID = clean-fid between those PNGs and the uncropped original files (96 x 72, not the 64 px crops)
    assert Image.open(images.root / readable[0]).size == (96, 72)
    kw = dict(model=_fake_inception, num_workers=0, batch_size=4, device=torch.device("cpu"), mode="clean", verbose=False)
    ref = cfid.get_files_features([str(images.root / p) for p in readable], **kw)
    crops = cfid.get_files_features([str(p) for p in pngs], **kw)
    fid = rep["metrics"]["rfid"]
    assert fid["computed"] and fid["value"] == pytest.approx(float(cfid.fid_from_feats(crops, ref)), rel=1e-6)
    centre = setup["root"] / "centre-crops"
    for p, xi in zip(readable, x):
        (centre / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(xi.add(1).mul(127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)).save(centre / p)
    cropped = cfid.get_files_features([str(centre / p) for p in readable], **kw)
    assert abs(float(cfid.fid_from_feats(crops, cropped)) - fid["value"]) > 1e-3  # not the standard reference
    assert "clean-fid" in fid["implementation"] and "uncropped" in rep["implementation"]["rfid"]


def test_official_rfid_finds_inception_in_the_cleanfid_cache(setup: dict, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    from vqgan_lc.errors import MissingWeightsError
    from vqgan_lc.metrics import clean_fid

    monkeypatch.setattr(clean_fid, "cleanfid_cache_dir", lambda: tmp_path)
    with pytest.raises(MissingWeightsError, match="inception-2015-12-05.pt"):
        clean_fid.find_cleanfid_inception()
    rep = evaluate(setup["model"], setup["data"], tmp_path / "rep", progress=False,
                   options=EvaluateOptions(batch_size=4, num_workers=0, protocol="official"))
    assert rep["metrics"]["rfid"]["computed"] is False
    assert rep["metrics"]["rfid"]["enable_with"] == "--cleanfid-inception PATH" and str(tmp_path) in rep["metrics"]["rfid"]["reason"]
    (tmp_path / "inception-2015-12-05.pt").write_bytes(b"x")  # a pre-populated clean-fid cache
    assert clean_fid.find_cleanfid_inception() == tmp_path / "inception-2015-12-05.pt"
    assert clean_fid.find_cleanfid_inception(tmp_path) == tmp_path / "inception-2015-12-05.pt"
    (tmp_path / "other.pt").write_bytes(b"x")
    with pytest.raises(MissingWeightsError, match="named inception-2015-12-05.pt"):
        clean_fid.find_cleanfid_inception(tmp_path / "other.pt")

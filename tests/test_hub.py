"""Pretrained by name: Hub ids, the official release registry, offline mode, model cards and push_to_hub.

huggingface_hub's real client runs in a subprocess (its environment is read at import) against
``tests/hub_server.py``, a loopback stand-in for the Hub on 127.0.0.1; nothing reaches the internet.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vqgan_lc import VQGANLC, CheckpointError
from vqgan_lc.errors import PretrainedNotFoundError, UnsupportedReleaseError, VQGANLCError
from vqgan_lc.registry import get_config
from vqgan_lc.releases import (
    DEFAULT_REPO,
    MIRROR_NOTE,
    REPO_ENV,
    ReleaseFile,
    get_release,
    iter_releases,
    list_releases,
    release_table_markdown,
)

sys.path.insert(0, str(Path(__file__).parent))
from conftest import OFFICIAL_TINY, tiny_model
from hub_server import COMMIT, FakeHub

ROOT = Path(__file__).resolve().parents[1]
CLIENT = Path(__file__).parent / "hub_client.py"
HUB_REPO = "someorg/vqgan-lc-tiny"
RELEASE_REPO = "testorg/VQ"


def run_client(hub: FakeHub, home: Path, spec: dict[str, Any], *, offline: bool = False) -> Any:
    """``resolve_pretrained`` in a fresh process whose huggingface_hub talks to ``hub`` and caches in ``home``:
    the result of the call (a dict), or the list of results when ``spec`` has ``calls``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "VQGAN_LC_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([sys.executable, str(CLIENT), json.dumps(spec)], env=env, capture_output=True, text=True,
                       timeout=300, cwd=str(home))
    assert r.returncode == 0, r.stderr[-4000:]
    results = [json.loads(line) for line in r.stdout.strip().splitlines() if line.startswith("{")]
    return results if "calls" in spec else results[-1]


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    return tiny_model(seed=3).save_pretrained(d / "tiny")


@pytest.fixture
def hub(model_dir: Path) -> Iterator[FakeHub]:
    """The loopback Hub: a repo in our format and, where ../shared is present, the official-format fixture."""
    repos: dict[str, dict[str, Path | bytes]] = {
        HUB_REPO: {"config.json": model_dir / "config.json", "model.safetensors": model_dir / "model.safetensors",
                   "training-state.bin": b"not wanted" * 100},
    }
    if (OFFICIAL_TINY / "vqgan_lc_official_format.pth").is_file():
        repos[RELEASE_REPO] = {"mbin/vqgan_lc_official_format.pth": OFFICIAL_TINY / "vqgan_lc_official_format.pth",
                               "mbin/codebook.pth": OFFICIAL_TINY / "codebook.pth"}
    with FakeHub(repos) as h:
        yield h


def release_row(official_tiny: Path, name: str = "vqgan-lc-f16-100k", **changes: Any) -> dict[str, Any]:
    """The fixture in the official format as a release row (exact sizes, the codebook's sha256)."""
    ckpt, cb = official_tiny / "vqgan_lc_official_format.pth", official_tiny / "codebook.pth"
    row = {
        "name": name, "repo": RELEASE_REPO, "yaml_config": str(official_tiny / "vq_config.yaml"),
        "checkpoint": {"path": "mbin/vqgan_lc_official_format.pth", "listed": "75M", "size": ckpt.stat().st_size},
        "codebook": {"path": "mbin/codebook.pth", "listed": "3M", "size": cb.stat().st_size,
                     "sha256": hashlib.sha256(cb.read_bytes()).hexdigest()},
    }
    for key, value in changes.items():
        row[key] = {**row[key], **value}
    return row


def _state(path: Path) -> dict[str, torch.Tensor]:
    return VQGANLC.from_pretrained(path).state_dict()


# ----------------------------------------------------------------------------------------- Hub repo ids
def test_hub_id_downloads_once_then_loads_offline_from_the_cache(hub: FakeHub, model_dir: Path, tmp_path: Path) -> None:
    first = run_client(hub, tmp_path, {"name": HUB_REPO})
    path = Path(first["path"])
    assert path.parts[-2:] == ("snapshots", COMMIT)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]  # not training-state.bin
    assert ("GET", f"/api/models/{HUB_REPO}/revision/main") in hub.requests
    assert not any("training-state" in p for _, p in hub.requests)
    before = len(hub.requests)
    again = run_client(hub, tmp_path, {"calls": [{"name": HUB_REPO}, {"name": f"hf-hub:{HUB_REPO}",
                                                                     "kwargs": {"local_files_only": True}}]},
                       offline=True)
    assert again == [first, first] and len(hub.requests) == before  # HF_HUB_OFFLINE=1: no request at all
    want = _state(model_dir)
    got = _state(path)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_offline_with_an_empty_cache_is_one_sentence(hub: FakeHub, tmp_path: Path) -> None:
    out = run_client(hub, tmp_path, {"name": HUB_REPO}, offline=True)
    assert out["error"] == "PretrainedNotFoundError" and hub.requests == []
    msg = out["message"]
    assert "\n" not in msg and msg.count(". ") == 0
    for part in ("config.json", f"Hub repo {HUB_REPO} at revision main", str(tmp_path / "hub"), "HF_HUB_OFFLINE=1",
                 "go online once"):
        assert part in msg, (part, msg)


@pytest.mark.slow  # huggingface_hub backs off and retries a refused connection for ~20 s before giving up
def test_unreachable_hub_with_an_empty_cache_is_one_sentence(tmp_path: Path) -> None:

    class Gone:
        url = "http://127.0.0.1:9"  # the discard port: connection refused

    out = run_client(Gone(), tmp_path, {"name": "vqgan-lc-f8-100k"})  # type: ignore[arg-type]
    assert out["error"] == "PretrainedNotFoundError" and "\n" not in out["message"]
    for part in ("mbin/vqgan-lc-100K-f8-dim4.pth", "Hub repo wufuheng/VQ at revision main",
                 "the Hub at http://127.0.0.1:9 could not be reached", "go online once", "--preset vqgan-lc-f8-100k"):
        assert part in out["message"], (part, out["message"])


def test_offline_flag_keeps_the_network_off_even_with_the_hub_up(hub: FakeHub, official_tiny: Path,
                                                                 tmp_path: Path) -> None:
    out = run_client(hub, tmp_path, {"name": "vqgan-lc-f16-100k", "offline_flag": True,
                                     "releases": [release_row(official_tiny)]})
    assert out["error"] == "PretrainedNotFoundError" and hub.requests == []
    msg = out["message"]
    for part in ("mbin/vqgan_lc_official_format.pth", f"Hub repo {RELEASE_REPO} at revision main", "(--offline)",
                 "vqgan-lc convert --checkpoint FILE --codebook CODEBOOK", str(tmp_path / "hub")):
        assert part in msg, (part, msg)


def test_unknown_hub_repo_and_a_repo_in_another_format(hub: FakeHub, official_tiny: Path, tmp_path: Path) -> None:
    unknown, other = run_client(hub, tmp_path, {"calls": [{"name": "nobody/nothing"}, {"name": RELEASE_REPO}]})
    assert unknown["error"] == "PretrainedNotFoundError"
    assert "nobody/nothing is not a Hub repo you can read and there is no local directory nobody/nothing" \
        in unknown["message"]
    assert other["error"] == "CheckpointError"  # .pth files only: not this package's format
    assert "has no config.json or model.safetensors, so it is not a vqgan-lc model repo" in other["message"]


# ----------------------------------------------------------------------------------------- release names
def test_release_name_downloads_checks_converts_once_and_then_reads_only_the_converted_dir(
    hub: FakeHub, official_tiny: Path, tmp_path: Path
) -> None:
    row = release_row(official_tiny)
    first = run_client(hub, tmp_path, {"name": "vqgan-lc-f16-100k", "releases": [row]})
    path = Path(first["path"])
    assert path == tmp_path / "vqgan-lc" / "converted" / "vqgan-lc-f16-100k--main"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "release.json"]
    assert not list(path.parent.glob(".*"))  # no temporary directory left behind
    got = {(m, p) for m, p in hub.requests}
    assert ("GET", f"/{RELEASE_REPO}/resolve/main/mbin/vqgan_lc_official_format.pth") in got
    assert ("GET", f"/{RELEASE_REPO}/resolve/main/mbin/codebook.pth") in got

    marker = json.loads((path / "release.json").read_text())
    assert marker["commit"] == COMMIT and marker["repo"] == RELEASE_REPO and marker["revision"] == "main"
    assert marker["files"]["codebook"]["sha256"] == row["codebook"]["sha256"]
    assert marker["files"]["codebook"]["sha256_checked"] is True
    assert marker["files"]["checkpoint"]["sha256_checked"] is False
    assert marker["files"]["checkpoint"]["size"] == row["checkpoint"]["size"]

    model = VQGANLC.from_pretrained(path)
    x = torch.from_numpy(np.load(official_tiny / "input.npy"))
    with torch.no_grad():
        ids = model.encode(x)
    assert torch.equal(ids, torch.from_numpy(np.load(official_tiny / "indices.npy")))
    assert model.provenance["release"]["note"] == MIRROR_NOTE
    assert model.provenance["release"]["commit"] == COMMIT

    before = len(hub.requests)
    again = run_client(hub, tmp_path, {"calls": [{"name": "vqgan-lc-f16-100k"},
                                                 {"name": "vqgan-lc-f16-100k", "kwargs": {"local_files_only": True}}],
                                       "releases": [row], "forbid_pickle": True})
    assert again == [first, first] and len(hub.requests) == before  # online, yet no request, no pickle, no hashing


def test_release_file_of_the_wrong_size_or_hash_is_refused(hub: FakeHub, official_tiny: Path, tmp_path: Path) -> None:
    size = (official_tiny / "vqgan_lc_official_format.pth").stat().st_size
    wrong = "0" * 64
    bad_size = release_row(official_tiny, "test-bad-size", checkpoint={"size": size + 1})
    bad_sha = release_row(official_tiny, "test-bad-sha", codebook={"sha256": wrong})
    out, out_sha = run_client(hub, tmp_path, {"calls": [{"name": "test-bad-size"}, {"name": "test-bad-sha"}],
                                              "releases": [bad_size, bad_sha]})
    assert out["error"] == "CheckpointError"
    assert f"is {size:,} bytes, expected exactly {size + 1:,}" in out["message"]
    assert "mbin/vqgan_lc_official_format.pth" in out["message"] and "\n" not in out["message"]

    real = hashlib.sha256((official_tiny / "codebook.pth").read_bytes()).hexdigest()
    assert out_sha["error"] == "CheckpointError"
    assert f"has sha256 {real}, expected {wrong}" in out_sha["message"] and "mbin/codebook.pth" in out_sha["message"]
    assert not (tmp_path / "vqgan-lc" / "converted" / "test-bad-sha--main").exists()
    assert not (tmp_path / "vqgan-lc" / "converted" / "test-bad-size--main").exists()


# ----------------------------------------------------------------------------------------- in-process, no network
def test_the_registry_table_holds_the_official_release_files() -> None:
    assert list_releases() == ["vqgan-lc-f16-100k", "vqgan-lc-f16-16k", "vqgan-lc-f8-100k", "vqgan-lc-gpt-f16-100k"]
    assert list_releases("gpt") == ["vqgan-lc-gpt-f16-100k"]
    mib = 1 << 20
    listed = {"vqgan-lc-f16-100k": 626, "vqgan-lc-f8-100k": 599, "vqgan-lc-f16-16k": 381}
    for r in iter_releases():
        assert r.repo == DEFAULT_REPO and r.revision == "main" and not r.pinned and r.note == MIRROR_NOTE
        assert all(f.path.startswith("mbin/") for f in r.files.values())
        if r.kind == "vqgan-lc":
            q = get_config(r.preset).quantizer
            assert r.codebook is not None and r.codebook.min_size == q.codebook_size * q.codebook_dim * 4
            assert r.checkpoint.size_problem(listed[r.name] * mib) is None
            assert r.checkpoint.size_problem((listed[r.name] - 2) * mib) is not None
            assert r.checkpoint.size_problem((listed[r.name] + 2) * mib) is not None
    cb = get_release("vqgan-lc-f16-100k").codebook
    assert cb is not None and cb.size_problem(100_000 * 768 * 4 + 1200) is None  # the float32 tensor + pickle
    assert cb.size_problem(100_000 * 768 * 4 - 1) is not None


def test_readme_shows_the_registry_table_verbatim() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| name | kind | repo @ revision | files | sizes | sha256 | licence |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) == release_table_markdown()  # no README row more or less than the code's
    assert end - start == 2 + len(list_releases())
    assert "unpinned, no known commit" in lines[start + 2] and "| unknown |" in lines[start + 2]


def test_a_pinned_row_shows_its_commit_and_sha256() -> None:
    r = get_release("vqgan-lc-gpt-f16-100k")
    pinned = replace(r, revision="a" * 40, pinned=True, checkpoint=replace(r.checkpoint, sha256="b" * 64))
    row = release_table_markdown([pinned]).splitlines()[2]
    assert f"`wufuheng/VQ` @ `{'a' * 40}`" in row and f"| `{'b' * 64}` |" in row and "unpinned" not in row


def test_release_repo_can_be_pointed_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_release("vqgan-lc-f8-100k").repo == DEFAULT_REPO
    monkeypatch.setenv(REPO_ENV, "mirror/copy")
    assert get_release("vqgan-lc-f8-100k").repo == "mirror/copy"
    assert get_release("vqgan-lc-f8-100k", repo="other/one").repo == "other/one"
    assert get_release("vqgan-lc-f8-100k").checkpoint.path == "mbin/vqgan-lc-100K-f8-dim4.pth"


def test_exact_size_and_bounds(tmp_path: Path) -> None:
    f = ReleaseFile("mbin/x.pth", "1M", size=10)
    assert f.size_problem(10) is None and "expected exactly 10" in (f.size_problem(11) or "")
    g = replace(f, size=None, min_size=5, max_size=8)
    assert g.size_problem(5) is None and g.size_problem(8) is None
    assert "at least 5" in (g.size_problem(4) or "") and "at most 8" in (g.size_problem(9) or "")


def test_a_release_kind_without_a_converter_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    import vqgan_lc.hub
    from vqgan_lc.hub import resolve_pretrained

    monkeypatch.delitem(vqgan_lc.hub._CONVERTERS, "gpt")  # as an older vqgan-lc without the GPT converter
    with pytest.raises(UnsupportedReleaseError, match="cannot convert gpt checkpoints yet"):
        resolve_pretrained("vqgan-lc-gpt-f16-100k", kind="gpt")
    with pytest.raises(CheckpointError, match="is a gpt release, not a vqgan-lc model"):
        resolve_pretrained("vqgan-lc-gpt-f16-100k")
    assert issubclass(UnsupportedReleaseError, VQGANLCError) and issubclass(PretrainedNotFoundError, VQGANLCError)


def test_without_huggingface_hub_local_dirs_load_and_names_say_what_to_install(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vqgan_lc.hub import resolve_pretrained

    for mod in ("huggingface_hub", "huggingface_hub.constants", "huggingface_hub.errors"):
        monkeypatch.setitem(sys.modules, mod, None)  # an import of it now raises ImportError
    assert resolve_pretrained(model_dir) == model_dir
    for name in ("vqgan-lc-f16-100k", "someorg/vqgan-lc-tiny"):
        with pytest.raises(VQGANLCError, match=r"needs huggingface_hub: pip install 'vqgan-lc\[hub\]'"):
            resolve_pretrained(name)


def test_local_paths_win_and_bad_names_are_one_sentence(model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from vqgan_lc.hub import resolve_pretrained

    assert resolve_pretrained(model_dir) == model_dir
    monkeypatch.chdir(tmp_path)
    shadow = tmp_path / "vqgan-lc-f16-100k"
    shadow.mkdir()
    assert resolve_pretrained("vqgan-lc-f16-100k") == Path("vqgan-lc-f16-100k")  # a local directory wins
    with pytest.raises(PretrainedNotFoundError, match=r"^runs/a/model is neither an existing path, a release name "
                       r"\(vqgan-lc-f16-100k, vqgan-lc-f16-16k, vqgan-lc-f8-100k\) nor a Hub repo id"):
        resolve_pretrained("runs/a/model")


# ----------------------------------------------------------------------------------------- model card, push
def _report(tmp_path: Path) -> Path:
    from vqgan_lc.metrics.report import REPORT_FORMAT, REPORT_FORMAT_VERSION, computed, not_computed

    report = {"format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION,
              "data": {"path": "photos", "images": 7, "image_size": 64, "mode": "images"},
              "metrics": {"psnr_y": computed(23.456), "utilization": computed(0.125, note="64 of 512 codes"),
                          "rfid": not_computed("needs Inception weights", "--inception-weights PATH")}}
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text(json.dumps(report))
    return out


def test_model_card_has_front_matter_config_provenance_and_report(model_dir: Path, tmp_path: Path) -> None:
    import yaml

    from vqgan_lc.hub import write_model_card

    d = tmp_path / "m"
    model = VQGANLC.from_pretrained(model_dir)
    model.save_pretrained(d, provenance={"codebook": {"file": "cb.safetensors", "extractor": "pixels", "k": 512}})
    card = write_model_card(d, _report(tmp_path), repo_id="me/tiny", license="mit").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "vqgan-lc" and front["license"] == "mit"
    assert {"image-tokenizer", "vqgan", "vqgan-lc"} <= set(front["tags"])
    assert 'VQGANLC.from_pretrained("me/tiny")' in card
    assert "| PSNR, Y channel (official) | 23.46 dB |" in card
    assert "| Codebook utilization | 12.50% | 64 of 512 codes |" in card
    assert "| rFID | not computed | needs Inception weights |" in card
    assert "extractor: `pixels`" in card and "512 codes of dimension 768" in card
    config_block = card.split("## Config")[1].split("```json\n")[1].split("```")[0]
    assert json.loads(config_block) == json.loads((d / "config.json").read_text())["config"]
    with pytest.raises(VQGANLCError, match="is not a vqgan-lc evaluation report"):
        write_model_card(d, d / "config.json")


def test_push_to_hub_uploads_the_directory_with_its_card(model_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    from vqgan_lc import hub as hubmod

    calls: dict[str, Any] = {}

    class FakeApi:
        def __init__(self, token: Any = None) -> None:
            calls["token"] = token

        def create_repo(self, repo_id: str, **kw: Any) -> None:
            calls["create"] = (repo_id, kw)

        def upload_folder(self, *, repo_id: str, folder_path: str, **kw: Any) -> Any:
            folder = Path(folder_path)
            calls["upload"] = (repo_id, kw)
            calls["files"] = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
            return type("Info", (), {"commit_url": f"https://hub.test/{repo_id}/commit/1"})()

    d = tmp_path / "m"
    VQGANLC.from_pretrained(model_dir).save_pretrained(d)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    url = hubmod.push_to_hub(d, "me/tiny", token="t0k", private=True, report=_report(tmp_path))
    assert url == "https://hub.test/me/tiny/commit/1"
    assert calls["create"] == ("me/tiny", {"private": True, "exist_ok": True, "token": "t0k"})
    assert calls["upload"][0] == "me/tiny" and calls["upload"][1]["allow_patterns"] == list(hubmod.HUB_FILES)
    assert {"config.json", "model.safetensors", "README.md"} <= set(calls["files"])
    assert calls["files"]["model.safetensors"] == (d / "model.safetensors").read_bytes()
    assert calls["files"]["config.json"] == (d / "config.json").read_bytes()
    assert b"library_name: vqgan-lc" in calls["files"]["README.md"] and b"23.46 dB" in calls["files"]["README.md"]

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedNotFoundError, match="offline mode is on"):
        hubmod.push_to_hub(d, "me/tiny")

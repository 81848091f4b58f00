"""The README's quick start runs verbatim: every ```python block, in order, in one namespace.

Downloads go through huggingface_hub's real client to ``tests/hub_server.py`` on 127.0.0.1 (``HF_ENDPOINT``),
which serves the official-format golden fixture under the release's own repo and file names; what the
blocks expect on disk (``cat.jpg``, a converted model directory, a token directory) is made first by
``tests/readme_runner.py``. Nothing reaches the internet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import FakeHub
from readme_runner import GPT_FILE, python_blocks

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).parent / "readme_runner.py"


def test_the_readme_has_python_blocks_that_use_the_release_by_name() -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3
    assert 'VQGANLC.from_pretrained("vqgan-lc-f16-100k")' in blocks[0]  # the quick start begins with one call
    for block in blocks:
        compile(block, "README block", "exec")  # each block is valid Python on its own


# ~35 s on a loaded 2-core machine (a fresh interpreter, two conversions, an encode, GPT sampling); in the default
# suite because issue 13 asks that `make test` runs the quick start verbatim
def test_the_readme_python_blocks_run_verbatim(official_tiny: Path, tmp_path: Path) -> None:
    from vqgan_lc.releases import get_release

    release = get_release("vqgan-lc-f16-100k")
    assert release.codebook is not None
    work, home = tmp_path / "work", tmp_path / "hf"
    work.mkdir()
    files = {release.checkpoint.path: official_tiny / "vqgan_lc_official_format.pth",
             release.codebook.path: official_tiny / "codebook.pth",
             get_release("vqgan-lc-gpt-f16-100k").checkpoint.path: work / GPT_FILE}  # written by the runner
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "VQGAN_LC_"))}
    with FakeHub({release.repo: files}) as hub:
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_HUB_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS="1",
                   TORCH_HOME=str(tmp_path / "torch"), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                   PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
        r = subprocess.run([sys.executable, str(RUNNER), str(ROOT / "README.md"), str(official_tiny)], env=env,
                           cwd=work, capture_output=True, text=True, timeout=600)
        requests = list(hub.requests)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])

    assert out["blocks"] == len(python_blocks((ROOT / "README.md").read_text()))
    # the numbers the quick start's comments state, on the fixture (f16, D' = 8, 1000 codes)
    assert out["ids"]["shape"] == [4, 16, 16] and out["ids"]["dtype"] == "int64"
    assert 0 <= out["ids"]["min"] and out["ids"]["max"] < 1000
    assert out["recon"]["shape"] == [4, 3, 256, 256]
    assert out["z"]["shape"] == [4, 8, 16, 16] and out["q_ids_shape"] == [4, 16, 16]
    assert out["x"]["shape"][0] == 1 and -1.0 <= out["x"]["min"] and out["x"]["max"] <= 1.0
    assert out["tokens_len"] == 3 and out["ds_type"] == "TokenDataset"
    assert out["sample_ids"] == [4, 16, 16] and out["sample_images"] == [4, 3, 256, 256]
    assert out["sample_labels"] == [207] * 4
    # the release was fetched once from the loopback Hub, then read from the converted cache
    gets = [p for m, p in requests if m == "GET" and "/resolve/" in p]
    assert sorted(gets) == sorted(f"/{release.repo}/resolve/main/{p}" for p in files)
    assert (home / "vqgan-lc" / "converted" / "vqgan-lc-f16-100k--main" / "model.safetensors").is_file()

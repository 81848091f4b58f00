"""What a user of the command line feels: a fast --help/--version (no torch import), results on stdout and
only vqgan_lc's log lines on stderr, one sentence for a bad flag value or a missing optional package."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vqgan_lc
from vqgan_lc import MissingDependencyError, UnknownPresetError, VQGANLCError, get_config
from vqgan_lc.cli import _args
from vqgan_lc.cli.main import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "official_tiny"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120, check=False)


# ----------------------------------------------------------------------------------------- lazy imports
def test_importing_the_cli_and_the_package_does_not_import_torch() -> None:
    r = _python("import sys, vqgan_lc, vqgan_lc.cli.main, vqgan_lc.errors\n"
                "from vqgan_lc import VQGANLCError, __version__\n"
                "print(__version__, 'torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [vqgan_lc.__version__, "False"]


def test_version_prints_the_version_without_importing_torch() -> None:
    r = _python("import sys\nfrom vqgan_lc.cli.main import main\n"
                "try:\n    main(['--version'])\nexcept SystemExit as e:\n    code = e.code\n"
                "print('torch' in sys.modules, code, file=sys.stderr)")
    assert r.stdout.strip() == f"vqgan-lc {vqgan_lc.__version__}" == "vqgan-lc 0.1.0"
    assert r.stderr.split() == ["False", "0"]


_HELP_SCRIPT = (
    "import sys, contextlib, io\nfrom vqgan_lc.cli.main import main, SUBCOMMANDS\n"
    "def run(argv):\n    out = io.StringIO()\n    with contextlib.redirect_stdout(out):\n"
    "        try:\n            main(argv)\n        except SystemExit as e:\n            assert e.code == 0, argv\n"
    "    return out.getvalue()\n"
    "top = run(['--help'])\n"
    "print(all(name in top for name in SUBCOMMANDS), 'torch' in sys.modules,\n"
    "      sorted(m for m in sys.modules if m.startswith('vqgan_lc.cli.') and m not in\n"
    "             ('vqgan_lc.cli.main', 'vqgan_lc.cli._args')))\n"
    "for name in NAMES:  # train's help comes from LightningCLI, which names its own prog\n"
    "    assert run([name, '--help']).startswith('usage: ' if name == 'train' else 'usage: vqgan-lc ' + name), name\n"
    "print('ok')"
)


def test_every_subcommand_help_works_and_top_level_help_imports_no_subcommand() -> None:
    names = [n for n in SUBCOMMANDS if n != "train"]  # train's LightningCLI help: the slow test below
    r = _python(_HELP_SCRIPT.replace("NAMES", repr(names)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["True False []", "ok"]


@pytest.mark.slow
def test_train_help_works() -> None:
    r = _python(_HELP_SCRIPT.replace("NAMES", "['train']"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["True False []", "ok"]


def test_the_package_exposes_its_names_lazily_and_lists_them() -> None:
    assert set(vqgan_lc.__all__) == set(vqgan_lc._LAZY) | {"__version__"}
    assert set(vqgan_lc.__all__) <= set(dir(vqgan_lc))
    for name in vqgan_lc.__all__:
        assert getattr(vqgan_lc, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vqgan_lc.nope  # noqa: B018


# ----------------------------------------------------------------------------------------- logging, stdout
def test_result_on_stdout_and_no_other_library_info_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = logging.getLogger("faiss.loader")  # faiss's loader logs INFO lines on import
    other.setLevel(logging.INFO)
    import vqgan_lc.convert as conv

    real = conv.convert_official

    def convert_and_chat(*a: object, **k: object) -> object:
        other.info("Loading faiss with AVX2 support.")
        other.warning("a real warning from another library")
        logging.getLogger("vqgan_lc.convert").info("a vqgan_lc progress line")
        return real(*a, **k)

    try:
        conv.convert_official = convert_and_chat  # type: ignore[assignment]
        argv = ["convert", "--checkpoint", str(FIXTURE / "vqgan_lc_official_format.pth"),
                "--config", str(FIXTURE / "vq_config.yaml"), "--out", str(tmp_path / "m")]
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert out.splitlines() == [f"wrote {tmp_path / 'm'}: f1, D'=8, codebook 256 x 64"]
        assert "Loading faiss" not in err and "a real warning from another library" in err
        assert "INFO vqgan_lc.convert: a vqgan_lc progress line" in err
        assert not any(" INFO " in line and " vqgan_lc" not in line for line in err.splitlines())
        assert main(["-v", *argv, "--overwrite"]) == 0  # -v shows other libraries' INFO lines
        assert "Loading faiss with AVX2 support." in capsys.readouterr().err
    finally:
        conv.convert_official = real  # type: ignore[assignment]
        other.setLevel(logging.NOTSET)
    assert not [h for h in logging.getLogger("vqgan_lc").handlers if getattr(h, "_vqgan_lc_cli", False)]


# ----------------------------------------------------------------------------------------- errors
def test_every_error_class_lives_in_errors() -> None:
    """No module but errors.py defines an exception class, and every class there is a VQGANLCError."""
    import ast
    import inspect

    from vqgan_lc import errors

    package = Path(errors.__file__).parent
    elsewhere = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and (b.id.endswith("Error") or b.id == "Exception") for b in node.bases
            ):
                elsewhere.append(f"{path.relative_to(package)}:{node.name}")
    assert elsewhere == []
    defined = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == "vqgan_lc.errors"]
    assert len(defined) > 15 and all(issubclass(c, VQGANLCError) for c in defined)


def test_unknown_preset_is_one_sentence_listing_the_names() -> None:
    from vqgan_lc.generate.gpt import gpt_config

    with pytest.raises(UnknownPresetError) as e:
        get_config("vqgan-lc-f32")
    assert isinstance(e.value, KeyError)
    assert str(e.value).startswith("unknown preset 'vqgan-lc-f32'; choose one of: ")
    assert "vqgan-lc-f16-100k" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownPresetError, match="unknown GPT preset 'gpt-huge'; choose one of: .*gpt-vqgan-lc-404m"):
        gpt_config("gpt-huge")


def test_missing_dependency_names_the_extra() -> None:
    from vqgan_lc._deps import is_available, require

    assert require("json", extra="codebook").__name__ == "json"
    assert not is_available("surely_not_installed_pkg_x")
    with pytest.raises(MissingDependencyError) as e:
        require("surely_not_installed_pkg_x", extra="codebook", purpose="k-means clustering")
    assert isinstance(e.value, ImportError)
    assert str(e.value) == ("the optional dependency 'surely_not_installed_pkg_x' is not installed (needed for "
                            "k-means clustering); install it with: pip install \"vqgan-lc[codebook]\"")


def test_build_codebook_checks_faiss_before_extracting(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import vqgan_lc._deps as deps

    real = deps.is_available
    monkeypatch.setattr(deps, "is_available", lambda m: False if m == "faiss" else real(m))
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    data = tmp_path / "data"
    data.mkdir()
    rc = main(["build-codebook", "--data", str(data), "--extractor", "pixels", "--k", "4",
               "--out", str(tmp_path / "cb.safetensors")])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.strip().splitlines() == ["vqgan-lc build-codebook: error: the optional dependency 'faiss' is not "
                                        "installed (needed for k-means clustering); install it with: "
                                        "pip install \"vqgan-lc[codebook]\""]
    assert not any(tmp_path.glob("cb*"))  # nothing extracted


@pytest.mark.parametrize(("argv", "message"), [
    (["encode", "--model", "m", "--data", "d", "--out", "o", "--batch-size", "0"],
     "argument --batch-size: expected a positive integer, got '0'"),
    (["encode", "--model", "m", "--data", "d", "--out", "o", "--num-workers", "-1"],
     "argument --num-workers: expected an integer >= 0, got '-1'"),
    (["encode", "--model", "m", "--data", "d", "--out", "o", "--device", "gpu"],
     "argument --device: expected a torch device such as cpu, cuda or cuda:1, got 'gpu'"),
    (["convert", "--checkpoint", "c.pth", "--preset", "vqgan-lc-f32", "--out", "o"],
     "argument --preset: unknown preset 'vqgan-lc-f32'; choose one of: "),
    (["decode", "--model", "m", "--tokens", "t", "--out", "o", "--batch-size", "ten"],
     "argument --batch-size: expected a positive integer, got 'ten'"),
    (["linear-probe", "--gpt", "g", "--tokens", "t", "--test-fraction", "1.5"],
     "argument --test-fraction: expected a number strictly between 0 and 1, got '1.5'"),
])
def test_bad_flag_values_are_one_sentence_without_traceback(argv: list[str], message: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[0].startswith(f"usage: vqgan-lc {argv[0]} ")
    assert lines[-1].startswith(f"vqgan-lc {argv[0]}: error: {message}")  # the usage, then one sentence
    assert sum(": error: " in line for line in lines) == 1


def test_validators_accept_the_good_values() -> None:
    assert _args.positive_int("3") == 3 and _args.nonnegative_int("0") == 0
    assert _args.positive_float("1e-4") == 1e-4 and _args.nonnegative_float("0") == 0.0
    assert _args.open_fraction("0.2") == 0.2
    assert [_args.device(d) for d in ("cpu", "cuda", "cuda:1", "mps")] == ["cpu", "cuda", "cuda:1", "mps"]
    assert _args.preset("tiny") == "tiny"
    for bad in ("inf", "nan", "-0.1"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.nonnegative_float(bad)
    assert set(SUBCOMMANDS) >= {"convert", "encode", "decode", "info", "build-codebook"}

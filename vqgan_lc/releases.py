"""The registry of official release checkpoints: one table, read by ``vqgan_lc.hub`` and the README.

Each ``Release`` names the files of one official checkpoint on a Hugging Face repo (by default the
unofficial mirror of the authors' release, ``wufuheng/VQ``, folder ``mbin/``), the revision to read,
what each file must look like (size, and sha256 where known) and how to convert it. The authors publish
on Google Drive only; the Drive folder ids are kept as ``origin`` so a user can check a file by hand.

Sizes: the mirror's listing gives sizes rounded to MiB/GiB ("626M"), not bytes, and no sha256 is known
here, so each file carries the byte range its listing allows (plus a lower bound from the tensor it
must hold). That still refuses a truncated download or the wrong file under the right name. A user who
has checked a file pins it exactly with ``register_release(replace(get_release(name), ...))``.

Revision: the project's references (``vqgan-lc-facts.md`` §8, the audits, the fixtures) record the mirror's
file names and listed sizes but no commit of ``wufuheng/VQ`` and no sha256 of any release file, so every row
reads ``main`` (``Release.pinned`` is False, ``UNPINNED_REASON`` says why in the README table) and checks
sizes only. Pass ``revision=<commit>`` to pin one; the converted directory records the commit it was made
from and every file's sha256, which ``register_release`` can then pin.

``VQGAN_LC_RELEASE_REPO=org/name`` (or ``repo=`` in ``get_release``/``resolve_pretrained``) reads the same
paths from another repo, e.g. a private copy of the mirror.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .config import ModelConfig

ReleaseKind = Literal["vqgan-lc", "gpt"]
"""What a release converts into: a ``VQGANLC`` tokenizer directory or a GPT prior directory."""

DEFAULT_REPO = "wufuheng/VQ"
DEFAULT_REVISION = "main"
REPO_ENV = "VQGAN_LC_RELEASE_REPO"
"""Environment variable naming another Hub repo that holds the release files under the same paths."""

MIRROR_NOTE = "unofficial mirror of the authors' release"
LICENCE_NOTE = "none stated by the authors (no LICENSE in zh460045050/VQGAN-LC); mirror card: apache-2.0"

UNPINNED_REASON = "no known commit"
"""Why the rows read ``main``: shown in the README table beside each unpinned revision."""
SHA256_UNKNOWN = "unknown"

_MIB = 1 << 20
_GIB = 1 << 30


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release: its path in the repo and what it must look like once downloaded.

    ``size`` is the exact byte count when known; otherwise ``min_size``/``max_size`` bound it (either may
    be None). ``listed`` is the size as the mirror's listing prints it (for people, not checks).
    ``sha256`` (hex) is checked once, before the first conversion, when known.
    """

    path: str
    listed: str
    size: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    sha256: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def size_problem(self, actual: int) -> str | None:
        """Why ``actual`` bytes cannot be this file, or None when the size fits."""
        if self.size is not None:
            return None if actual == self.size else f"is {actual:,} bytes, expected exactly {self.size:,}"
        if self.min_size is not None and actual < self.min_size:
            return f"is {actual:,} bytes, expected at least {self.min_size:,} (the listing says {self.listed})"
        if self.max_size is not None and actual > self.max_size:
            return f"is {actual:,} bytes, expected at most {self.max_size:,} (the listing says {self.listed})"
        return None

    def expected_size_text(self) -> str:
        """The size check in words, for the README table."""
        if self.size is not None:
            return f"{self.size:,} B"
        return self.listed


@dataclass(frozen=True)
class Release:
    """One official checkpoint: where its files are and how to convert them.

    ``checkpoint`` is the official pickle; ``codebook`` the k-means file it was trained with (None for a
    GPT, whose tokenizer is the release named in ``tokenizer``). ``preset`` names the architecture in
    ``vqgan_lc.registry``; ``config`` (tests, custom releases) overrides it. ``options`` are keyword
    arguments of the converter that the file itself does not hold (a GPT's head count:
    ``vqgan_lc.convert_gpt.convert_official_gpt``).
    """

    name: str
    kind: ReleaseKind
    checkpoint: ReleaseFile
    codebook: ReleaseFile | None
    preset: str | None
    description: str
    repo: str = DEFAULT_REPO
    revision: str = DEFAULT_REVISION
    pinned: bool = False
    licence: str = LICENCE_NOTE
    note: str = MIRROR_NOTE
    origin: str = ""
    tokenizer: str | None = None
    config: ModelConfig | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> dict[str, ReleaseFile]:
        """The files to download, by role (``checkpoint``, ``codebook``)."""
        out = {"checkpoint": self.checkpoint}
        if self.codebook is not None:
            out["codebook"] = self.codebook
        return out


def _listed_mib(mib: int) -> dict[str, Any]:
    """Bounds for a listing that printed ``mib``M (rounded either way to a whole MiB)."""
    return {"min_size": (mib - 1) * _MIB, "max_size": (mib + 1) * _MIB}


def _listed_gib(tenths: int) -> dict[str, Any]:
    """Bounds for a listing that printed ``tenths / 10``G."""
    return {"min_size": (tenths - 1) * _GIB // 10, "max_size": (tenths + 1) * _GIB // 10}


_DRIVE_VQGAN = "Google Drive folder 12824gtaR_upGH1DJRNfAjQFiw8c1FmwJ (VQGAN-LC), 1eTKbOoI8ootxexNgBLs0Dvz-qOdZM21m (codebooks)"

# The 100k codebook holds a (100000, 768) float32 tensor: at least 307,200,000 bytes (= 293.0 MiB, as listed).
_CODEBOOK_100K = ReleaseFile("mbin/codebook-100K.pth", "293M", min_size=100_000 * 768 * 4, max_size=294 * _MIB)
# The mirror lists codebook-16384.pth as "8.4G", which cannot be a (16384, 768) float32 tensor alone
# (48 MiB); a tensor saved as a view of a larger storage would explain it, so only the lower bound is checked.
_CODEBOOK_16K = ReleaseFile("mbin/codebook-16384.pth", "8.4G (listing; 48 MiB expected)", min_size=16_384 * 768 * 4)

_TABLE: tuple[Release, ...] = (
    Release(
        name="vqgan-lc-f16-100k", kind="vqgan-lc", preset="vqgan-lc-f16-100k",
        description="the paper's tokenizer: f16 (256 px -> 16x16 ids), 100,000 CLIP codes, D'=8",
        checkpoint=ReleaseFile("mbin/vqgan-lc-100K-f16-dim8.pth", "626M", **_listed_mib(626)),
        codebook=_CODEBOOK_100K, origin=_DRIVE_VQGAN,
    ),
    Release(
        name="vqgan-lc-f8-100k", kind="vqgan-lc", preset="vqgan-lc-f8-100k",
        description="f8 (256 px -> 32x32 ids), 100,000 CLIP codes, D'=4",
        checkpoint=ReleaseFile("mbin/vqgan-lc-100K-f8-dim4.pth", "599M", **_listed_mib(599)),
        codebook=_CODEBOOK_100K, origin=_DRIVE_VQGAN,
    ),
    Release(
        name="vqgan-lc-f16-16k", kind="vqgan-lc", preset="vqgan-lc-f16-16k",
        description="f16 with the 16,384-entry codebook (released on request, official issue #1)",
        checkpoint=ReleaseFile("mbin/vqgan-lc-16384-f16-dim8.pth", "381M", **_listed_mib(381)),
        codebook=_CODEBOOK_16K, origin=_DRIVE_VQGAN,
    ),
    Release(
        name="vqgan-lc-gpt-f16-100k", kind="gpt", preset=None, tokenizer="vqgan-lc-f16-100k",
        description="the official class-conditional GPT (minGPT, 24 layers, 1024 wide) over vqgan-lc-f16-100k ids",
        checkpoint=ReleaseFile("mbin/gpt-lc-100K-f16.pth", "1.6G", **_listed_gib(16)),
        codebook=None, origin="Google Drive folder 1DDHYpEKJUeVePIPzLf72DbUZ7Qa9x9yx (GPT)",
        # models/models_gpt.py: n_head 16 (not stored in the file), n_vision_words 100,000
        options={"n_head": 16, "n_codes": 100_000},
    ),
)

_RELEASES: dict[str, Release] = {r.name: r for r in _TABLE}


def list_releases(kind: ReleaseKind | None = None) -> list[str]:
    """Names of the registered releases (of one ``kind`` if given), sorted."""
    return sorted(n for n, r in _RELEASES.items() if kind is None or r.kind == kind)


def is_release(name: str) -> bool:
    return name in _RELEASES


def get_release(name: str, *, repo: str | None = None) -> Release:
    """The registered release ``name``, read from ``repo`` (else ``$VQGAN_LC_RELEASE_REPO``, else the table's)."""
    if name not in _RELEASES:
        raise KeyError(f"unknown release {name!r}; registered: {', '.join(list_releases())}")
    release = _RELEASES[name]
    repo = repo or os.environ.get(REPO_ENV) or None
    return replace(release, repo=repo) if repo and repo != release.repo else release


def register_release(release: Release, *, overwrite: bool = False) -> None:
    """Add ``release`` to the registry (``overwrite=True`` replaces a row of the same name, e.g. to pin a
    revision or a sha256 you have checked)."""
    if release.name in _RELEASES and not overwrite:
        raise ValueError(f"release {release.name!r} is already registered; pass overwrite=True to replace it")
    _RELEASES[release.name] = release


def iter_releases() -> Iterator[Release]:
    """Every registered release, by name."""
    for name in list_releases():
        yield _RELEASES[name]


def release_table_markdown(releases: Iterable[Release] | None = None) -> str:
    """The registry as the Markdown table the README shows: one row per release of ``releases`` (default: the
    built-in table, default repos). A pinned row shows its commit; a row with a known sha256 shows it."""
    lines = ["| name | kind | repo @ revision | files | sizes | sha256 | licence |", "|---|---|---|---|---|---|---|"]
    for r in _TABLE if releases is None else releases:
        files = "<br>".join(f"`{f.path}`" for f in r.files.values())
        sizes = " + ".join(f.expected_size_text() for f in r.files.values())
        shas = [f"`{f.sha256}`" if f.sha256 else SHA256_UNKNOWN for f in r.files.values()]
        sha = SHA256_UNKNOWN if set(shas) == {SHA256_UNKNOWN} else "<br>".join(shas)
        rev = f"`{r.revision}`" if r.pinned else f"{r.revision} (unpinned, {UNPINNED_REASON})"
        lines.append(f"| `{r.name}` | {r.kind} | `{r.repo}` @ {rev} | {files} | {sizes} | {sha} | {r.licence} |")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_REPO",
    "DEFAULT_REVISION",
    "LICENCE_NOTE",
    "MIRROR_NOTE",
    "REPO_ENV",
    "SHA256_UNKNOWN",
    "UNPINNED_REASON",
    "Release",
    "ReleaseFile",
    "ReleaseKind",
    "get_release",
    "is_release",
    "iter_releases",
    "list_releases",
    "register_release",
    "release_table_markdown",
]

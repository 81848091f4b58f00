"""Linear probe: how discriminative an autoregressive prior's hidden states are (DiGIT §4, Table 3).

Features are the hidden states of one block, mean-pooled over the target positions of the whole
sequence (the null/start token first, then the ids), computed without gradients; a linear classifier
on standardised features is trained with full-batch L-BFGS (cross-entropy + L2) and its accuracy on a
held-out split is reported. DiGIT trains one SGD head per layer on ImageNet with augmentation for
100k updates; this is the same measurement at a smaller scale.

The probe feeds the null token, never the label: a class-conditional GPT needs ``null_class=True``.

``paper_linear_probe`` is DiGIT's protocol (``model_linearprobe.py``, ``dino_base_linearprobe_sgd.yaml``):
one ``Linear(n_embd, n_classes)`` head per probed state (default: the embedding output and blocks
``0 .. n_layer - 2``, fairseq's ``inner_states[0 .. L-1]``; the last block is never probed), initialised
N(0, 0.01), trained jointly (one optimizer, one backward of the summed losses) on mean-pooled, detached
hidden states with SGD (momentum 0.9, lr 0.4, no weight decay) and a cosine schedule. The official run
re-tokenizes RandomResizedCrop views each step; here augmentation comes from the rows of the dataset
(e.g. several stored augmented encodings of each image).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .gpt import GPT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    """Accuracies in [0, 1] of the linear probe on block ``layer`` (0-based)."""

    accuracy: float
    train_accuracy: float
    layer: int
    n_train: int
    n_test: int
    n_classes: int


@torch.no_grad()
def probe_features(gpt: GPT, dataset: torch.utils.data.Dataset, *, layer: int = -1, batch_size: int = 64,
                   prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled hidden states of block ``layer`` for every row of ``dataset``.

    ``dataset`` yields ``(ids (h, w) or (T,), label[, prefix])`` (``TokenDataset``, ``GPTTokenDataset``).
    Returns ``(N, n_embd)`` float32 features and ``(N,)`` int64 labels.
    """
    if gpt.config.null_id is None:
        raise ValueError("the linear probe feeds the null class; this class-conditional GPT has none "
                         "(train with null_class: true)")
    gpt.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, labels = [], []
    for batch in loader:
        ids, y = batch[0], batch[1]
        pre = batch[2] if prefix and len(batch) > 2 and batch[2].numel() else None
        ids = ids.reshape(ids.shape[0], -1)
        h = gpt.hidden_states(ids[:, :-1], None, pre, layer=layer)  # (B, T, D): cond + T-1 ids
        feats.append(h.mean(1).float().cpu())
        labels.append(torch.as_tensor(y).long().reshape(-1))
    return torch.cat(feats), torch.cat(labels)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic shuffled ``(train, test)`` split of ``range(n)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:], perm[:n_test]


def _labelled_split(
    features: Callable[[torch.utils.data.Dataset], tuple[torch.Tensor, torch.Tensor]],
    dataset: torch.utils.data.Dataset, test_dataset: torch.utils.data.Dataset | None, test_fraction: float, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(x, y, xt, yt, n_classes)``: ``features`` of ``dataset`` and of ``test_dataset`` (or a seeded
    ``test_fraction`` split of ``dataset``), unlabelled rows (label -1) dropped from both."""
    x, y = features(dataset)
    if test_dataset is not None:
        xt, yt = features(test_dataset)
    else:
        tr, te = split_indices(len(y), test_fraction, seed)
        x, y, xt, yt = x[tr], y[tr], x[te], y[te]
    x, y = x[y >= 0], y[y >= 0]
    xt, yt = xt[yt >= 0], yt[yt >= 0]
    if not len(y) or not len(yt):
        raise ValueError("the linear probe needs labelled rows in both the train and the test split")
    return x, y, xt, yt, int(max(y.max(), yt.max())) + 1


def fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-3, steps: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression on ``(N, D)`` features by full-batch L-BFGS."""
    lin = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return lin


def linear_probe(
    gpt: GPT,
    dataset: torch.utils.data.Dataset,
    *,
    layer: int = -1,
    test_dataset: torch.utils.data.Dataset | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    l2: float = 1e-3,
    steps: int = 200,
    batch_size: int = 64,
) -> ProbeResult:
    """Accuracy of a linear classifier on mean-pooled block-``layer`` features of ``gpt``.

    Args:
        dataset: labelled rows ``(ids, label[, prefix])``; rows with label -1 are dropped.
        layer: 0-based block index, negative from the end.
        test_dataset: the held-out split; without it a deterministic ``test_fraction`` of ``dataset``
            (shuffled with ``seed``) is held out.
        l2, steps: L2 weight on the classifier and L-BFGS iterations.
    """
    x, y, xt, yt, n_classes = _labelled_split(
        lambda ds: probe_features(gpt, ds, layer=layer, batch_size=batch_size), dataset, test_dataset,
        test_fraction, seed)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    x, xt = (x - mu) / sd, (xt - mu) / sd
    lin = fit_linear(x, y, n_classes, l2=l2, steps=steps)
    with torch.no_grad():
        acc = (lin(xt).argmax(1) == yt).float().mean().item()
        train_acc = (lin(x).argmax(1) == y).float().mean().item()
    block = layer % gpt.config.n_layer
    log.info("linear probe on block %d: test accuracy %.4f (train %.4f), %d/%d rows, %d classes",
             block, acc, train_acc, len(y), len(yt), n_classes)
    return ProbeResult(accuracy=acc, train_accuracy=train_acc, layer=block, n_train=len(y), n_test=len(yt),
                       n_classes=n_classes)


ProbeMethod = Literal["paper", "lbfgs"]


@dataclass(frozen=True)
class PaperProbeResult:
    """Accuracies in [0, 1] of the jointly trained heads; ``states[i]`` is -1 for the embedding output,
    else the 0-based block whose output head ``i`` reads."""

    accuracies: list[float]
    train_accuracies: list[float]
    states: list[int]
    n_train: int
    n_test: int
    n_classes: int
    steps: int

    @property
    def best(self) -> tuple[int, float]:
        """``(state, accuracy)`` of the best head."""
        i = max(range(len(self.accuracies)), key=self.accuracies.__getitem__)
        return self.states[i], self.accuracies[i]


def paper_states(gpt: GPT) -> list[int]:
    """DiGIT's probed states: the embedding output (-1) and blocks ``0 .. n_layer - 2``."""
    return [-1, *range(gpt.config.n_layer - 1)]


@torch.no_grad()
def all_pooled_states(gpt: GPT, dataset: torch.utils.data.Dataset, states: Sequence[int], *, batch_size: int = 64,
                      prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled (over the cond token and the input ids) outputs of the embedding (-1) and the
    given blocks: ``(N, len(states), n_embd)`` float32 and ``(N,)`` labels. Detached (no grad)."""
    if gpt.config.null_id is None:
        raise ValueError("the linear probe feeds the null class; this class-conditional GPT has none "
                         "(train with null_class: true)")
    n = gpt.config.n_layer
    bad = [s for s in states if not -1 <= s < n]
    if bad:
        raise ValueError(f"probed states must lie in [-1, {n - 1}] (-1: embedding output), got {bad}")
    gpt.eval()
    n_in = gpt.config.n_positions - 1  # every id with an EOS target (fairseq's 257 positions), else T - 1
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, labels = [], []
    p_len = gpt.config.prefix_len
    for batch in loader:
        ids, y = batch[0], batch[1]
        pre = batch[2] if prefix and len(batch) > 2 and batch[2].numel() else None
        ids = gpt._check_ids(ids.reshape(ids.shape[0], -1))[:, :n_in]
        h = gpt.embed(ids, None, pre)
        out = {-1: h[:, p_len:].mean(1)}
        for i, block in enumerate(gpt.blocks[: max(states) + 1]):
            h = block(h)
            out[i] = h[:, p_len:].mean(1)
        feats.append(torch.stack([out[s] for s in states], 1).float().cpu())
        labels.append(torch.as_tensor(y).long().reshape(-1))
    return torch.cat(feats), torch.cat(labels)


def train_joint_heads(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, steps: int = 1000, batch_size: int = 256,
                      lr: float = 0.4, momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0) -> torch.nn.ModuleList:
    """One linear head per state of ``x`` (N, S, D), trained jointly: summed cross-entropy, one SGD
    optimizer, one backward per step, cosine learning rate from ``lr`` to 0 over ``steps``."""
    g = torch.Generator().manual_seed(seed)
    heads = torch.nn.ModuleList(torch.nn.Linear(x.shape[2], n_classes) for _ in range(x.shape[1]))
    for h in heads:
        torch.nn.init.normal_(h.weight, std=0.01, generator=g)  # type: ignore[arg-type]
        torch.nn.init.zeros_(h.bias)  # type: ignore[arg-type]
    opt = torch.optim.SGD(heads.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    n = x.shape[0]
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
            xb, yb = x[idx], y[idx]
            loss = sum(F.cross_entropy(head(xb[:, i]), yb) for i, head in enumerate(heads))
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            sched.step()
    return heads


def paper_linear_probe(
    gpt: GPT,
    dataset: torch.utils.data.Dataset,
    *,
    states: Sequence[int] | None = None,
    test_dataset: torch.utils.data.Dataset | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 0.4,
    momentum: float = 0.9,
    feature_batch_size: int = 64,
) -> PaperProbeResult:
    """DiGIT's linear probe (see the module docstring); ``steps`` is 100k in the paper."""
    states = list(paper_states(gpt) if states is None else states)
    x, y, xt, yt, n_classes = _labelled_split(
        lambda ds: all_pooled_states(gpt, ds, states, batch_size=feature_batch_size), dataset, test_dataset,
        test_fraction, seed)
    heads = train_joint_heads(x, y, n_classes, steps=steps, batch_size=batch_size, lr=lr, momentum=momentum, seed=seed)
    with torch.no_grad():
        acc = [(h(xt[:, i]).argmax(1) == yt).float().mean().item() for i, h in enumerate(heads)]
        tr_acc = [(h(x[:, i]).argmax(1) == y).float().mean().item() for i, h in enumerate(heads)]
    res = PaperProbeResult(accuracies=acc, train_accuracies=tr_acc, states=states, n_train=len(y), n_test=len(yt),
                           n_classes=n_classes, steps=steps)
    log.info("paper linear probe: best state %d, test accuracy %.4f (%d heads, %d steps)", *res.best, len(heads), steps)
    return res


__all__ = ["PaperProbeResult", "ProbeMethod", "ProbeResult", "all_pooled_states", "fit_linear", "linear_probe",
           "paper_linear_probe", "paper_states", "probe_features", "split_indices", "train_joint_heads"]

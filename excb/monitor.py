"""Watching a long pretraining run: online k-NN and collapse alarms.

* **Online k-NN** (``monitor.knn_every`` epochs): the teacher backbone's weighted 20-NN top-1
  on a fixed labelled subset — ``monitor.n_train`` bank images and ``monitor.n_val`` queries,
  evenly spaced over the splits of ``monitor.data`` (default: the pretraining data) — with the
  evaluation view (resize + centre crop, no augmentation), features in fp16 on a GPU. The same
  value is measured once on the untrained network (epoch 0, the random-init reference), so a
  curve that never rises above it is visible after a few epochs instead of after the
  downstream stages. The arithmetic is :func:`excb.knn.knn_classify`, the k-NN stage's.
* **Collapse alarms**, from statistics the trainer already computes: clusters used, the
  largest cluster's share, view agreement against chance, the loss pinned at the value of a
  uniform prediction (G·ln K), the online k-NN at or below random init. Each alarm is one line
  naming the symptom and the likely cause; ``monitor.stop_on_collapse`` ends the run after the
  epoch's checkpoint is written (rerunning resumes from it).

Neither touches the training state or the random streams, so a monitored run trains exactly
like an unmonitored one.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from excb import ExcbError
from excb import distributed as D
from excb.cluster_stats import get_stat
from excb.config import merge_section
from excb.data import DATA_DEFAULTS, build_dataset

MONITOR_DEFAULTS: Dict[str, Any] = {
    "knn_every": 0,            # >0: online k-NN every N epochs (and after the last one); 0: off
    "data": None,              # labelled data section (like `data`); None: the pretraining data
    "n_train": 5000,           # k-NN bank images, evenly spaced over the train split (0: all)
    "n_val": 1000,             # query images from the val split (0: all)
    "k": 20,
    "temperature": 0.07,
    "batch_size": 256,
    "alarms": True,            # one-line collapse / no-learning warnings
    "grace_epochs": 1,         # no alarm before this many epochs are done
    "patience": 2,             # a symptom must hold this many consecutive epochs (k-NN: checks)
    "stop_on_collapse": False,  # end the run (checkpoint kept) when a collapse alarm fires
}


# ----------------------------------------------------------------------------- online k-NN
def spaced_indices(n: int, cap: int) -> List[int]:
    """``cap`` indices spread evenly over ``range(n)`` (all of them when ``cap`` is 0 or >= n).

    Evenly spaced rather than the first ``cap``: an ImageFolder lists its classes in order, so a
    prefix would hold one or two classes."""
    if cap <= 0 or cap >= n:
        return list(range(n))
    return np.unique(np.round(np.linspace(0, n - 1, cap)).astype(np.int64)).tolist()


class OnlineKnn:
    """The fixed labelled subset and the k-NN measurement of a backbone on it."""

    def __init__(self, mcfg: Dict[str, Any], pretrain_cfg: Dict[str, Any]):
        from excb.augment import eval_transform

        self.cfg = mcfg
        data = mcfg["data"] if mcfg["data"] is not None else pretrain_cfg["data"]
        if not isinstance(data, dict):
            raise ExcbError(f"config: key 'monitor.data' must be a data section (e.g. {{name: imagefolder, root: ...}}) "
                            f"or null, got {data!r}")
        self.data = merge_section(dict(DATA_DEFAULTS), data, DATA_DEFAULTS, "config: section 'monitor.data'")
        a = pretrain_cfg["augment"]
        crop = int(a["global_size"])
        resize = int(round(crop * a["eval_resize"] / a["eval_crop"]))   # as the final cluster pass
        self.resize, self.crop = resize, crop
        tf = eval_transform(resize, crop)
        train = build_dataset(self.data, "train", tf)
        val = build_dataset(self.data, "val", tf)
        if min(train.targets, default=-1) < 0:
            raise ExcbError("config: key 'monitor.data' names a data set without labels; the online k-NN needs a "
                            "labelled ImageFolder (one folder per class) or data.name=demo")
        self.num_classes = len(train.classes)
        self.train = torch.utils.data.Subset(train, spaced_indices(len(train), int(mcfg["n_train"])))
        self.val = torch.utils.data.Subset(val, spaced_indices(len(val), int(mcfg["n_val"])))
        self.train_y = torch.as_tensor([train.targets[i] for i in self.train.indices], dtype=torch.long)
        self.val_y = torch.as_tensor([val.targets[i] for i in self.val.indices], dtype=torch.long)

    @torch.no_grad()
    def _features(self, backbone: nn.Module, ds, device: torch.device, dtype: torch.dtype, amp: str) -> torch.Tensor:
        from excb.train import autocast_ctx

        loader = torch.utils.data.DataLoader(ds, batch_size=int(self.cfg["batch_size"]), shuffle=False, num_workers=0)
        out = []
        for x, _ in loader:
            with autocast_ctx(amp, device):
                f = backbone(x.to(device, non_blocking=True))
            out.append(f.float().to(dtype))   # as the k-NN stage: float, then the bank dtype
        return torch.cat(out)

    @torch.no_grad()
    def measure(self, backbone: nn.Module, device: torch.device, amp: str = "auto") -> Dict[str, float]:
        """Top-1 (percent) of the weighted ``k``-NN vote; the backbone's mode and the RNG are restored."""
        from excb.knn import knn_classify, knn_metrics, l2_normalize

        t0 = time.time()
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                bank = l2_normalize(self._features(backbone, self.train, device, dtype, amp), dtype=dtype)
                queries = self._features(backbone, self.val, device, dtype, amp)
        finally:
            backbone.train(was_training)
        k = int(self.cfg["k"])
        preds = knn_classify(bank, self.train_y.to(device), queries, [k], float(self.cfg["temperature"]),
                             self.num_classes, normalized=True)
        m = knn_metrics(preds, self.val_y, bank.shape[0], self.num_classes)
        return {"knn_top1": m[f"top1_k{k}"], "knn_s": time.time() - t0}


# ----------------------------------------------------------------------------- alarms
@dataclass
class Alarm:
    epoch: int
    severity: str      # "collapse" (stop_on_collapse acts on it) or "warning"
    symptom: str
    cause: str

    def line(self) -> str:
        return f"ALARM epoch {self.epoch} ({self.severity}): {self.symptom}; likely cause: {self.cause}"


def likely_cause(cfg: Dict[str, Any], rows_per_step: int) -> str:
    """What usually makes this recipe collapse, with its numbers."""
    b = cfg["balancer"]
    lr = cfg["optim"]["lr"]
    if b["name"] == "excb":
        K, m = cfg["centroids"]["K"], float(b["momentum"])
        ratio = K * (1.0 - m) / max(rows_per_step, 1)
        return (f"the cluster-size estimate s is noisy when K x (1 - m_s) is large against the rows per step "
                f"(here {K} x {1 - m:.3g} / {rows_per_step} rows = {ratio:.2g}; keep it well below 1: raise "
                f"balancer.momentum or batch_size), or optim.lr={lr:g} is too high")
    if b["name"] == "none":
        return f"balancer.name=none: nothing keeps the clusters apart (use excb); optim.lr={lr:g}"
    if b["name"] == "dino-centering":
        return (f"centering too slow for the sharpening (balancer.center_momentum={b['center_momentum']}, "
                f"loss.teacher_temp={cfg['loss']['teacher_temp']}), or optim.lr={lr:g} is too high")
    return f"balancer '{b['name']}' settings or optim.lr={lr:g}"


class CollapseDetector:
    """Symptoms from one epoch's statistics (and the online k-NN), persistent over ``patience`` epochs."""

    def __init__(self, cfg: Dict[str, Any], rows_per_epoch: int, rows_per_step: int):
        m = cfg["monitor"]
        self.K = int(cfg["centroids"]["K"])
        self.G = int(cfg["augment"]["n_global"])
        self.rows_per_epoch = rows_per_epoch
        self.grace, self.patience = int(m["grace_epochs"]), max(int(m["patience"]), 1)
        self.cause = likely_cause(cfg, rows_per_step)
        self.streak: Dict[str, int] = {}

    def symptoms(self, ep: Dict[str, float], knn: Optional[Dict[str, float]]) -> Dict[str, tuple]:
        """{name: (severity, text)} of the symptoms present in this epoch's statistics."""
        K, out = self.K, {}
        # clusters a uniform assignment of this many rows would reach
        expected_used = K * (1.0 - (1.0 - 1.0 / K) ** self.rows_per_epoch)
        used = get_stat(ep, "train_assign_used")
        if used is not None and used * K < 0.1 * expected_used:
            out["clusters"] = ("collapse", f"only {used * K:.0f} of {K} clusters used (a uniform assignment "
                                           f"reaches ~{expected_used:.0f})")
        share = get_stat(ep, "train_assign_size_max", 0.0) / K
        if share > max(0.1, 10.0 / K):
            out["largest"] = ("collapse", f"one cluster takes {100 * share:.0f} % of the images "
                                          f"(balanced: {100 / K:.2g} %)")
        loss, uniform = ep.get("loss"), self.G * math.log(K)
        if loss is not None and abs(loss - uniform) < 0.01 * uniform:
            out["loss"] = ("collapse", f"loss {loss:.4g} pinned at G ln K = {uniform:.4g} (a uniform prediction)")
        agree, chance = ep.get("agreement"), ep.get("agreement_chance")
        images = self.rows_per_epoch / self.G
        # only when the epoch's images rule out a meaningful agreement: even 3 standard errors above the
        # measured value stay below 1.5 x chance (a small epoch measures too coarsely to say)
        if agree is not None and chance and \
                agree + 3.0 * math.sqrt(chance * (1.0 - chance) / max(images, 1.0)) <= 1.5 * chance:
            out["agreement"] = ("warning", f"views agree on the cluster {100 * agree:.2g} % of the time, no more than "
                                           f"chance ({100 * chance:.2g} %)")
        if knn is not None and knn.get("knn_top1") is not None and knn.get("random_init") is not None:
            if knn["knn_top1"] <= knn["random_init"] and not knn.get("improving", False):
                out["knn"] = ("warning", f"online k-NN {knn['knn_top1']:.1f} % at or below random init "
                                         f"{knn['random_init']:.1f} % and not improving")
        return out

    def update(self, epoch: int, ep: Dict[str, float], knn: Optional[Dict[str, float]]) -> List[Alarm]:
        """Alarms of this epoch: symptoms present ``patience`` epochs in a row, after the grace period."""
        found = self.symptoms(ep, knn)
        for name in list(self.streak):
            if name not in found and not (name == "knn" and knn is None):
                del self.streak[name]      # k-NN streaks count checks, so epochs without one keep them
        for name in found:
            if name != "knn" or knn is not None:
                self.streak[name] = self.streak.get(name, 0) + 1
        if epoch < self.grace:
            return []
        alarms = []
        for severity in ("collapse", "warning"):
            hits = [found[n][1] for n in found if found[n][0] == severity and self.streak.get(n, 0) >= self.patience]
            if hits:
                alarms.append(Alarm(epoch, severity, " and ".join(hits), self.cause if severity == "collapse" else
                                    "the backbone is not learning yet: check optim.lr, the augmentations and the "
                                    "balancer (" + self.cause + ")"))
        return alarms


# ----------------------------------------------------------------------------- the hook
class Monitor:
    """What the training loop calls: ``start`` once, ``end_of_epoch`` after every epoch."""

    def __init__(self, cfg: Dict[str, Any], rows_per_epoch: int, rows_per_step: int,
                 log: Callable[[Dict[str, Any]], None], say: Callable[[str], None] = print):
        self.cfg = cfg
        self.m = {**MONITOR_DEFAULTS, **(cfg.get("monitor") or {})}
        self.log, self.say = log, say
        self.detector = CollapseDetector({**cfg, "monitor": self.m}, rows_per_epoch, rows_per_step)
        self.knn: Optional[OnlineKnn] = None
        self.state: Dict[str, Any] = {"random_init": None, "history": [], "alarms": []}
        every = int(self.m["knn_every"])
        if every < 0:
            raise ExcbError(f"config: key 'monitor.knn_every' must be >= 0, got {every}")
        if every and D.is_main():
            self.knn = OnlineKnn(self.m, cfg)

    def state_dict(self) -> Dict[str, Any]:
        return {**self.state, "streak": dict(self.detector.streak)}

    def load_state_dict(self, st: Optional[Dict[str, Any]]) -> None:
        if st:
            self.detector.streak = dict(st.get("streak", {}))
            self.state = {k: v for k, v in st.items() if k != "streak"}

    def _measure(self, backbone: nn.Module, device: torch.device) -> Optional[Dict[str, float]]:
        res = self.knn.measure(backbone, device, self.cfg["amp"]) if self.knn is not None else None
        return D.broadcast_object(res)

    def start(self, backbone: nn.Module, device: torch.device) -> None:
        """The random-init reference (epoch 0), once per run; kept in the checkpoint on resume."""
        if not self.m["knn_every"] or self.state["random_init"] is not None:
            return
        res = self._measure(backbone, device)
        self.state["random_init"] = res["knn_top1"]
        self.log({"kind": "monitor", "epoch": 0, "knn_top1": res["knn_top1"], "knn_random_init": res["knn_top1"],
                  "knn_s": res["knn_s"], "n_bank": len(self.knn.train) if self.knn else None,
                  "n_query": len(self.knn.val) if self.knn else None})

    def end_of_epoch(self, epoch: int, backbone: nn.Module, ep: Dict[str, float], device: torch.device,
                     last: bool) -> bool:
        """Measure (when due), raise alarms; adds ``knn_top1`` to ``ep``. True: stop the run now."""
        every = int(self.m["knn_every"])
        knn = None
        if every and (epoch % every == 0 or last):
            res = self._measure(backbone, device)
            hist = self.state["history"]
            improving = bool(hist) and res["knn_top1"] > max(h for _, h in hist[-self.m["patience"]:])
            hist.append((epoch, res["knn_top1"]))
            ep["knn_top1"] = res["knn_top1"]
            ep["knn_random_init"] = self.state["random_init"]
            knn = {"knn_top1": res["knn_top1"], "random_init": self.state["random_init"], "improving": improving}
            self.log({"kind": "monitor", "epoch": epoch, "knn_top1": res["knn_top1"],
                      "knn_random_init": self.state["random_init"], "knn_s": res["knn_s"]})
        if not self.m["alarms"]:
            return False
        alarms = self.detector.update(epoch, ep, knn)
        stop = False
        for a in alarms:
            self.say(f"[excb] {a.line()}")
            self.log({"kind": "alarm", **asdict(a)})
            self.state["alarms"].append(asdict(a))
            if a.severity == "collapse" and self.m["stop_on_collapse"]:
                stop = True
        if stop:
            self.say(f"[excb] monitor.stop_on_collapse: stopping after epoch {epoch}; the checkpoint of this epoch is "
                     f"kept (rerun with pretrain.monitor.stop_on_collapse=false to continue)")
        return stop


def validate_monitor(m: Dict[str, Any], source: str = "config") -> None:
    for key in ("n_train", "n_val", "grace_epochs", "patience", "knn_every"):
        if int(m[key]) < 0:
            raise ExcbError(f"{source}: key 'monitor.{key}' must be >= 0, got {m[key]}")
    for key in ("k", "batch_size", "temperature"):
        if not m[key] > 0:
            raise ExcbError(f"{source}: key 'monitor.{key}' must be > 0, got {m[key]}")


def knn_curve(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """(epochs, top-1) of the online k-NN and its random-init reference from log.jsonl records."""
    pts = {int(r["epoch"]): float(r["knn_top1"]) for r in records if r.get("kind") == "monitor" and r.get("epoch")}
    ref = next((float(r["knn_random_init"]) for r in records if r.get("kind") == "monitor"
                and r.get("knn_random_init") is not None), None)
    ep = sorted(pts)
    return {"epochs": ep, "top1": [pts[e] for e in ep], "random_init": ref}

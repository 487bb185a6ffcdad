"""How each paper table looks: its columns and how its rows split into sections."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


# ----------------------------------------------------------------------------- layouts
def latex_escape(s: Any) -> str:
    """Escape LaTeX's special characters in plain text."""
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(rep.get(ch, ch) for ch in str(s))


@dataclass
class Column:
    key: str
    md: str                       # header in Markdown / CSV
    tex: str                      # header in LaTeX (raw)
    metric: bool = False


@dataclass
class Layout:
    """How one paper table looks: its columns and how its rows split into sections."""

    title: str
    columns: List[Column]
    pivot: Optional[Tuple[str, str]] = None     # (row field, metric): one column per value of field
    section_by: Tuple[str, ...] = ()            # extra row fields that split published sections
    measured: Tuple[str, ...] = ()              # metric keys measured rows can fill ("" = none)
    method_col: str = "Method"
    vit: Optional[bool] = False                 # measured rows it takes: ViT (True), others (False), any (None)


def is_vit_arch(arch: Any) -> bool:
    return str(arch or "").lower().startswith(("vit", "deit"))


def _c(key: str, md: str, tex: Optional[str] = None, metric: bool = False) -> Column:
    return Column(key, md, tex if tex is not None else latex_escape(md), metric)


_META = [_c("method", "Method"), _c("arch", "Arch"), _c("batch", "Batch"), _c("epochs", "Epochs")]
AP_COLS = [_c("ap_box", "AP^b", "AP$^{b}$", True), _c("ap50_box", "AP^b_50", "AP$^{b}_{50}$", True),
           _c("ap75_box", "AP^b_75", "AP$^{b}_{75}$", True), _c("ap_mask", "AP^m", "AP$^{m}$", True),
           _c("ap50_mask", "AP^m_50", "AP$^{m}_{50}$", True), _c("ap75_mask", "AP^m_75", "AP$^{m}_{75}$", True)]

LAYOUTS: Dict[str, Layout] = {
    "table1": Layout("Table 1 — Linear & k-NN classification (top-1 %)",
                     _META + [_c("linear_top1", "Linear", metric=True), _c("knn_top1", "k-NN", metric=True)],
                     measured=("linear_top1", "knn_top1")),
    "table2": Layout("Table 2 — Linear classification with ViT-S/16 (top-1 %) by pretraining epochs",
                     [_c("method", "Method"), _c("batch", "Batch"), _c("linear_top1", "Linear (measured)", metric=True),
                      _c("knn_top1", "k-NN (measured)", metric=True)], pivot=("epochs", "linear_top1"),
                     measured=("linear_top1", "knn_top1"), vit=True),
    "table3": Layout("Table 3 — Linear classification, ResNet-50 (top-1 %) by pretraining epochs",
                     [_c("method", "Method"), _c("batch", "Batch")], pivot=("epochs", "linear_top1"),
                     section_by=("multi_crop",)),
    "table4": Layout("Table 4 — Semi-supervised fine-tuning (1 % / 10 % labels)",
                     _META + [_c("semisup_1_top1", "1% Top-1", metric=True), _c("semisup_1_top5", "1% Top-5", metric=True),
                              _c("semisup_10_top1", "10% Top-1", metric=True),
                              _c("semisup_10_top5", "10% Top-5", metric=True)],
                     measured=("semisup_1_top1", "semisup_1_top5", "semisup_10_top1", "semisup_10_top5")),
    "table5": Layout("Table 5 — Object detection & instance segmentation (Mask R-CNN R50-C4, 1x)",
                     _META + AP_COLS, measured=tuple(c.key for c in AP_COLS)),
    "ablations": Layout("Tables 6–8 — Ablations (ResNet-50, 100 epochs, linear top-1 %)",
                        [_c("setting", "Setting"), _c("batch", "Batch"), _c("linear_top1", "Linear", metric=True)],
                        section_by=("ablation",)),
    # published reference rows for the measured-vs-published table (benchmarks/leaderboard/comparison.py)
    "zoo": Layout("Measured vs published (reference rows)", _META + [_c("knn_top1", "k-NN", metric=True),
                                                                    _c("linear_top1", "Linear", metric=True)]),
}

REQUIRED_ROW_KEYS = ("method", "arch", "batch", "epochs", "protocol", "data", "metrics", "source")

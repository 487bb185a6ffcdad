"""Object categories of a COCO-format set, read before anything is trained.

    cats = dataset_categories(coco_paths(root))   # {"num_classes": 20, "ids": [...], "names": [...]}

Detectron2's ``register_coco_instances`` maps the dataset's category ids to contiguous class
indices in sorted-id order (``load_coco_json``: ``{id: i for i, id in enumerate(sorted(ids))}``),
and ``MODEL.ROI_HEADS.NUM_CLASSES`` must equal the number of categories: with the default 80
on a 20-category set the model predicts classes the evaluator does not know and
``COCOEvaluator`` fails only after the whole training run. So the stage reads the categories
here (same sorted-id order), sets NUM_CLASSES from them and refuses, before training, a set
whose train and val files disagree.

COCO's train file is ~450 MB; parsing it whole would need GBs, so a large file is scanned for
its top-level ``"categories": [...]`` entry instead (:func:`read_categories`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping

from excb import ExcbError

PARSE_LIMIT = 64 << 20   # files up to this size are parsed whole; larger ones are scanned
SCAN_WINDOW = 16 << 20   # bytes after a "categories" key that may hold its list
_NEEDLE = b'"categories"'
_HINT = "a COCO annotation file is a JSON object with 'images', 'annotations' and 'categories' ([{id, name}, ...])"


def _check(cats: Any, path: Path) -> List[Dict[str, Any]]:
    if not isinstance(cats, list) or not cats:
        raise ExcbError(f"{path}: 'categories' must be a non-empty list of {{id, name}} records; {_HINT}")
    seen = set()
    for i, c in enumerate(cats):
        cid = c.get("id") if isinstance(c, Mapping) else None
        if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(c.get("name"), str):
            raise ExcbError(f"{path}: categories[{i}] needs an integer 'id' and a string 'name', got {c!r:.80}; {_HINT}")
        if cid in seen:
            raise ExcbError(f"{path}: category id {cid} appears twice in 'categories'")
        seen.add(cid)
    return [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]


def _scan(path: Path, chunk: int) -> Any:
    """The list after the ``"categories"`` key(s) of a large file, without parsing the rest.
    The needle includes the quotes and must be followed by ``:``, so only a key matches; if
    the file holds several such keys (nested ones), they must agree."""
    found: List[Any] = []
    dec = json.JSONDecoder()
    with open(path, "rb") as f:
        offset, tail = 0, b""
        hits: List[int] = []
        while True:
            block = f.read(chunk)
            if not block:
                break
            buf = tail + block
            base = offset - len(tail)
            i = buf.find(_NEEDLE)
            while i >= 0:
                hits.append(base + i)
                i = buf.find(_NEEDLE, i + 1)
            offset += len(block)
            # keep len-1 bytes: a needle split across blocks is found once, whole
            tail = buf[-(len(_NEEDLE) - 1):]
        for pos in sorted(set(hits)):
            f.seek(pos + len(_NEEDLE))
            text = f.read(SCAN_WINDOW).decode("utf-8", errors="replace")
            rest = text.lstrip()
            if not rest.startswith(":"):
                continue
            rest = rest[1:].lstrip()
            try:
                value, _ = dec.raw_decode(rest)
            except json.JSONDecodeError:
                continue
            if isinstance(value, list):
                found.append(value)
    if not found:
        raise ExcbError(f"{path}: no 'categories' list found; {_HINT}")
    if any(v != found[0] for v in found[1:]):
        raise ExcbError(f"{path}: holds {len(found)} different 'categories' lists; keep only the top-level one")
    return found[0]


def read_categories(json_path: Path | str, *, parse_limit: int = PARSE_LIMIT, chunk: int = 1 << 22) -> List[Dict[str, Any]]:
    """``[{id, name}, ...]`` of a COCO annotation file, validated; every problem is a one-line
    :class:`ExcbError` naming the file."""
    path = Path(json_path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise ExcbError(f"{path}: annotation file {what}; {_HINT}")
    try:
        if path.stat().st_size > parse_limit:
            cats = _scan(path, chunk)
        else:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ExcbError(f"{path}: not a COCO annotation file (top level is {type(data).__name__}); {_HINT}")
            if "categories" not in data:
                raise ExcbError(f"{path}: no 'categories' entry; {_HINT}")
            cats = data["categories"]
    except json.JSONDecodeError as e:
        raise ExcbError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); {_HINT}") from e
    except UnicodeDecodeError as e:
        raise ExcbError(f"{path}: not a text file (byte {e.start} is not UTF-8); {_HINT}") from e
    except OSError as e:
        raise ExcbError(f"{path}: cannot read annotation file ({e.strerror or e})") from e
    return _check(cats, path)


def contiguous(cats: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """Detectron2's class order: sorted dataset ids -> 0..N-1 (``load_coco_json``)."""
    ordered = sorted(cats, key=lambda c: c["id"])
    return {"num_classes": len(ordered), "ids": [c["id"] for c in ordered], "names": [c["name"] for c in ordered]}


def dataset_categories(paths: Mapping[str, Path], need_train: bool = True) -> Dict[str, Any]:
    """Categories of the val file (and the train file, which must hold the same ones): the
    model is trained on the train file's class order and evaluated in the val file's."""
    val = contiguous(read_categories(paths["val_json"]))
    if need_train:
        train = contiguous(read_categories(paths["train_json"]))
        if (train["ids"], train["names"]) != (val["ids"], val["names"]):
            diff = sorted(set(zip(train["ids"], train["names"])) ^ set(zip(val["ids"], val["names"])))[:4]
            raise ExcbError(f"{paths['train_json']} and {paths['val_json']}: different categories "
                            f"({train['num_classes']} vs {val['num_classes']}; first differences (id, name): {diff}); "
                            f"train and val must share one category list")
    return val


def resolve_num_classes(requested: Any, cats: Mapping[str, Any], source: Path | str) -> int:
    """``num_classes`` from the annotation file; an explicit value must agree with it."""
    n = int(cats["num_classes"])
    if requested is not None and int(requested) != n:
        raise ExcbError(f"num_classes: {requested} requested but {source} has {n} categories; "
                        f"use num_classes=null (read from the annotation file) or fix the file")
    return n


__all__ = ["read_categories", "dataset_categories", "contiguous", "resolve_num_classes", "PARSE_LIMIT"]

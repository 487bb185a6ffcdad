"""Detection transfer with Detectron2 (Table 5; SPEC section 9; docs/detection.md).

* :mod:`detection.convert` — torchvision ResNet -> Detectron2 names and pickle (no Detectron2 needed).
* :mod:`detection.train` — the ``detect`` stage: ``run(cfg, run_dir)``, ``DEFAULTS``,
  :class:`~detection.train.DetectronMissing` (Detectron2 is imported lazily).
* :mod:`detection.d2` — the part that imports Detectron2 (model head, launch, training, evaluation).
* :mod:`detection.synthetic` — a tiny generated COCO-format set for smoke runs and tests.
* :mod:`detection.categories` — the categories of a COCO-format set -> ``NUM_CLASSES`` (no Detectron2 needed).
* :mod:`detection.records` — row labels, iteration counts, the finished-run check (no Detectron2 needed).
* ``detection/configs/`` — the Detectron2 configs (MoCo-style R50-C4 1x, CPU smoke), as data.
"""

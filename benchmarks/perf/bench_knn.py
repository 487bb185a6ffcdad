"""Benchmark 5: k-NN classification time of ``benchmarks.knn.knn_classify`` / scikit-learn's
brute-force ``KNeighborsClassifier`` on the same features (50,000 x 512 train, 10,000 test, k 20).

    python -m benchmarks.perf.bench_knn
    python -m benchmarks.perf.bench_knn --quick

Both classify L2-normalised features with DINO's weighted vote (weight exp(cos / T), T = 0.07):
scikit-learn with ``algorithm="brute"``, Euclidean distance on unit vectors (same neighbour
order as cosine), ``weights=`` a callable turning distances back into exp(cos / T), and
``n_jobs=-1``. Timed: scikit-learn's ``fit`` + ``predict``; ours: one ``knn_classify`` call
(normalisation included; on CPU it runs ``torch.get_num_threads()`` single-threaded workers on
query chunks). Features are a clustered synthetic mixture (class means + noise), so the
predictions are non-trivial; their agreement is printed as a check. Target <= 0.5. The process
CPU seconds of each call are reported too: on a shared machine their ratio moves less than the
wall-clock one.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from benchmarks.perf._timing import add_common_args, interleaved, report, setup_threads


def make_features(n_train: int, n_test: int, dim: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=g)
    ytr = torch.randint(0, classes, (n_train,), generator=g)
    yte = torch.randint(0, classes, (n_test,), generator=g)
    xtr = means[ytr] + 2.0 * torch.randn(n_train, dim, generator=g)
    xte = means[yte] + 2.0 * torch.randn(n_test, dim, generator=g)
    return xtr, ytr, xte, yte


def main(argv=None) -> int:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter),
                        warmup=1, repeat=3)
    p.add_argument("--chunk", type=int, default=1024, help="test queries per similarity block in knn_classify")
    args = p.parse_args(argv)
    threads = setup_threads(args.threads)
    try:
        from benchmarks.knn import knn_classify
    except ImportError:
        print("bench_knn: skipped — benchmarks.knn is not available yet")
        return 0
    from sklearn.neighbors import KNeighborsClassifier

    n_train, n_test, dim, C, k, T = (2000, 400, 64, 10, 20, 0.07) if args.quick else (50000, 10000, 512, 1000, 20, 0.07)
    xtr, ytr, xte, yte = make_features(n_train, n_test, dim, C)
    ntr = torch.nn.functional.normalize(xtr, dim=1).numpy()
    nte = torch.nn.functional.normalize(xte, dim=1).numpy()
    ytr_np = ytr.numpy()
    out = {}
    cpu = {"ours": [], "sklearn": []}

    def cpu_timed(name, fn):
        c0 = time.process_time()
        fn()
        cpu[name].append(time.process_time() - c0)

    def ours():
        out["ours"] = knn_classify(xtr, ytr, xte, [k], T=T, num_classes=C, chunk=args.chunk)[k][:, 0]

    def sk():
        def w(d):  # unit vectors: |a-b|^2 = 2 - 2 cos
            return np.exp((1.0 - d * d / 2.0) / T)

        clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="euclidean", weights=w, n_jobs=-1)
        clf.fit(ntr, ytr_np)
        out["sklearn"] = torch.from_numpy(clf.predict(nte))

    times = interleaved({"benchmarks.knn.knn_classify": lambda: cpu_timed("ours", ours),
                         "sklearn KNeighborsClassifier(brute)": lambda: cpu_timed("sklearn", sk)},
                        args.warmup, 1 if args.quick else args.repeat)
    timed = {n: v[args.warmup:] for n, v in cpu.items()}   # drop the warm-up calls
    cpu_s = {n: round(statistics.median(v), 3) for n, v in timed.items()}
    agree = float((out["ours"] == out["sklearn"]).float().mean())
    acc = {n: float((out[key] == yte).float().mean()) for n, key in (("ours", "ours"), ("sklearn", "sklearn"))}
    report("k-NN classify: ours vs scikit-learn brute force",
           {"n_train": n_train, "n_test": n_test, "dim": dim, "classes": C, "k": k, "T": T, "chunk": args.chunk,
            "threads": threads}, times,
           {"ours / sklearn": ("benchmarks.knn.knn_classify", "sklearn KNeighborsClassifier(brute)", 0.5, "<=")},
           extra={"prediction agreement": f"{100 * agree:.2f}%", "top-1 (synthetic)": acc,
                  "CPU seconds per call (median)": cpu_s,
                  "CPU-time ratio ours / sklearn": round(cpu_s["ours"] / max(cpu_s["sklearn"], 1e-9), 4)},
           json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

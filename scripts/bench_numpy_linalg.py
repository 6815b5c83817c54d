"""NumPy/LAPACK reference figures for `wgrad bench --filter qr|eigh|svd` (issue 16).

Times numpy.linalg.qr (reduced: Q and R, as wgrad returns) on the same f32 uniform(-1, 1)
square inputs and sizes as the bench, numpy.linalg.eigh (values and vectors) on the
symmetric A + Aᵀ of such inputs, and numpy.linalg.svd (thin: U, σ, Vᵀ, as wgrad returns;
full_matrices=False) on such inputs, square and the bench's tall 4096x256, median of several
runs after a warm-up. Run by hand (CI runs Rust only):
  python scripts/bench_numpy_linalg.py [qr|eigh|svd] [sizes...]
On a loaded machine set OPENBLAS_NUM_THREADS=1: OpenBLAS's threads spin against the other
work there (svd 128 took 1.5 s with two threads under a load of 7, 6 ms with one).
"""
import sys
import time

import numpy as np


def time_ms(f, min_s=0.5, max_reps=50):
    f()  # warm-up
    t0 = time.perf_counter()
    f()
    once = time.perf_counter() - t0
    reps = max(1, min(max_reps, int(min_s / max(once, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    args = sys.argv[1:]
    ops = [a for a in args if a in ("qr", "eigh", "svd")] or ["qr", "eigh"]
    sizes = [int(s) for s in args if s not in ops] or [256, 512, 1024]
    rng = np.random.default_rng(8)
    print(f"numpy {np.__version__}")
    if "svd" in ops:
        svd(sizes)
    for n in sizes:
        a = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
        if "eigh" in ops:
            s = a + a.T
            ms = time_ms(lambda: np.linalg.eigh(s))
            print(f"eigh {n}x{n} f32: {ms:.2f} ms")
            s64 = s.astype(np.float64)
            ms = time_ms(lambda: np.linalg.eigh(s64))
            print(f"eigh {n}x{n} f64: {ms:.2f} ms")
        if "qr" not in ops:
            continue
        ms = time_ms(lambda: np.linalg.qr(a))
        print(f"qr {n}x{n} f32: {ms:.2f} ms")
        a64 = a.astype(np.float64)
        ms = time_ms(lambda: np.linalg.qr(a64))
        print(f"qr {n}x{n} f64: {ms:.2f} ms")


def svd(sizes):
    """numpy.linalg.svd, thin, on the bench's shapes: the square sizes given and 4096x256."""
    rng = np.random.default_rng(7)
    shapes = [(n, n) for n in sizes] + [(4096, 256)]
    for m, n in shapes:
        a = rng.uniform(-1.0, 1.0, (m, n)).astype(np.float32)
        for dtype in (np.float32, np.float64):
            x = a.astype(dtype)
            ms = time_ms(lambda: np.linalg.svd(x, full_matrices=False))
            print(f"svd {m}x{n} {np.dtype(dtype).name}: {ms:.2f} ms")


# eig (issue 16 part 4), kept to its own block: figures for `wgrad bench --filter eig`.
# numpy.linalg.eig (values and vectors) on f32 uniform(-1, 1) square inputs, the bench's
# distribution and sizes (the bench's Rng seed 9 is not NumPy's generator; timings of a
# random nonsymmetric matrix depend on its size, not its draw). Run:
#   python scripts/bench_numpy_linalg.py eig [sizes...]
def eig_main(sizes):
    rng = np.random.default_rng(9)
    print(f"numpy {np.__version__}")
    for n in sizes or [128, 256, 512]:
        a = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
        ms = time_ms(lambda: np.linalg.eig(a))
        print(f"eig {n}x{n} f32: {ms:.2f} ms")
        a64 = a.astype(np.float64)
        ms = time_ms(lambda: np.linalg.eig(a64))
        print(f"eig {n}x{n} f64: {ms:.2f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["eig"]:
        eig_main([int(s) for s in sys.argv[2:]])
    else:
        main()

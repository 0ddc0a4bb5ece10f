"""Decode time of the full shared CIFAR-10 tar against loading it back from the uint8 cache.

One run each, in a fresh temporary cache (``$HWNAS_CACHE`` is pointed at it): the cold run
lists the tar, hashes its bytes, decodes 60,000 JPEGs with PIL in at most 2 processes and writes
the cache entry; the warm run hashes the tar again (the cache key) and reads the entry back,
test split included. Wall-clock seconds (``time.perf_counter``), with the machine's load
(``uptime``) before and after, since the development machines are shared.

Usage: ``python bench/data_cache.py [--tar PATH]`` (default: the shared copy).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from search.config import shared_data_dir  # noqa: E402


def main() -> None:
    """Run the cold decode and the warm load once each and print the figures."""
    default = shared_data_dir() / "cifar10" / "CIFAR-10-images.tar"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tar", type=Path, default=default)
    args = ap.parse_args()
    if not args.tar.is_file():
        sys.exit(f"data_cache: {args.tar} does not exist")
    from search.training import datasets as ds

    print("load before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HWNAS_CACHE"] = cache
        t0 = time.perf_counter()
        h = ds.content_hash(args.tar)
        t_hash = time.perf_counter() - t0
        t0 = time.perf_counter()
        cold = ds.read_source("cifar10", args.tar)
        cold.load_test()
        t_cold = time.perf_counter() - t0
        size_mb = cold.cache_path.stat().st_size / 1e6  # type: ignore[union-attr]
        t0 = time.perf_counter()
        warm = ds.read_source("cifar10", args.tar)
        warm_test = warm.load_test()
        t_warm = time.perf_counter() - t0
        assert warm_test is not None and len(warm.y_train) == 50000 and len(warm_test[1]) == 10000
    print("load after: ", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"tar {args.tar} ({args.tar.stat().st_size / 1e6:.0f} MB), sha256 {h[:12]}..")
    print(f"measured, wall clock, one run each, {ds.DECODE_WORKERS} decode processes:")
    print(f"  cold: list + hash + decode 60,000 JPEGs + write cache  {t_cold:7.2f} s")
    print(f"  warm: hash + read cache entry ({size_mb:.0f} MB npz)       {t_warm:7.2f} s")
    print(f"    of which hashing the tar                            {t_hash:7.2f} s (measured separately)")
    print(f"  warm / cold = {t_warm / t_cold:.3f} (cold is {t_cold / t_warm:.1f}x the warm load)")


if __name__ == "__main__":
    main()

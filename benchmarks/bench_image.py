#!/usr/bin/env python3
"""Image size against closure size, and the layers two variants of one pin share.

For each variant (SMs given, default 90 and 80), in the checkout it is run
from (the variants must be built: `invoke build --sm 90,80`):

  closure   `nix path-info --recursive` NAR bytes of the variant's environment
  image     the stream script's archive, measured as it streams: the bytes of
            every layer tarball (what a registry stores before compression),
            and the metadata (config, manifest, tar headers)
  in image  the NAR bytes of the store paths the layers hold: the closure plus
            the CA bundle (cacert), nothing else

then, for the pair: the layers both images hold (same digest), their count and
bytes; that is what a registry stores once and a node pulls once.

Nothing is pushed. Against the stand-in (tests/fixtures/nixpkgs) every number
is tiny: it shows the method and that the two sizes agree, not real sizes.

Usage: python benchmarks/bench_image.py [--sm 90 --sm 80] [--nixpkgs PATH|FLAKEREF]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vllm_variants.image import conf_of, image_link
from vllm_variants.nix import Nix
from vllm_variants.project import Project
from vllm_variants.resources import format_bytes


class Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw):
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, n=-1):
        data = self.raw.read(n)
        self.digest.update(data)
        return data


def measure_stream(script: str) -> tuple[dict[str, int], int, int]:
    """{layer digest: tar bytes}, the archive's total bytes and the number of
    entries in all layers, read from the stream."""
    proc = subprocess.Popen([script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    layers: dict[str, int] = {}
    total = entries = 0

    class Counting:
        def __init__(self, raw):
            self.raw = raw

        def read(self, n=-1):
            nonlocal total
            data = self.raw.read(n)
            total += len(data)
            return data

    with tarfile.open(fileobj=Counting(proc.stdout), mode="r|") as archive:
        for member in archive:
            if member.name.endswith("/layer.tar"):
                handle = Hashing(archive.extractfile(member))
                with tarfile.open(fileobj=handle, mode="r|") as layer:
                    entries += sum(1 for _ in layer)
                while handle.read(1 << 20):  # the end-of-archive padding
                    pass
                layers[handle.digest.hexdigest()] = member.size
    proc.wait()
    return layers, total, entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sm", action="append", help="a variant's SM (repeatable; default 90 and 80)")
    parser.add_argument("--nixpkgs", help="the nixpkgs the variants were built with, as for invoke build")
    args = parser.parse_args()
    project = Project.find()
    nix = Nix()
    extra = ["--nixpkgs", args.nixpkgs] if args.nixpkgs else []
    measured = {}
    for sm in args.sm or ["90", "80"]:
        variant = project.matrix.resolve(sm)
        subprocess.run(
            [sys.executable, "-m", "invoke", "image", "--sm", sm, "--dry-run", *extra],
            cwd=project.root,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        script = os.readlink(image_link(project, variant))
        env = os.readlink(project.result_link(variant))  # invoke image refused it if it was not built
        closure = nix.path_info([env], closure=False, recursive=True)
        conf = conf_of(nix, script)
        held = [p for layer in conf["store_layers"] for p in layer]
        held_info = nix.path_info(held, closure=False)
        layers, total, entries = measure_stream(script)
        measured[variant.name] = layers
        closure_bytes = sum(i["narSize"] for i in closure.values())
        held_bytes = sum(i["narSize"] for i in held_info.values())
        layer_bytes = sum(layers.values())
        print(f"{variant.name}")
        print(f"  closure   {len(closure):4d} paths  {format_bytes(closure_bytes):>10}  ({closure_bytes} B)")
        print(
            f"  in image  {len(held):4d} paths  {format_bytes(held_bytes):>10}  ({held_bytes} B; closure + CA bundle)"
        )
        print(
            f"  image     {len(layers):4d} layers {format_bytes(layer_bytes):>10}  ({layer_bytes} B of layer tarballs; "
            f"archive {total} B, metadata {total - layer_bytes} B)"
        )
        print(
            f"  layer tarballs - NAR bytes: {layer_bytes - held_bytes} B = {entries} tar entries x "
            f"{(layer_bytes - held_bytes) / max(1, entries):.0f} B (headers, padding; ratio {layer_bytes / held_bytes:.3f})"
        )
    names = list(measured)
    if len(names) >= 2:
        a, b = measured[names[0]], measured[names[1]]
        shared = set(a) & set(b)
        shared_bytes = sum(a[d] for d in shared)
        print(
            f"shared by {names[0]} and {names[1]}: {len(shared)} of {len(b)} layers, "
            f"{format_bytes(shared_bytes)} of {format_bytes(sum(b.values()))} "
            f"({100 * shared_bytes / max(1, sum(b.values())):.0f} % of the second image)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

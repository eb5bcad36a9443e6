# Clamp the parallelism of a heavy CUDA build to the builder's own RAM.
#
# Runs as the first phase (prePhases) of torch, xformers, flashinfer and vllm,
# on the machine that builds them, before anything reads a job count. One nvcc
# job per @ramPerJobGib@ GiB of RAM, at least 1, never more than the cores Nix
# gave the build. It sets every knob those builds read (checked at the pin,
# tests/fixtures/nixpkgs/README.md):
# - NIX_BUILD_CORES: make/ninja -j in the cmake phases, and what torch and
#   xformers (preBuild), vllm and flashinfer (preConfigure) copy into MAX_JOBS,
#   after this phase has run;
# - MAX_JOBS: what torch's setup.py and its extension builder
#   (torch.utils.cpp_extension) actually read; exported here too, so a
#   package whose own export goes away still gets the clamped count rather
#   than ninja's default (nproc + 2).
# The limit is read here, at build time, so a derivation built on a 2 TB
# builder is the same derivation as one built on a laptop: nothing
# machine-specific is baked into it (a NIX_BUILD_CORES attribute would be).
# RAM is MemTotal, or the cgroup v2 limit when lower.
vllmVariantsClampJobs() {
  local per_job_kib=$(( @ramPerJobGib@ * 1024 * 1024 ))
  local mem_kib="" key value _unit limit
  while read -r key value _unit; do
    if [ "$key" = "MemTotal:" ]; then mem_kib=$value; break; fi
  done < /proc/meminfo
  if [ -r /sys/fs/cgroup/memory.max ]; then
    read -r limit < /sys/fs/cgroup/memory.max || limit=max
    if [ "$limit" != max ] && [ -n "$mem_kib" ] && [ $(( limit / 1024 )) -lt "$mem_kib" ]; then
      mem_kib=$(( limit / 1024 ))
    fi
  fi
  local cores=${NIX_BUILD_CORES:-1}
  if [ "$cores" -le 0 ] 2>/dev/null; then cores=1; fi
  local jobs=$cores
  if [ -n "$mem_kib" ]; then
    jobs=$(( mem_kib / per_job_kib ))
    if [ "$jobs" -lt 1 ]; then jobs=1; fi
    if [ "$jobs" -gt "$cores" ]; then jobs=$cores; fi
  fi
  echo "vllm-variants: $(( ${mem_kib:-0} / 1024 / 1024 )) GiB RAM, $cores cores -> $jobs build jobs (@ramPerJobGib@ GiB per nvcc job)"
  NIX_BUILD_CORES=$jobs
  MAX_JOBS=$jobs
  export NIX_BUILD_CORES MAX_JOBS
}
vllmVariantsClampJobs

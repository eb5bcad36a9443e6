# Clamp the parallelism of a heavy CUDA build to the builder's own RAM.
#
# Runs as the first phase (prePhases) of torch, xformers, flashinfer and vllm,
# on the machine that builds them, before anything reads NIX_BUILD_CORES
# (vllm's preConfigure exports MAX_JOBS="$NIX_BUILD_CORES"; ninja and make take
# -j from it). One nvcc job per @ramPerJobGib@ GiB of RAM, at least 1, never
# more than the cores Nix gave the build. The limit is read here, at build time,
# so a derivation built on a 2 TB builder is the same derivation as one built
# on a laptop: nothing machine-specific is baked into it (a NIX_BUILD_CORES
# attribute would be). RAM is MemTotal, or the cgroup v2 limit when lower.
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
  export NIX_BUILD_CORES
}
vllmVariantsClampJobs

# clampJobs drv: drv with nix/build-jobs.sh run first, so its nvcc jobs fit
# the builder's RAM at build time (one per ramPerJobGib GiB, within the cores).
{ ramPerJobGib }:
let
  clampJobsPhase =
    builtins.replaceStrings [ "@ramPerJobGib@" ] [ (toString ramPerJobGib) ]
      (builtins.readFile ./build-jobs.sh);
in
drv:
drv.overrideAttrs (old: {
  vllmVariantsClampJobsPhase = clampJobsPhase;
  prePhases = (old.prePhases or [ ]) ++ [ "vllmVariantsClampJobsPhase" ];
})

"""`invoke image`: a built variant as an OCI image, copied to a registry with skopeo.

The flake exports `images.<system>.<variant>` (nix/image.nix): nixpkgs'
dockerTools.streamLayeredImage, a script that writes the image to stdout as
an uncompressed docker-archive. Plan first, then act:

1. The destination is checked (one line naming the valid forms), then the
   tools it needs (skopeo, or docker or podman for --load), then that the variant
   itself is built at this revision: its store path, as the flake evaluates
   it now, is in the Nix store. An image never starts an hours-long build.
2. The image script is built by the build machinery `invoke build` runs
   (vllm_variants.build.pipeline: plan, progress, logs, a GC-rooted link
   `image-<variant>`), handed the resolved variant's image attribute as its
   target. It holds no data: it is seconds of work.
3. The layers are read from the script's configuration (the conf JSON
   streamLayeredImage writes: `store_layers`, `customisation_layer`,
   `repo_tag`), sized from `nix path-info`. `--dry-run` stops here.
4. The image goes to its destination:
   - `--load`: the script's output is piped into `docker image load` (or,
     without docker, `podman load`); docker reads the stream as it comes,
     podman buffers it in a temporary file of its own first.
   - `docker://...` and `oci-archive:...`: skopeo 1.9's docker-archive
     transport seeks in its archive (it opens the file again for each member,
     containers/image docker/internal/tarfile), so a pipe or /dev/stdin fails
     ("loading tar component manifest.json: archive/tar: invalid tar
     header"), and a compressed stream is first decompressed into a temporary
     file by skopeo itself. So the archive is written once, uncompressed, to a
     temporary file (`--tmpdir`, default $TMPDIR), skopeo copies it (layers
     the registry already holds are not uploaded again) and the file is
     removed, whatever happened.
5. Registry credentials are skopeo's own (`skopeo login`, which writes its
   auth file; REGISTRY_AUTH_FILE; docker's config.json): no password passes
   through our command line or theirs, and a registry that wants one is one
   line saying how to log in (issue #22). Credentials written into the --to
   reference are refused without being echoed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from . import lifecycle, userfiles
from .errors import CommandError, ImageError, ToolMissing, VariantsError, tail
from .matrix import Variant
from .nix import Nix, flake_ref, input_ref, is_valid_info
from .project import Project
from .resources import format_bytes
from .runner import HINTS, format_argv, require_tool, run, spawn, text_of
from .selection import Selection

DESTINATIONS = "docker://[REGISTRY/]NAME[:TAG] or oci-archive:PATH[:TAG] (or --load)"
# docker/distribution's reference grammar: a registry host, then lowercase
# path components, then an optional tag. The first component is a host only
# when it has a '.' or a ':' or is localhost (otherwise Docker Hub is meant).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"(?:localhost(?::[0-9]+)?|{_LABEL}(?:\.{_LABEL})+(?::[0-9]+)?|{_LABEL}:[0-9]+)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DOCKER = re.compile(rf"^(?:(?P<host>{_HOST})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?$")


# -- the destination ------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where the image goes: kind 'docker', 'oci-archive' or 'load'."""

    kind: str
    name: str = ""  # docker: [registry/]path; oci-archive: the archive's path
    tag: str | None = None  # None: the image's own tag

    @classmethod
    def parse(cls, to: str | None, *, load: bool = False, cwd: Path | None = None) -> Destination | None:
        """None when neither --to nor --load was given (only --dry-run allows that)."""
        if load and to:
            raise ImageError(f"--load and --to {to} are exclusive: the image goes to one place; give one")
        if load:
            return cls("load")
        if to is None:
            return None
        text = to.strip()
        if text.startswith("docker://"):
            userinfo = re.match(r"docker://([^/]*)@([^/@]*)(.*)$", text)
            if userinfo:  # user:password@host: never echoed, never passed on
                host, rest = userinfo[2], userinfo[3]
                raise ImageError(
                    f"--to docker://***@{host}{rest}: credentials do not go in the reference (they would show in "
                    f"logs and `ps`); log in with `skopeo login {host or 'REGISTRY'}` instead"
                )
            found = _DOCKER.match(text[len("docker://") :])
            if not found or "@" in text:
                raise ImageError(
                    f"--to {to}: not a registry reference; give {DESTINATIONS}, e.g. "
                    "docker://registry.example.com:5000/vllm-sm90:latest"
                )
            host, path = found["host"], found["path"]
            return cls("docker", f"{host}/{path}" if host else path, found["tag"])
        if text.startswith("oci-archive:"):
            rest = text[len("oci-archive:") :]
            path, tag = rest, None
            head, sep, last = rest.rpartition(":")
            if sep and head and "/" not in last:
                path, tag = head, last
                if not re.fullmatch(_TAG, tag):
                    raise ImageError(f"--to {to}: '{tag}' is not a valid tag ([A-Za-z0-9_.-], at most 128)")
            if not path:
                raise ImageError(f"--to {to}: no archive path; give oci-archive:PATH[:TAG], e.g. oci-archive:vllm.tar")
            file = userfiles.real(Path(cwd or Path.cwd()) / Path(path).expanduser())
            if file.is_dir():
                raise ImageError(f"--to {to}: {file} is a directory; give the archive file to write")
            if not file.parent.is_dir():
                raise ImageError(f"--to {to}: no such directory {file.parent}")
            return cls("oci-archive", str(file), tag)
        raise ImageError(f"--to {to}: unknown destination; give {DESTINATIONS}")

    @property
    def registry(self) -> str:
        """The registry a docker:// destination names: its host, or Docker Hub's."""
        first, sep, _ = self.name.partition("/")
        return first if sep and ("." in first or ":" in first or first == "localhost") else "docker.io"

    def reference(self, repo_tag: str) -> str:
        """skopeo's destination reference for the image `repo_tag` (NAME:TAG): the
        image's tag when none was given; an OCI archive names the image NAME:TAG
        (what `podman load` and `skopeo` show) unless a TAG was given."""
        image_tag = repo_tag.rpartition(":")[2]
        if self.kind == "docker":
            return f"docker://{self.name}:{self.tag or image_tag}"
        if self.kind == "oci-archive":
            return f"oci-archive:{self.name}:{self.tag or repo_tag}"
        return "the local container engine (docker image load, or podman load)"


# -- the image --------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    paths: tuple[str, ...]
    size: int  # NAR bytes of its store paths, or the customisation layer's tar

    def label(self) -> str:
        names = [Path(p).name.split("-", 1)[-1] for p in self.paths]
        return (
            names[0] if len(names) == 1 else f"{len(names)} paths: {', '.join(names[:3])}{', ...' * (len(names) > 3)}"
        )


@dataclass(frozen=True)
class Image:
    """A built image script and what it streams."""

    variant: Variant
    script: str
    repo_tag: str  # name:tag as the archive names it
    architecture: str
    config: Mapping[str, Any]
    layers: tuple[Layer, ...]  # store layers, then the customisation layer

    @property
    def tag(self) -> str:
        return self.repo_tag.rpartition(":")[2]

    def tag_line(self) -> str:
        """Where the tag comes from (nix/image.nix: <vLLM version>-<nixpkgs short rev>),
        from the image's own labels: a nixpkgs without a revision (a path: flake
        reference) has no short rev, and the flake ends the tag in a hash of its
        narHash instead, which would otherwise pass for a commit (issue #22)."""
        labels = self.config.get("Labels") or {}
        version = labels.get("org.opencontainers.image.version", "?")
        pin = labels.get("io.vllm-variants.pin", "nixpkgs ?")
        line = f"  tag {self.tag}: vLLM {version}, {pin}"
        if pin.startswith("nixpkgs path "):
            line += " (no revision: the tag ends in a hash of its narHash)"
        return line

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def lines(self) -> list[str]:
        out = [
            f"image {self.repo_tag} ({self.architecture}): {len(self.layers)} layers, "
            f"{format_bytes(self.size)} uncompressed",
            self.tag_line(),
            f"  entrypoint {' '.join(self.config.get('Entrypoint', []))} {' '.join(self.config.get('Cmd', []))}",
        ]
        width = len(str(len(self.layers)))
        for number, layer in enumerate(self.layers, start=1):
            out.append(f"  layer {number:>{width}}  {format_bytes(layer.size):>10}  {layer.label()}")
        return out


def conf_of(nix: Nix, script: str) -> dict[str, Any]:
    """The conf JSON streamLayeredImage's script reads: the one of its
    references named `<name>-conf.json`."""
    info = nix.path_info([script], closure=False).get(script) or {}
    confs = [r for r in info.get("references", []) if r.endswith("-conf.json")]
    if len(confs) != 1:
        raise ImageError(
            f"{script} does not look like a dockerTools.streamLayeredImage script "
            f"(references {len(confs)} *-conf.json files, expected 1)"
        )
    conf = userfiles.read_json(confs[0], confs[0], limit=64 * userfiles.MIB)
    if not isinstance(conf, dict):
        raise ImageError(f"{confs[0]} is not a streamLayeredImage configuration (not a JSON object)")
    return conf


def read_image(nix: Nix, variant: Variant, script: str) -> Image:
    conf = conf_of(nix, script)
    store_layers = [list(layer) for layer in conf["store_layers"]]
    sizes = nix.path_info(sorted({p for layer in store_layers for p in layer}), closure=False)
    layers = [
        Layer(tuple(layer), sum(int(sizes.get(p, {}).get("narSize") or 0) for p in layer)) for layer in store_layers
    ]
    custom = Path(conf["customisation_layer"]) / "layer.tar"
    layers.append(Layer((conf["customisation_layer"],), custom.stat().st_size))
    return Image(
        variant, script, conf["repo_tag"], conf.get("architecture", "?"), conf.get("config", {}), tuple(layers)
    )


# -- checks before anything is built -----------------------------------------------


def require_built(nix: Nix, project: Project, variant: Variant, overrides: Mapping[str, str]) -> str:
    """The variant's store path as the flake evaluates it now, which must be valid
    in the store: building its image must never start building the variant."""
    (out,) = nix.out_paths(flake_ref(project.root), [variant.attr_path()], overrides, cwd=project.root)
    if not is_valid_info(nix.realised([out]).get(out)):
        raise ImageError(
            f"{variant.name} is not built ({out} is not in the Nix store); "
            f"build it with `{variant.build_command}` first"
        )
    return out


# -- copying -------------------------------------------------------------------------


def image_link(project: Project, variant: Variant) -> Path:
    """image-<variant>: the built image script (a GC root), e.g. `./image-... | docker image load`."""
    return project.root / f"image-{variant.name}"


def copy(
    image: Image, dest: Destination, *, tls_verify: bool = True, tmpdir: str | None = None, out: TextIO
) -> str | None:
    """Send the image to `dest`; the manifest digest skopeo wrote, or None for --load."""
    if dest.kind == "load":
        load(image)
        print(f"loaded {image.repo_tag} with {Path(loader()[0]).name}", file=out, flush=True)
        return None
    reference = dest.reference(image.repo_tag)
    with lifecycle.temporary_directory(prefix="vllm-variants-image-", dir=tmpdir) as work:
        archive = work / "image.tar"
        stream_to(image.script, archive)
        digest_file = work / "digest"
        argv: list[str | os.PathLike[str]] = ["skopeo", "copy", "--digestfile", digest_file]
        if dest.kind == "docker" and not tls_verify:
            argv.append("--dest-tls-verify=false")
        argv += [f"docker-archive:{archive}", reference]
        print(f"$ {format_argv(argv)}", file=sys.stderr, flush=True)
        try:
            with _new_archive_undone_on_failure(dest):
                run(argv)
        except CommandError as exc:
            message = skopeo_message(exc.stderr) or str(exc)
            if dest.kind == "docker" and _AUTH_REFUSED.search(message):
                raise ImageError(login_failure(dest, image, message, tls_verify=tls_verify)) from None
            where = dest.name if dest.kind == "docker" else reference
            raise ImageError(f"{where} refused {image.repo_tag}: {message}") from None
        digest = userfiles.read_text(digest_file, "skopeo's digest file", limit=userfiles.KIB).strip()
    print(f"copied {image.repo_tag} to {reference} (manifest {digest})", file=out, flush=True)
    return digest


def _new_archive_undone_on_failure(dest: Destination) -> contextlib.AbstractContextManager[None]:
    """An OCI archive this copy creates is removed if the copy fails or is stopped
    (skopeo writes it in place): no half-written archive under the user's name."""
    archive = Path(dest.name)
    if dest.kind != "oci-archive" or archive.exists() or archive.is_symlink():
        return contextlib.nullcontext()
    return lifecycle.undo_on_failure(f"the new archive {archive}", lambda: archive.unlink(missing_ok=True))


# What a registry answers when it wants (other) credentials: the distribution
# spec's UNAUTHORIZED and DENIED error codes, as containers/image words them.
_AUTH_REFUSED = re.compile(r"(unauthorized|authentication required|denied)[:\s].*$", re.IGNORECASE)


def login_failure(dest: Destination, image: Image, message: str, *, tls_verify: bool = True) -> str:
    """One line for a registry that refused our credentials, or wants some: its
    reason, and skopeo's own way to log in (`skopeo login`, which reads the
    password from a prompt or --password-stdin, or REGISTRY_AUTH_FILE). Names the
    user skopeo has a login for, never a secret: none passes through here."""
    host = dest.registry
    reason = _AUTH_REFUSED.search(message)
    login = f"`skopeo login {'--tls-verify=false ' if not tls_verify else ''}{host}`"
    user = skopeo_login_user(host)
    head = f"{host} refused {image.repo_tag}: {reason[0] if reason else message}"
    if user is None:
        return (
            f"{head}; skopeo has no login for {host}: log in with {login} "
            "(or point REGISTRY_AUTH_FILE at an auth file that has one)"
        )
    return f"{head}; the login skopeo has for {host} ({user}) was refused: log in again with {login}"


def skopeo_login_user(host: str) -> str | None:
    """The user skopeo has credentials for at `host` (`skopeo login --get-login`:
    it reads the auth file, prints the user name only); None when it has none."""
    try:
        proc = run(["skopeo", "login", "--get-login", host], check=False)
    except VariantsError:
        return None
    user = proc.stdout.strip()
    return user if proc.returncode == 0 and user and "\n" not in user else None


def skopeo_message(stderr: str) -> str:
    """skopeo's error without its logrus wrapper (time="..." level=fatal msg="...")."""
    line = tail(stderr, 1)
    found = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
    return found[1].replace('\\"', '"') if found else line


def stream_to(script: str, archive: Path) -> None:
    """Run the image script into `archive` (its stderr is kept for the error)."""
    with archive.open("wb") as handle:
        proc = spawn([script], stdout=handle, stderr=subprocess.PIPE)
        _, err = proc.communicate()
    if proc.returncode != 0:
        raise ImageError(f"{script} failed (exit {proc.returncode}): {tail(text_of(err), 1)}")


def loader() -> list[str]:
    """`docker image load`, or `podman load` where there is no docker; else ToolMissing."""
    for argv in (["docker", "image", "load"], ["podman", "load"]):
        found = shutil.which(argv[0])
        if found:
            return [found, *argv[1:]]
    raise ToolMissing("docker", HINTS["docker"])


def load(image: Image) -> None:
    """script | docker image load (or podman load): no archive of ours on disk."""
    argv = loader()
    producer = spawn([image.script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert producer.stdout is not None
    consumer = spawn(argv, stdin=producer.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    producer.stdout.close()  # the loader holds the read end; the script sees EPIPE if it dies
    _, load_err = consumer.communicate()
    _, stream_err = producer.communicate()
    if producer.returncode != 0:
        raise ImageError(f"{image.script} failed (exit {producer.returncode}): {tail(text_of(stream_err), 1)}")
    if consumer.returncode != 0:
        raise ImageError(f"{Path(argv[0]).name} refused {image.repo_tag}: {skopeo_message(text_of(load_err))}")


# -- the command ---------------------------------------------------------------------


def main(
    project: Project,
    *,
    selection: Selection | None = None,
    to: str | None = None,
    load: bool = False,
    dry_run: bool = False,
    insecure: bool = False,
    tmpdir: str | None = None,
    nixpkgs: str | None = None,
    out: TextIO | None = None,
    interactive: bool | None = None,
) -> Image:
    """`invoke image`: check, build the image script, list its layers, copy it."""
    from .build.pipeline import check_outputs, plan_and_build
    from .build.request import Request, prepare_variants

    out = out or sys.stdout
    dest = Destination.parse(to, load=load)
    if dest is None and not dry_run:
        raise ImageError(f"say where the image goes: --to {DESTINATIONS}; or --dry-run to list its layers")
    selection = selection or Selection()
    if not (selection.sms or selection.auto):
        raise ImageError("give the variant: --sm SM, e.g. --sm 90 (H100) or --sm 90 --arm64 (GH200)")
    picked = selection.variants(project.matrix)
    if len(picked) != 1:
        raise ImageError(
            f"one variant per image: --sm selected {len(picked)} ({', '.join(v.name for v in picked)}); give one SM"
        )
    (variant,) = picked
    if tmpdir is not None:
        try:
            userfiles.directory(Path(tmpdir).expanduser(), f"--tmpdir {tmpdir}", writable=True)
        except userfiles.UserFileError as exc:
            raise ImageError(str(exc)) from None
    if dest is not None and not dry_run:
        if dest.kind == "load":
            loader()
        else:
            require_tool("skopeo")

    nix = Nix()
    nix.preflight()
    overrides = {"nixpkgs": input_ref(nixpkgs)} if nixpkgs else {}
    require_built(nix, project, variant, overrides)

    request = Request.from_cli(nixpkgs=nixpkgs)
    check_outputs(project, request)
    prepared = prepare_variants(project, request, [variant], nix=nix)
    prepared.targets = [
        replace(target, attr=f"images.{variant.system}.{variant.name}", link=image_link(project, variant))
        for target in prepared.targets
    ]
    outcomes = plan_and_build(prepared, out, interactive=interactive)
    assert isinstance(outcomes, list) and outcomes[0].store_path
    image = read_image(nix, variant, outcomes[0].store_path)
    print("\n".join(image.lines()), file=out, flush=True)
    if dry_run or dest is None:
        print("dry run: the image script is built; nothing was copied", file=out, flush=True)
        return image
    copy(image, dest, tls_verify=not insecure, tmpdir=tmpdir, out=out)
    return image

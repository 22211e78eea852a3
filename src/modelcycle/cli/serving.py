"""`modelcycle package` and `modelcycle serve`: a version's BentoML bento (and its image), and
production with an optional shadow behind the gateway, as local processes. BentoML is
imported only when a command runs: ``modelcycle --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from modelcycle.cli.common import DEFAULT_WORKDIR, EXIT_USAGE, RegistryOpt, WorkdirOpt, _fail, _registry, console

commands = typer.Typer()


@commands.command("package")
def package_(
    ref: Annotated[str, typer.Argument(help="name@version or name@alias, e.g. fraud@champion")],
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
    wheel: Annotated[Optional[Path], typer.Option(
        help="A modelcycle wheel for the image (default: built from this checkout).")] = None,
    image: Annotated[bool, typer.Option(
        "--image", help="Also build the bento's image with Docker or podman (non-root, from uv.lock).")] = False,
    save: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="With --image: also write the image as an OCI archive into DIR.")] = None,
    base: Annotated[Optional[str], typer.Option(
        help="With --image: the base image (default: python:3.11-slim if it can be pulled, else a local "
             "Debian base).")] = None,
) -> None:
    """Build the BentoML bento of a model version: its artifact (sha256 checked), a
    modelcycle wheel, its requirements pinned to uv.lock and the generated Dockerfile.
    Records the bento and image on the version; --image builds the image too."""
    from modelcycle.artifacts import ArtifactIntegrityError
    from modelcycle.registry import RegistryError
    from modelcycle.serving.packaging import PackagingError, package

    if "@" not in ref:
        raise _fail(f"{ref!r}: say which version to package, e.g. {ref}@champion or {ref}@3", EXIT_USAGE)
    if (save or base) and not image:
        raise _fail("--save and --base are options of the image: add --image", EXIT_USAGE)
    try:
        with console.status(f"packaging {ref}"):
            bento = package(_registry(registry, workdir), ref, workdir=workdir, wheel=wheel)
    except (KeyError, ValueError) as exc:  # unknown model, version or alias; a bad name
        raise _fail(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    except (ArtifactIntegrityError, PackagingError, RegistryError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"{'built' if bento.built else 'already built'}: bento [b]{bento.tag}[/]\n"
                  f"  folder:     {bento.path}\n  Dockerfile: {bento.dockerfile}", soft_wrap=True)
    if not image:
        console.print(f"  image:      {bento.image}  (modelcycle package {ref} --image)", soft_wrap=True)
        return
    from modelcycle.cluster.containers import EngineError
    from modelcycle.cluster.images import build_bento_image

    try:
        built = build_bento_image(bento, base=base, save_dir=save,
                                  say=lambda text: console.print(text, highlight=False, soft_wrap=True))
    except EngineError as exc:
        raise _fail(str(exc)) from None
    console.print(f"  image:      [b]{built.tag}[/] ({built.size_mb:.0f} MB, {built.seconds:.0f} s)"
                  + (f"\n  archive:    {built.archive}" if built.archive else ""), soft_wrap=True)

@commands.command()
def serve(
    model: Annotated[str, typer.Argument(
        help="The production model: name (its champion, else its latest version), name@version or name@alias.")],
    shadow: Annotated[Optional[str], typer.Option(
        help="A version or alias of the same model to run as a shadow.")] = None,
    mirror_percent: Annotated[float, typer.Option(
        "--mirror-percent", min=0, max=100, help="Share of requests mirrored to the shadow.")] = 100.0,
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 8080,
    host: Annotated[str, typer.Option(help="The address every server binds.")] = "127.0.0.1",
    log_dir: Annotated[Optional[Path], typer.Option(
        help="The prediction log (default: WORKDIR/predictions/NAME/vP[-shadow-vS], one per pairing).")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
    wheel: Annotated[Optional[Path], typer.Option(
        help="The modelcycle wheel the bentos were packaged with (default: this checkout's code).")] = None,
) -> None:
    """Serve a model locally: production and an optional shadow, each from its bento (packaged
    first if the store does not have it), behind the gateway, which mirrors traffic to the
    shadow and logs both answers. Ctrl-C stops all."""
    from modelcycle.artifacts import ArtifactIntegrityError
    from modelcycle.registry import RegistryError
    from modelcycle.serving.local import LocalServing, ServingError
    from modelcycle.serving.packaging import PackagingError

    serving = LocalServing(registry=_registry(registry, workdir), workdir=Path(workdir), model=model,
                           shadow=shadow, mirror_percent=mirror_percent, port=port, host=host, log_dir=log_dir,
                           wheel=wheel, say=lambda text: console.print(text, highlight=False, soft_wrap=True))
    try:
        serving.run_until_signal()
    except (KeyError, ValueError) as exc:
        raise _fail(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    except (ArtifactIntegrityError, PackagingError, RegistryError, ServingError) as exc:
        raise _fail(str(exc)) from None

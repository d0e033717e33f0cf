"""A model's chat template, rendered as Hugging Face's ``apply_chat_template`` renders it.

A chat model's file carries its conversation format as a Jinja program (GGUF:
``tokenizer.chat_template``; Hugging Face: ``tokenizer_config.json``). SmolLM2's is
ChatML: every message is ``<|im_start|>ROLE\\n CONTENT <|im_end|>\\n``, and
``add_generation_prompt`` appends ``<|im_start|>assistant\\n`` so that the model's next
tokens are its answer. Rendering it ourselves needs the same Jinja settings as
transformers: a sandboxed environment (a template is data from a file, not trusted
code), ``trim_blocks`` and ``lstrip_blocks`` (a block tag eats the newline after it and
the spaces before it), the ``loopcontrols`` extension, a ``tojson`` filter that keeps
non-ASCII text, and ``raise_exception(message)`` for templates that refuse a conversation.

    >>> render_chat_template("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\\n{% endfor %}",
    ...                      [{"role": "user", "content": "Hi"}])
    '[user] Hi\\n'
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

__all__ = ["render_chat_template"]


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = False,
                         **variables) -> str:
    """`messages` ([{"role": ..., "content": ...}, ...]) written out by the Jinja `template`.

    `variables` are passed to the template as well (Hugging Face passes ``bos_token``,
    ``eos_token``, ``tools``, ...). Raises ``ValueError`` for a message that is not a
    dict with str role and content, and for a template that fails to render.
    """
    if not isinstance(template, str) or not template:
        raise ValueError(f"template must be a non-empty Jinja string, got {type(template).__name__}")
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with a str 'role' and a str 'content', got {m!r:.80}")
    if not isinstance(add_generation_prompt, bool):
        raise ValueError(f"add_generation_prompt must be True or False, got {add_generation_prompt!r}")
    import jinja2

    try:
        return _compile(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         **variables)
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"the chat template refused the conversation: {e}") from e

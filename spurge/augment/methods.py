"""The augmentation-method registry: one entry per method, the only place that lists them.

A :class:`Method` says whether the method learns a class token (textual inversion), which
``(prompt, context)`` pairs each class cycles through, whether it needs a synthetic store
(``spurge augment`` makes one; ``spurge evaluate`` reads it), and which ``train()`` options a
store-less baseline sets. ``spurge augment --method`` offers every method that needs a store,
and ``spurge evaluate --methods`` accepts every registered name.

Adding a method is one call::

    register(Method("my-method", uses_tokens=False, needs_store=True, prompts=my_prompts))

where ``my_prompts(config, class_name)`` returns ``[(prompt, context_or_None), ...]``, the
plain prompt first. Nothing else needs editing: the plan, the generator, the store rows, the
CLI's choices and the evaluation pick it up by name. This module imports nothing heavy, so the
CLI can read the registry without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from spurge.errors import ConfigError

if TYPE_CHECKING:
    from spurge.config import SpeciesConfig

#: ``prompts(config, class_name)`` -> ``[(prompt, context or None), ...]``, plain prompt first.
PromptFn = Callable[["SpeciesConfig", str], list[tuple[str, str | None]]]


@dataclass(frozen=True)
class Method:
    """One augmentation method."""

    name: str
    uses_tokens: bool = False  # learns/loads a textual-inversion token per class
    needs_store: bool = True  # generates a synthetic store (False: a train-time baseline)
    prompts: PromptFn | None = None  # required when needs_store
    train_options: Mapping[str, Any] = field(default_factory=dict)  # baselines: train() kwargs
    help: str = ""  # one phrase for the CLI's --method help

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip() or "," in self.name:
            raise ConfigError(f"method name {self.name!r} must be non-empty, without commas")
        if self.needs_store and self.prompts is None:
            raise ConfigError(f"method {self.name!r} makes synthetic images but has no prompts")
        if not self.needs_store and self.uses_tokens:
            raise ConfigError(f"method {self.name!r} uses tokens but makes no synthetic images")


_REGISTRY: dict[str, Method] = {}
#: Read-only live view of the registry, by name, in registration order.
METHODS: Mapping[str, Method] = MappingProxyType(_REGISTRY)


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` to redefine a name); returns it."""
    if method.name in _REGISTRY and not replace:
        raise ConfigError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests and plug-ins that register temporarily)."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method ``name``; a one-line error lists the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}"
        ) from None


def generation_methods() -> list[str]:
    """Names of the methods that make a synthetic store (``spurge augment --method``)."""
    return [m.name for m in _REGISTRY.values() if m.needs_store]


def check_templates(config: SpeciesConfig) -> None:
    """Both prompt templates need a ``{token}`` slot (for the token or the class's words)."""
    for name, template in (
        ("prompt_template", config.prompt_template),
        ("context_template", config.context_template),
    ):
        if "{token}" not in template:
            raise ConfigError(f"{name}: must contain a {{token}} slot for the class token")


def class_phrase(config: SpeciesConfig, class_name: str) -> str:
    """Words for a class in a real-guidance prompt: its description, else species + class."""
    spec = config.classes[config.class_index(class_name)]
    return spec.description or f"{config.species} {class_name}"


def token_prompt(config: SpeciesConfig, class_name: str) -> list[tuple[str, str | None]]:
    """The plain prompt with the class token (textual inversion)."""
    return [(config.prompt_template.format(token=config.token(class_name)), None)]


def token_context_prompts(config: SpeciesConfig, class_name: str) -> list[tuple[str, str | None]]:
    """The plain token prompt, then one per context prompt (DA-Fusion's multi-context)."""
    token = config.token(class_name)
    return token_prompt(config, class_name) + [
        (config.context_template.format(token=token, context=c), c) for c in config.context_prompts
    ]


def phrase_prompt(config: SpeciesConfig, class_name: str) -> list[tuple[str, str | None]]:
    """The plain prompt with the class's words instead of a token (Real Guidance)."""
    return [(config.prompt_template.format(token=class_phrase(config, class_name)), None)]


register(Method("none", needs_store=False, help="no augmentation"))
register(
    Method(
        "randaugment",
        needs_store=False,
        train_options={"randaugment": True},
        help="RandAugment on the real tiles",
    )
)
register(
    Method(
        "da-fusion",
        uses_tokens=True,
        prompts=token_context_prompts,
        help="class tokens + context prompts",
    )
)
register(
    Method(
        "textual-inversion",
        uses_tokens=True,
        prompts=token_prompt,
        help="class tokens only",
    )
)
register(
    Method(
        "real-guidance",
        prompts=phrase_prompt,
        help="the class's words in the prompt, no tokens",
    )
)

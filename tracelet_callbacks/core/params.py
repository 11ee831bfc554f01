"""Hyperparameters -> nested, JSON-safe dicts, with secrets replaced before anything is stored.

>>> to_params({"lr": 1e-3, "hub_token": "hf_abc", "db": "postgresql://me:pw@host/db"})
{'lr': 0.001, 'hub_token': '<redacted>', 'db': 'postgresql://me:<redacted>@host/db'}
>>> to_params({"seed": 2**70})
{'seed': '1180591620717411303424'}
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import json
import math
import numbers
import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from .values import is_tensor

__all__ = [
    "REDACTED",
    "is_secret_key",
    "parameter_counts",
    "redact",
    "redact_text",
    "redacted_argv",
    "scrubbed_config",
    "to_params",
]

REDACTED = "<redacted>"

#: Key words that mark a secret. A key is split into words (``hub_token`` -> ``hub``, ``token``;
#: ``apiKey`` -> ``api``, ``key``) and matched word-wise, so ``pad_token_id`` and ``max_tokens``
#: (counts, not secrets) are kept while ``token``, ``hub_token`` and ``HF_TOKEN`` are not.
_SECRET_WORDS = frozenset(
    {
        "secret",
        "secrets",
        "password",
        "passwords",
        "passwd",
        "passphrase",
        "credential",
        "credentials",
        "apikey",
        "accesskey",
        "authorization",
        "bearer",
        "privatekey",
        "webhook",
    }
)
#: ``<word>_key``: the words before ``key`` that make it a credential (``sort_key`` stays a setting).
_KEY_OWNERS = (
    "api", "access", "private", "auth", "ssh", "wandb", "secret", "signing", "encryption", "master",
    "client", "service", "account", "storage", "subscription", "license", "openai", "anthropic", "hf",
    "github", "aws", "azure", "gcp", "comet", "neptune", "mlflow", "slack", "stripe",
)  # fmt: skip
_SECRET_PAIRS = frozenset({(first, second) for first in _KEY_OWNERS for second in ("key", "keys")})
_TOKEN_TAIL = "token"
#: ``token`` followed by one of these still holds tokens (``auth_token_list``); followed by anything else
#: it names a hyperparameter about tokens (``token_dropout``, ``token_type_ids``).
_TOKEN_HOLDERS = frozenset({"list", "lists", "dict", "map", "string", "str", "env"})
#: Words that make a secret only as the key's last word: ``pwd``, ``http_auth`` (not ``auth_type``).
_SECRET_LAST_WORDS = frozenset({"pwd", "auth"})
#: Tokenizer settings that end in "token" but hold vocabulary entries such as "<s>", not secrets.
_VOCABULARY_TOKENS = frozenset(
    {"bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token"}
)

#: Values that are secrets wherever they appear (well-known token shapes), inside any text.
_TOKEN_VALUE = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|xox[abpr]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}"
    r"|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})(?![A-Za-z0-9_\-])"
)
#: A PEM private key block (terminated or cut off).
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)", re.S
)
#: ``Bearer <token>`` in a header or a command line.
_BEARER = re.compile(r"(?P<head>\b[Bb]earer\s+)[A-Za-z0-9\-._~+/]{8,}=*")
#: A query parameter (``?name=value``); its value is hidden when the name is a secret's (see
#: :func:`is_secret_key`) or one of :data:`_QUERY_SECRET_NAMES`.
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[A-Za-z0-9_.\-]+)=)(?P<value>[^&#\s]+)")
#: Query parameter names that carry credentials though they look harmless: Azure SAS ``sig``, Google's
#: ``key``, AWS's ``X-Amz-Signature`` / ``X-Amz-Credential``.
_QUERY_SECRET_NAMES = frozenset({"sig", "signature", "key", "x-amz-signature", "x-amz-credential", "code"})
#: ``password=hunter2``, ``DB_PASSWORD=...``, ``api_key: abc`` in free text.
_ASSIGNED_SECRET = re.compile(
    r"(?P<head>(?<![A-Za-z0-9])(?:password|passwd|pwd|secret|api[_\-]?key|access[_\-]?key)['\"]?\s*[=:]\s*['\"]?)"
    r"(?!<redacted>)[^\s,;&'\"]+",
    re.I,
)
#: Webhook URLs whose path is the credential (Slack, Discord).
_WEBHOOK = re.compile(r"(?P<head>hooks\.slack\.com/services/|discord(?:app)?\.com/api/webhooks/)\S+", re.I)
#: ``scheme://user:password@host`` -> the password part.
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>\S+)(?P<tail>@)(?=[^@\s/]+(?:[/\s?#]|$))"
)
#: ``scheme://<token>@host``: a user part with no password but shaped like a token (how git remotes
#: carry credentials).
_URL_TOKEN = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[A-Za-z0-9_\-]{20,})@")
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")

MAX_LIST_ITEMS = 64
MAX_DEPTH = 12


def is_secret_key(key: Any) -> bool:
    """Whether values under ``key`` must never be stored.

    >>> [is_secret_key(k) for k in ("hub_token", "HF_TOKEN", "apiKey", "db_password", "pad_token_id")]
    [True, True, True, True, False]
    """
    words = [word.lower() for word in _WORDS.findall(str(key))]
    if not words or str(key).lower() in _VOCABULARY_TOKENS:
        return False
    if _SECRET_WORDS.intersection(words) or words[-1].endswith(_TOKEN_TAIL):
        return True
    if words[-1] in _SECRET_LAST_WORDS:
        return True
    for i, word in enumerate(words[:-1]):  # ``auth_token_list``; not ``token_dropout``
        if word == _TOKEN_TAIL and words[i + 1] in _TOKEN_HOLDERS:
            return True
    return any(tuple(words[i : i + 2]) in _SECRET_PAIRS for i in range(len(words) - 1))


def redact_text(text: str) -> str:
    """Hide the secrets a string can carry: private key blocks, bearer tokens, URL passwords and URL
    tokens, credential query parameters, ``password=...`` assignments, webhook paths, and well-known
    token shapes anywhere in it.

    >>> redact_text("curl -H 'Authorization: Bearer abc.defghi' https://x.io/a?api_key=123&page=2")
    "curl -H 'Authorization: Bearer <redacted>' https://x.io/a?api_key=<redacted>&page=2"
    """
    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY.sub(REDACTED, text)
    text = _TOKEN_VALUE.sub(REDACTED, text)
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}{m['tail']}", text)
        text = _URL_TOKEN.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    if "=" in text and ("?" in text or "&" in text):
        text = _QUERY_PARAM.sub(_query_value, text)
    for pattern in (_BEARER, _ASSIGNED_SECRET, _WEBHOOK):
        text = pattern.sub(lambda m: f"{m['head']}{REDACTED}", text)
    return text


def _query_value(match: re.Match) -> str:
    name = match["name"]
    secret = is_secret_key(name) or name.lower() in _QUERY_SECRET_NAMES
    return f"{match['head']}{REDACTED}" if secret and match["value"] != REDACTED else match[0]


def to_params(obj: Any) -> Any:
    """Turn a hyperparameter container into JSON-safe nested dicts and lists, secrets redacted.

    Accepts ``argparse.Namespace``, mappings, dataclasses, OmegaConf configs, pydantic models and any
    object with ``to_dict()`` (``TrainingArguments``, ``PretrainedConfig``, PEFT configs). Paths,
    enums, dtypes and devices become strings; small tensors become lists and large ones a shape
    summary; other objects become their class name.
    """
    return _walk(_unwrap(obj), secret=False, depth=0, keep=False)


def redact(value: Any) -> tuple[Any, bool]:
    """``(value with secrets replaced, whether anything was)``; containers keep their type and order.

    The type-keeping mode of the walker behind :func:`to_params`, for objects written back where they
    came from (a checkpoint's saved hyperparameters, which ``load_from_checkpoint`` passes to
    ``__init__``). Values under a secret key (see :func:`is_secret_key`) become the marker, every leaf
    of them when the value is a container; strings elsewhere lose URL passwords and token-shaped
    values; nothing else is converted.

    >>> redact({"lr": 0.1, "api_key": "abc", "db": ["postgresql://me:pw@h/d"]})
    ({'lr': 0.1, 'api_key': '<redacted>', 'db': ['postgresql://me:<redacted>@h/d']}, True)
    >>> redact({"lr": 0.1, "hub_token": None, "login": {"user": "me", "password": ""}})
    ({'lr': 0.1, 'hub_token': None, 'login': {'user': 'me', 'password': ''}}, False)
    >>> redact({"credentials": {"user": "me", "key": "abc"}})
    ({'credentials': {'user': '<redacted>', 'key': '<redacted>'}}, True)
    """
    new = _walk(value, secret=False, depth=0, keep=True)
    return new, new is not value


def _walk(value: Any, secret: bool, depth: int, keep: bool) -> Any:
    """The one redaction walker: ``value`` with every secret replaced by :data:`REDACTED`.

    ``secret``: ``value`` sits under a secret key. ``keep=False`` converts as it goes (JSON-safe
    copies; a secret container is hidden whole); ``keep=True`` keeps every type, hides a secret
    container leaf by leaf, and returns ``value`` itself where nothing changed, so callers can tell.
    """
    unset = value is None or (isinstance(value, (str, bytes)) and not value)  # "is it set" stays readable
    if secret and not unset and not (keep and (isinstance(value, bool) or _is_container(value))):
        return REDACTED
    if value is None or isinstance(value, bool):
        return value
    if keep:
        if isinstance(value, str):
            text = redact_text(value)
            return value if text == value else text
        return _rebuilt(value, secret, depth) if _is_container(value) else value
    return _converted(value, depth)


def _is_container(value: Any) -> bool:
    """What the type-keeping mode walks into."""
    return isinstance(value, (MutableMapping, list, tuple, argparse.Namespace)) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


def _rebuilt(value: Any, secret: bool, depth: int) -> Any:
    """A container of the same type with its secrets replaced, or ``value`` itself if it had none."""

    def item(name: Any, inner: Any) -> Any:
        return _walk(inner, secret or (bool(name) and is_secret_key(name)), depth + 1, keep=True)

    if isinstance(value, MutableMapping):  # dict, Lightning's AttributeDict, OmegaConf's DictConfig
        changes = {name: new for name, inner in value.items() if (new := item(name, inner)) is not inner}
        result = copy.copy(value) if changes else value
        for name, new in changes.items():
            result[name] = new
        return result
    if isinstance(value, argparse.Namespace):
        inner = vars(value)
        new = _rebuilt(inner, secret, depth)
        return value if new is inner else argparse.Namespace(**new)
    if isinstance(value, (list, tuple)):
        names = _item_names(value)
        items = [item(name, inner) for name, inner in zip(names, value, strict=True)]
        if all(new is inner for new, inner in zip(items, value, strict=True)):
            return value
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    changes = {}  # a dataclass
    for field in dataclasses.fields(value):
        inner = getattr(value, field.name, None)
        if (new := item(field.name, inner)) is not inner:
            changes[field.name] = new
    result = copy.copy(value) if changes else value
    for name, new in changes.items():
        object.__setattr__(result, name, new)  # frozen dataclasses too
    return result


def _item_names(items: Any) -> list[Any]:
    """The keys a sequence's items sit under: a namedtuple's fields, and for a ``(name, value)`` pair
    such as ``("password", x)`` its first item names the second; else none.

    >>> _item_names(("password", "x")), _item_names(["token", "sentence"])
    (['', 'password'], ['', ''])
    """
    fields = getattr(items, "_fields", None)
    if fields:
        return list(fields)
    if isinstance(items, tuple) and len(items) == 2 and isinstance(items[0], str):
        return ["", items[0]]  # a tuple, not a list: ``["token", "sentence"]`` is a list of names
    return [""] * len(items)


def _unwrap(obj: Any) -> Any:
    """Containers that are not plain mappings, as a mapping (or ``obj`` unchanged)."""
    module = type(obj).__module__ or ""
    if module.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True, throw_on_missing=False)
    if hasattr(obj, "model_dump") and callable(obj.model_dump):  # pydantic v2
        return obj.model_dump()
    if hasattr(obj, "to_dict") and callable(obj.to_dict) and not isinstance(obj, Mapping):
        try:
            return obj.to_dict()
        except Exception:
            pass
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj) if f.repr}
    if type(obj).__name__ == "Namespace" and hasattr(obj, "__dict__"):
        return vars(obj)
    return obj


def _converted(value: Any, depth: int) -> Any:
    """The JSON-safe copy of a value that is not a secret (see :func:`_walk`)."""
    if isinstance(value, enum.Enum):  # before str: PEFT's enums are str subclasses aim cannot encode
        return (
            _walk(value.value, False, depth, keep=False)
            if isinstance(value.value, (str, int, float))
            else value.name
        )
    if isinstance(value, str):
        return redact_text(str.__str__(value))  # a plain str, whatever subclass came in
    if isinstance(value, numbers.Integral):
        number = int(value)  # aim stores 64-bit integers: a larger one (a seed's entropy) as its digits
        return number if -(2**63) <= number < 2**63 else str(number)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else str(number)  # JSON has no NaN / inf
    if isinstance(value, numbers.Complex):  # nor complex numbers: kept whole, as Python writes them
        return str(complex(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if depth >= MAX_DEPTH:
        return type(value).__name__
    if is_tensor(value) or _is_array(value):
        return _array_summary(value)
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        return _walk(value.item(), False, depth, keep=False)  # numpy scalars
    unwrapped = _unwrap(value)
    if isinstance(unwrapped, Mapping):
        return {str(k): _walk(v, is_secret_key(k), depth + 1, keep=False) for k, v in unwrapped.items()}
    if isinstance(unwrapped, (list, tuple, set, frozenset)):
        items = list(unwrapped)
        if isinstance(unwrapped, (set, frozenset)):
            items = sorted(items, key=repr)
        names = _item_names(unwrapped)
        converted = [
            _walk(item, bool(name) and is_secret_key(name), depth + 1, keep=False)
            for name, item in zip(names[:MAX_LIST_ITEMS], items[:MAX_LIST_ITEMS], strict=True)
        ]
        if len(items) > MAX_LIST_ITEMS:
            converted.append(f"... {len(items) - MAX_LIST_ITEMS} more")
        return converted
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '') or ''}.{value.__qualname__}".lstrip(".")
    name = type(value).__name__
    module = type(value).__module__ or ""
    if name in ("dtype", "device") or module.split(".")[0] in ("torch", "numpy"):
        return str(value)
    return name


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "shape") and hasattr(value, "tolist")


def _array_summary(value: Any) -> Any:
    shape = tuple(value.shape)
    count = 1
    for dim in shape:
        count *= dim
    if count <= 16:
        data = value.detach().cpu().tolist() if is_tensor(value) else value.tolist()
        return _walk(data, False, 0, keep=False)
    kind = "Tensor" if is_tensor(value) else "ndarray"
    dtype = str(value.dtype).replace("torch.", "")
    return f"{kind}(shape={list(shape)}, dtype={dtype})"


def parameter_counts(model: Any) -> dict[str, Any]:
    """Class and parameter counts of a torch module, the same keys for every adapter.

    A lazy module's parameters have no size before the first forward pass; they are counted apart
    (``uninitialized_parameters``) instead of failing.
    """
    total = trainable = lazy = 0
    for parameter in model.parameters():
        try:
            count = parameter.numel()
        except ValueError:
            lazy += 1
            continue
        total += count
        trainable += count if parameter.requires_grad else 0
    found: dict[str, Any] = {
        "class": type(model).__name__,
        "num_parameters": total,
        "trainable_parameters": trainable,
    }
    if lazy:
        found["uninitialized_parameters"] = lazy
    return found


def redacted_argv(argv: list[str]) -> list[str]:
    """The command line with values of secret-looking options hidden.

    >>> redacted_argv(["train.py", "--hub_token", "hf_x", "--api-key=abc", "--lr", "0.1"])
    ['train.py', '--hub_token', '<redacted>', '--api-key=<redacted>', '--lr', '0.1']
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            hide_next = False
            if not arg.startswith("-"):
                out.append(REDACTED)
                continue
        if arg.startswith("-") or "=" in arg:  # --key=value, --key value, and Hydra's key.sub=value
            option, eq, value = arg.lstrip("-").partition("=")
            if is_secret_key(option.replace("-", "_").rsplit(".", 1)[-1]):
                if not arg.startswith("-") and not eq:
                    out.append(arg)
                    continue
                if eq:
                    out.append(arg[: len(arg) - len(value)] + REDACTED)
                else:
                    out.append(arg)
                    hide_next = True
                continue
        out.append(redact_text(arg))
    return out


#: Config files up to this size are read and redacted before they are stored; larger ones (data, not
#: configs) are stored as they are.
JSON_SCRUB_LIMIT = 16 << 20


#: JSON and YAML files that hold settings (``config.json``, ``adapter_config.json``, ``settings.json``,
#: Lightning's ``hparams.yaml``, ``config.yml`` ...), as opposed to data whose keys are words (a
#: tokenizer's ``vocab.json``).
_CONFIG_FILE = re.compile(
    r"(?:config|settings|args|arguments|params|hparams|hyperparameters)[^/\\]*\.(json|ya?ml)$", re.I
)
_DATA_FILE = re.compile(r"(?:token|vocab|merges)[^/\\]*$", re.I)


def scrubbed_config(path: str, folder: str) -> str:
    """``path`` itself when it is no JSON or YAML config or holds no secret, else a redacted copy
    written under ``folder`` with the same file name (HF's ``config.json``, Lightning's
    ``hparams.yaml``, a run's ``settings.json`` ...).

    Only settings files are read: in a tokenizer's ``vocab.json`` the keys are words, and hiding the
    ids of ``"token"`` or ``"password"`` would break the tokenizer. YAML is read with PyYAML (which
    Lightning and transformers bring); without it a YAML file is stored as it is.
    """
    name = os.path.basename(path)
    found = _CONFIG_FILE.search(name)
    if not found or _DATA_FILE.search(name):
        return path
    yaml = None
    if found.group(1).lower() != "json":
        try:
            import yaml
        except ImportError:
            return path
    try:
        if os.path.getsize(path) > JSON_SCRUB_LIMIT:
            return path
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle) if yaml is None else yaml.safe_load(handle)
    except (OSError, ValueError, getattr(yaml, "YAMLError", ValueError)):  # not a config after all
        return path
    cleaned, changed = redact(content)
    if not changed:
        return path
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, os.path.basename(path))
    with open(target, "w", encoding="utf-8") as handle:
        if yaml is None:
            json.dump(cleaned, handle, indent=2)
        else:
            yaml.safe_dump(cleaned, handle, sort_keys=False)
    return target

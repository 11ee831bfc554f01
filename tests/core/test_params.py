"""Hyperparameters -> JSON-safe nested dicts, with secrets redacted before anything is stored."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest

from tracelet_callbacks.core.params import REDACTED, is_secret_key, redact_text, to_params
from tracelet_callbacks.sink.environment import redacted_argv

OPENAI_LIKE = "sk-" + "A1b2C3d4" * 5
HF_LIKE = "hf_" + "aBcD1234" * 5


class Colour(enum.Enum):
    RED = "red"
    ONE = 1
    PAIR = (1, 2)


@dataclasses.dataclass
class TrainConfig:
    lr: float = 0.1
    epochs: int = 3
    out: Path = Path("/tmp/out")
    hidden: int = dataclasses.field(default=0, repr=False)
    optim: dict = dataclasses.field(default_factory=lambda: {"name": "adam", "betas": (0.9, 0.99)})


class PydanticConfig(pydantic.BaseModel):
    lr: float = 0.01
    hub_token: str = "plain-secret"
    layers: list[int] = [1, 2]


class WithToDict:
    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "bert", "password": "x", "vocab_size": 30522}


def _json_safe(value: Any) -> None:
    assert json.loads(json.dumps(value, allow_nan=False)) == value


# -- containers -------------------------------------------------------------------------------------


def test_dict_and_nested_dicts() -> None:
    params = {"lr": 1e-3, "model": {"depth": 4, "blocks": [1, (2, 3)], "opt": {"name": "sgd"}}}
    out = to_params(params)
    assert out == {"lr": 1e-3, "model": {"depth": 4, "blocks": [1, [2, 3]], "opt": {"name": "sgd"}}}
    _json_safe(out)


def test_namespace() -> None:
    out = to_params(argparse.Namespace(lr=0.1, name="run", data=Path("/data/x")))
    assert out == {"lr": 0.1, "name": "run", "data": "/data/x"}


def test_dataclass_skips_repr_false_fields() -> None:
    out = to_params(TrainConfig())
    assert out == {
        "lr": 0.1,
        "epochs": 3,
        "out": "/tmp/out",
        "optim": {"name": "adam", "betas": [0.9, 0.99]},
    }
    _json_safe(out)


def test_pydantic_model() -> None:
    out = to_params(PydanticConfig())
    assert out == {"lr": 0.01, "hub_token": REDACTED, "layers": [1, 2]}


def test_object_with_to_dict() -> None:
    assert to_params(WithToDict()) == {"model_type": "bert", "password": REDACTED, "vocab_size": 30522}


def test_nested_containers_inside_a_dict() -> None:
    out = to_params({"train": TrainConfig(lr=0.5), "ns": argparse.Namespace(k=1)})
    assert out["train"]["lr"] == 0.5
    assert out["ns"] == {"k": 1}


# -- leaf values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Path("/a/b"), "/a/b"),
        (Colour.RED, "red"),
        (Colour.ONE, 1),
        (Colour.PAIR, "PAIR"),
        (np.dtype("float32"), "float32"),
        (np.dtype("int64"), "int64"),
        (np.int64(3), 3),
        (np.float32(0.5), 0.5),
        (np.bool_(True), True),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
        (np.float64("nan"), "nan"),
        (None, None),
        (True, True),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        (np.arange(4), [0, 1, 2, 3]),
        (np.array([[1.5, 2.5]]), [[1.5, 2.5]]),
        (np.zeros((10, 10)), "ndarray(shape=[10, 10], dtype=float64)"),
        (int, "builtins.int"),
        (object(), "object"),
    ],
    ids=repr,
)
def test_leaf_values(value: Any, expected: Any) -> None:
    out = to_params({"v": value})["v"]
    assert out == expected
    assert type(out) is type(expected)
    _json_safe({"v": out})


def test_long_lists_are_truncated() -> None:
    out = to_params({"ids": list(range(100))})["ids"]
    assert out[:64] == list(range(64))
    assert len(out) == 65
    assert out[-1] == "... 36 more"


# -- secrets ----------------------------------------------------------------------------------------

SECRET_KEYS = [
    "token",
    "hub_token",
    "HF_TOKEN",
    "api_key",
    "apiKey",
    "OPENAI_API_KEY",
    "aws_secret_access_key",
    "db_password",
    "passwd",
    "credentials",
    "private_key",
    "access_token",
    "client_secret",
    "Authorization",
    "pwd",
    "db_pwd",
    "auth",
    "http_auth",
    "wandb_key",
    "ssh_key",
    "auth_token_list",
    "use_auth_token",
    "slack_webhook",
]
HARMLESS_KEYS = [
    "pad_token_id",
    "max_tokens",
    "num_tokens",
    "tokenizer_name",
    "learning_rate",
    "key_dim",
    "max_new_tokens",
    "token_id",
    "token_dropout",
    "token_budget",
    "token_embedding_dim",
    "token_type_ids",
    "auth_type",
    "author",
    "sort_key",
    "special_tokens",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_redacted(key: str) -> None:
    assert is_secret_key(key)
    out = to_params({key: "s3cr3t-value", "lr": 0.1})
    assert out == {key: REDACTED, "lr": 0.1}
    assert "s3cr3t" not in json.dumps(out)


@pytest.mark.parametrize("key", HARMLESS_KEYS)
def test_harmless_keys_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert to_params({key: 42}) == {key: 42}


@pytest.mark.parametrize("value", [12345, 0.5, False, {"user": "u", "pass": "p"}, ["a", "b"]], ids=repr)
def test_secret_key_redacts_any_value_type(value: Any) -> None:
    assert to_params({"api_key": value}) == {"api_key": REDACTED}


def test_secret_key_with_array_value_is_redacted() -> None:
    # an array must not be compared with == against None / "" (ambiguous truth value)
    assert to_params({"private_key": np.arange(3)}) == {"private_key": REDACTED}


def test_empty_secret_values_are_left_as_they_are() -> None:
    assert to_params({"token": None, "hub_token": ""}) == {"token": None, "hub_token": ""}


def test_nested_secrets_redacted_at_any_depth() -> None:
    params = {
        "a": {"b": {"c": {"hub_token": "deep-one"}}},
        "list": [{"api_key": "in-a-list"}, {"ok": 1}],
        "ns": argparse.Namespace(db_password="in-a-namespace"),
    }
    out = to_params(params)
    assert out["a"]["b"]["c"]["hub_token"] == REDACTED
    assert out["list"] == [{"api_key": REDACTED}, {"ok": 1}]
    assert out["ns"] == {"db_password": REDACTED}
    text = json.dumps(out)
    assert "deep-one" not in text and "in-a-list" not in text and "in-a-namespace" not in text


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("postgresql://u:pw@h/db", ["postgresql://u:", "@h/db"]),
        ("redis://:pw@cache:6379/0", ["redis://:", "@cache:6379/0"]),
        ("https://alice:pw@example.com/path", ["alice", "example.com/path"]),
        ("see mysql://bob:pw@db.local/x for details", ["bob", "db.local", "for details"]),
    ],
)
def test_url_passwords_replaced(url: str, kept: list[str]) -> None:
    out = to_params({"database_url": url})["database_url"]
    assert ":pw@" not in out
    assert REDACTED in out
    for part in kept:
        assert part in out


def test_urls_without_password_unchanged() -> None:
    for text in ("https://example.com/a@b", "http://host:8080/x", "user@example.com"):
        assert redact_text(text) == text


@pytest.mark.parametrize("value", [OPENAI_LIKE, HF_LIKE, "ghp_" + "x1Y2" * 6, "AKIA" + "ABCDEFGHIJ123456"])
def test_token_shaped_values_redacted_under_harmless_keys(value: str) -> None:
    out = to_params({"model_name": value, "notes": [value], "nested": {"x": value}})
    assert out == {"model_name": REDACTED, "notes": [REDACTED], "nested": {"x": REDACTED}}


@pytest.mark.parametrize("value", ["sk-abc", "hf_short", "bert-base-uncased", "gpt2"])
def test_short_or_ordinary_strings_kept(value: str) -> None:
    assert to_params({"model_name": value}) == {"model_name": value}


# -- the command line -------------------------------------------------------------------------------


def test_redacted_argv() -> None:
    argv = [
        "train.py",
        "--hub_token",
        "plain-value",
        "--api-key=abc",
        "--HF_TOKEN=",
        "--lr",
        "0.1",
        "--pad_token_id",
        "0",
        "--db",
        "postgresql://u:pw@h/db",
        HF_LIKE,
    ]
    out = redacted_argv(argv)
    assert out == [
        "train.py",
        "--hub_token",
        REDACTED,
        f"--api-key={REDACTED}",
        f"--HF_TOKEN={REDACTED}",
        "--lr",
        "0.1",
        "--pad_token_id",
        "0",
        "--db",
        f"postgresql://u:{REDACTED}@h/db",
        REDACTED,
    ]
    assert argv[2] == "plain-value"  # the input list is not modified


def test_redacted_argv_trailing_secret_flag() -> None:
    assert redacted_argv(["x.py", "--token"]) == ["x.py", "--token"]


def test_str_enums_and_str_subclasses_become_plain_str() -> None:
    class Kind(str, enum.Enum):  # how PEFT declares PeftType / TaskType
        LORA = "LORA"

    class Tagged(str):
        pass

    converted = to_params({"kind": Kind.LORA, "label": Tagged("x")})
    assert converted == {"kind": "LORA", "label": "x"}
    assert type(converted["kind"]) is str and type(converted["label"]) is str


def test_git_info_of_a_repository_with_a_secret_in_its_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracelet_callbacks.sink.environment import _git_info

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    monkeypatch.chdir(tmp_path)
    git("init", "-q", "-b", "work")
    assert _git_info() == {}  # nothing committed yet
    (tmp_path / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "first")
    assert _git_info() == {
        "commit": {"hash": git("rev-parse", "HEAD")},
        "branch": "work",
        "remote_origin_url": "",  # no remote: the rest is still recorded
        "dirty": False,
    }
    git("remote", "add", "origin", "https://user:s3cret@example.com/team/repo.git")
    (tmp_path / "train.py").write_text("print(2)\n")
    info = _git_info()
    assert info["dirty"] is True
    assert (
        "s3cret" not in info["remote_origin_url"] and "example.com/team/repo.git" in info["remote_origin_url"]
    )
    git("checkout", "-q", "--detach")
    assert _git_info()["branch"] == "HEAD"


@pytest.mark.parametrize(
    ("text", "hidden", "kept"),
    [
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----", "MIIEabc", ""),
        ("key: -----BEGIN OPENSSH PRIVATE KEY-----\ncut off", "cut off", "key: "),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi", "Authorization: Bearer"),
        ("https://api.x.io/v1?api_key=K3Y&page=2", "K3Y", "page=2"),
        ("https://a.blob.core.windows.net/c?sv=2020&sig=S1G%2B", "S1G", "sv=2020"),
        ("https://h.io/cb?access_token=T0K", "T0K", "https://h.io/cb"),
        ("connect with password=hunter2 then retry", "hunter2", "then retry"),
        ("password: 1234", "1234", "password"),
        ("see ?token=abc&x=1", "abc", "&x=1"),
        ("DB_PASSWORD=hunter2 OPENAI_API_KEY=k3y", "hunter2", "DB_PASSWORD="),
        ("{'password': 'hunter2'}", "hunter2", "{'password': '"),
        ("https://maps.example.com/api?key=AIzaSyA1&zoom=3", "AIzaSyA1", "zoom=3"),
        ("https://hooks.slack.com/services/T00/B00/XXYYZZ", "XXYYZZ", "hooks.slack.com/services/"),
        ("export OPENAI_API_KEY=" + OPENAI_LIKE + " && run", OPENAI_LIKE, "&& run"),
        ("cfg " + HF_LIKE + ".", HF_LIKE, "cfg "),
    ],
)
def test_secret_shapes_inside_text_are_hidden(text: str, hidden: str, kept: str) -> None:
    out = redact_text(text)
    assert hidden not in out and REDACTED in out
    assert kept in out


@pytest.mark.parametrize(
    "text",
    [
        "token: 512",
        "max token: 512",
        "ratio: 0.3",
        "tokenizer=bert-base",
        "https://github.com/o/r",
        "x@y",
        "?tokenizer=bert&author=me&design=a&monkey=1&signature_version=v4",
        "the Bearer of bad news",
    ],
)
def test_ordinary_text_is_left_as_it_is(text: str) -> None:
    assert redact_text(text) == text


def test_a_name_value_pair_hides_its_value() -> None:
    assert to_params({"pairs": [("password", "p4ss"), ("lr", 0.1)]}) == {
        "pairs": [["password", REDACTED], ["lr", 0.1]]
    }
    assert to_params({"levels": ["token", "sentence"]}) == {"levels": ["token", "sentence"]}  # a list


def test_only_json_and_yaml_settings_files_are_scrubbed(tmp_path: Any) -> None:
    from tracelet_callbacks.core.params import scrubbed_config

    content = {"token": 5, "password": 7, "hidden": 4, "api_key": "k"}
    for name in ("config.json", "adapter_config.json", "vocab.json", "tokenizer_config.json", "data.json"):
        (tmp_path / name).write_text(json.dumps(content))
    scratch = str(tmp_path / "scratch")
    scrubbed = {
        name: scrubbed_config(str(tmp_path / name), scratch) for name in ("config.json", "vocab.json")
    }
    assert json.loads(Path(scrubbed["config.json"]).read_text())["api_key"] == REDACTED
    assert scrubbed["vocab.json"] == str(tmp_path / "vocab.json")  # words as keys: stored as it is
    assert scrubbed_config(str(tmp_path / "tokenizer_config.json"), scratch) == str(
        tmp_path / "tokenizer_config.json"
    )
    assert scrubbed_config(str(tmp_path / "data.json"), scratch) == str(tmp_path / "data.json")
    # YAML settings (Lightning's hparams.yaml) too; a YAML file that does not parse is left as it is
    (tmp_path / "hparams.yaml").write_text("lr: 0.1\nwandb:\n  api_key: k\n  project: p\n")
    (tmp_path / "broken_config.yml").write_text("a: [1, 2\n")
    yaml = pytest.importorskip("yaml")
    hparams = yaml.safe_load(Path(scrubbed_config(str(tmp_path / "hparams.yaml"), scratch)).read_text())
    assert hparams == {"lr": 0.1, "wandb": {"api_key": REDACTED, "project": "p"}}
    broken = str(tmp_path / "broken_config.yml")
    assert scrubbed_config(broken, scratch) == broken


def test_int_beyond_int64_is_stored_as_its_digits() -> None:
    assert to_params({"seed": 2**70, "ok": 2**62, "list": [-(2**64)]}) == {
        "seed": str(2**70),
        "ok": 2**62,
        "list": [str(-(2**64))],
    }


def test_complex_numbers_keep_their_value() -> None:
    """JSON has no complex numbers; a complex hyperparameter is kept whole as text, not as 'complex'."""
    params = to_params({"shift": np.complex128(1 + 2j), "plain": 3j, "single": np.complex64(0.5 - 1j)})
    assert params == {"shift": "(1+2j)", "plain": "3j", "single": "(0.5-1j)"}
    assert complex(params["shift"]) == 1 + 2j

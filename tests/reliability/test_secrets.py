"""Planted secrets never reach a file we write (issue 14, item 12): looked for in every byte under the
repo and the artifact store, and in everything aim's API reads back (aim compresses its databases, so
a byte grep alone could miss a value that is there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tracelet_callbacks as tracelet
from conftest import open_repo, read_run

pytestmark = pytest.mark.slow

HF_TOKEN = "hf_" + "PLANTEDhf" * 3
OPENAI = "sk-" + "PLANTEDopenai" * 2
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJQTEFOVEVEand0In0.PLANTEDjwtSignature"
PARAMS: dict[str, Any] = {
    "lr": 0.1,
    "ssh_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nPLANTEDpem1\n-----END OPENSSH PRIVATE KEY-----",
    "pasted_key": "text before -----BEGIN RSA PRIVATE KEY-----\nPLANTEDpem2\n-----END RSA PRIVATE KEY-----",
    "endpoint": "https://api.example.com/v1?api_key=PLANTEDquery&page=1",
    "pwd": "PLANTEDpwd",
    "auth": "PLANTEDauth",
    "wandb_key": "PLANTEDwandb",
    "auth_token_list": ["PLANTEDlist1", "PLANTEDlist2"],
    "header": "Authorization: Bearer PLANTEDbearer.abc",
    "container": "https://acct.blob.core.windows.net/c?sv=2020-01-01&sig=PLANTEDsas",
    "alerts": "https://hooks.slack.com/services/T000/B000/PLANTEDslack",
    "notes": "connect with password=PLANTEDfree and retry",
    "pairs": [("password", "PLANTEDpair"), ("lr", 0.1)],
    "nested": {"deeper": {"session": JWT, "model_id": HF_TOKEN, "llm": OPENAI}},
}
NEEDLES = [
    "PLANTEDpem1",
    "PLANTEDpem2",
    "PLANTEDquery",
    "PLANTEDpwd",
    "PLANTEDauth",
    "PLANTEDwandb",
    "PLANTEDlist1",
    "PLANTEDlist2",
    "PLANTEDbearer",
    "PLANTEDsas",
    "PLANTEDslack",
    "PLANTEDfree",
    "PLANTEDpair",
    "PLANTEDjwt",
    "PLANTEDhf",
    "PLANTEDopenai",
    "PLANTEDctx",
    "PLANTEDrun",
    "PLANTEDtag",
    "PLANTEDtrack",
    "PLANTEDtext",
    "PLANTEDconfig",
    "PLANTEDyaml",
]


def _every_byte(*folders: Path) -> bytes:
    return b"".join(path.read_bytes() for folder in folders for path in folder.rglob("*") if path.is_file())


def _through_aim(repo: Path) -> str:
    """Everything aim's API gives back about every run: metadata, contexts, texts."""
    found: list[Any] = []
    for run in open_repo(repo).iter_runs():
        full = read_run(repo, run.hash)
        found.append(full.meta_run_tree.collect())
        found.extend(metric.context.to_dict() for metric in full.metrics())
    for texts in open_repo(repo).query_texts("").iter():
        found.append(texts.context.to_dict())
        found.extend(getattr(text, "data", text) for text in texts.data.values_list())
    return json.dumps(found, default=str)


def test_planted_secrets_are_in_no_file_and_nowhere_aim_reads(repo_dir: Path) -> None:
    config_folder = repo_dir / "out" / "checkpoint-1"
    config_folder.mkdir(parents=True)
    (config_folder / "config.json").write_text(json.dumps({"hidden": 4, "api_key": "PLANTEDconfig"}))
    (config_folder / "hparams.yaml").write_text("lr: 0.5\ndata:\n  db_password: PLANTEDyaml\n")
    settings = {"repo_path": str(repo_dir), "system_tracking_interval": None}
    with tracelet.TraceletWriter(tensorboard=False, **settings) as w:
        exp = w.experiment
        exp.log_params(PARAMS)
        exp.log_metric("loss", 1.0, context={"token": "PLANTEDctx", "url": "https://h/?token=PLANTEDctx"})
        exp.run["extra"] = {"api_key": "PLANTEDrun"}
        exp.set_tags({"note": "password=PLANTEDtag"})
        exp.run.track(1.0, name="x", context={"password": "PLANTEDtrack"})
        w.add_text("log", "curl -H 'Authorization: Bearer PLANTEDtext' https://x")
        exp.log_artifact(config_folder)
    searched = _every_byte(repo_dir / ".aim", repo_dir / "aim-artifacts")
    read = _through_aim(repo_dir)
    # the checks see real content: params and text through aim, the stored config.json on disk
    assert '"lr": 0.1' in read and "Authorization: Bearer <redacted>" in read
    assert b'"hidden": 4' in searched and b"lr: 0.5" in searched
    for needle in NEEDLES:
        assert needle.encode() not in searched, f"{needle} is in a file under the repo"
        assert needle not in read, f"{needle} is read back through aim's API"

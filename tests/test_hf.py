"""TraceletCallback on a real ``Trainer`` with a tiny random BERT, read back from real AIM repos."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from transformers import Trainer, TrainerState  # noqa: E402

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import epochs, open_repo, read_run, series  # noqa: E402
from hf_helpers import BrokenPeftNet, LazyNet, TokenDataset, tiny_args, tiny_bert  # noqa: E402

TRAIN, VAL, TEST = {"subset": "train"}, {"subset": "val"}, {"subset": "test"}
SECRET = "hf_tracelettestsecret0123456789abcdef"
QUIET = {"system_tracking_interval": None}
FAST = {**QUIET, "writer": "thread"}  # no writer process to start: for tests of the callback's own logic
HERE = Path(__file__).parent


def _by_step(history: list[dict], key: str) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in history if key in entry}


def _ours(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, tracelet.TraceletWarning)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One full lifecycle shared by the assertions below: track before training, train with eval and
    checkpoints (log_model="all"), evaluate and predict after training, a non-numeric log, close."""
    root = tmp_path_factory.mktemp("hf")
    repo, store = root / "aim", root / "store"
    callback = tracelet.TraceletCallback(
        config=QUIET, repo_path=str(repo), artifacts_uri=str(store), log_model="all", tags={"team": "nlp"}
    )
    copies: dict[str, Any] = {"fresh": copy.deepcopy(pickle.loads(pickle.dumps(callback)))}
    args = tiny_args(
        str(root / "out"),
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        run_name="tiny-bert",
        hub_token=SECRET,
    )
    model = tiny_bert()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=TokenDataset(32),
        eval_dataset=TokenDataset(16, seed=1),
        callbacks=[callback],
    )
    run_hash = callback.run_hash  # the run is open before training
    copies["open"] = copy.deepcopy(callback).run_hash  # the live run stays behind, its hash travels
    callback.experiment.track(1.5, name="load_seconds", step=0)
    trainer.train()
    name_after_train = callback.experiment.name  # answered without reopening the closed run
    copies["ended"] = pickle.loads(pickle.dumps(callback)).run_hash
    after_train = {
        "loss": series(repo, "loss", TRAIN, run_hash),
        "status": read_run(repo, run_hash).get("status"),
        "active": read_run(repo, run_hash).active,
        "name": name_after_train,
        "hash": callback.run_hash,
    }
    history = list(trainer.state.log_history)
    eval_metrics = trainer.evaluate()
    predict_metrics = trainer.predict(TokenDataset(8, seed=2)).metrics
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.log({"note": "not a number", "extra": 0.25})
        trainer.log({"note": "still not"})
    callback.close()
    return {
        "repo": repo,
        "store": store,
        "hash": run_hash,
        "history": history,
        "after_train": after_train,
        "eval": eval_metrics,
        "predict": predict_metrics,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, tracelet.TraceletWarning)],
        "model": model,
        "args": args,
        "copies": copies,
    }


@pytest.mark.slow
def test_one_run_with_train_loss_per_logging_step(trained: dict[str, Any]) -> None:
    repo, run_hash, history = trained["repo"], trained["hash"], trained["history"]
    assert [run.hash for run in open_repo(repo).iter_runs()] == [run_hash]
    expected = _by_step(history, "loss")
    assert sorted(expected) == [1, 2, 3, 4]
    assert series(repo, "loss", TRAIN, run_hash) == pytest.approx(expected)
    assert series(repo, "grad_norm", TRAIN, run_hash) == pytest.approx(_by_step(history, "grad_norm"))
    assert series(repo, "learning_rate", TRAIN, run_hash) == pytest.approx(_by_step(history, "learning_rate"))
    # HF's "epoch" key is state.epoch: AIM's epoch of each point, fractional as HF reports it (aim's own
    # callback keeps it so too), never a series
    assert series(repo, "epoch", None, run_hash) == {}
    assert epochs(repo, "loss", TRAIN, run_hash) == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1}
    assert series(repo, "load_seconds", {}, run_hash) == {0: 1.5}
    # durable and queryable as soon as train() returned, closed as finished; reading the handle's
    # name afterwards neither reopens the run nor forgets it
    assert trained["after_train"] == {
        "loss": pytest.approx(expected),
        "status": "finished",
        "active": False,
        "name": "tiny-bert",
        "hash": run_hash,
    }


def test_callback_pickles_before_and_after_use(trained: dict[str, Any]) -> None:
    # HF's Ray search backend pickles the trainer: a copy holds the run hash, not the live run
    assert trained["copies"]["open"] == trained["copies"]["ended"] == trained["hash"]
    assert isinstance(trained["copies"]["fresh"], tracelet.TraceletCallback)


def test_eval_metrics_in_val_and_evaluate_after_train_joins_the_run(trained: dict[str, Any]) -> None:
    repo, run_hash, history = trained["repo"], trained["hash"], trained["history"]
    during = _by_step(history, "eval_loss")
    assert sorted(during) == [2, 4]
    val = series(repo, "loss", VAL, run_hash)
    assert val[2] == pytest.approx(during[2])
    assert val[4] == pytest.approx(trained["eval"]["eval_loss"])  # the later evaluate() at step 4
    assert set(series(repo, "runtime", VAL, run_hash)) == {2, 4}
    assert series(repo, "eval_loss", None, run_hash) == {}  # routed, not kept under HF's key
    assert series(repo, "loss", TEST, run_hash) == {4: pytest.approx(trained["predict"]["test_loss"])}
    assert series(repo, "extra", TRAIN, run_hash) == {4: 0.25}
    run = read_run(repo, run_hash)
    assert run.get("status") == "finished"
    assert run.name == "tiny-bert"


def test_summary_is_a_param_not_a_point(trained: dict[str, Any]) -> None:
    repo, run_hash, history = trained["repo"], trained["hash"], trained["history"]
    final = history[-1]
    summary = read_run(repo, run_hash)["summary"]
    for key in ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos"):
        assert summary[key] == pytest.approx(final[key])
    assert summary["train_loss"] == pytest.approx(final["train_loss"])
    assert summary["global_step"] == 4
    loss = series(repo, "loss", TRAIN, run_hash)
    assert loss[4] == pytest.approx(_by_step(history, "loss")[4]) != pytest.approx(final["train_loss"])
    assert series(repo, "runtime", TRAIN, run_hash) == {}


def test_params_from_training_args_and_model(trained: dict[str, Any]) -> None:
    run = read_run(trained["repo"], trained["hash"])
    hparams = run["hparams"]
    assert hparams["learning_rate"] == 1e-3
    assert hparams["max_steps"] == 4
    assert hparams["eval_strategy"] == "steps"
    assert hparams["run_name"] == "tiny-bert"
    assert hparams["hub_token"] == "<redacted>"
    model = trained["model"]
    total = sum(p.numel() for p in model.parameters())
    info = run["model"]
    assert info["class"] == "BertForSequenceClassification"
    assert info["num_parameters"] == info["trainable_parameters"] == total
    assert info["config"]["hidden_size"] == 16
    assert info["config"]["num_hidden_layers"] == 1
    assert run["tags"] == {"team": "nlp"}


def test_non_numeric_log_values_warn_once(trained: dict[str, Any]) -> None:
    notes = [message for message in trained["warnings"] if "'note'" in message]
    assert len(notes) == 1, trained["warnings"]
    assert "str" in notes[0]


def test_checkpoints_stored_without_training_args_pickle(trained: dict[str, Any]) -> None:
    stored = trained["store"] / trained["hash"] / "checkpoints"
    assert sorted(p.name for p in stored.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    files = {p.name for p in (stored / "checkpoint-4").iterdir()}
    assert {"model.safetensors", "config.json", "trainer_state.json", "training_args.json"} <= files
    assert "training_args.bin" not in files
    scrubbed = (stored / "checkpoint-4" / "training_args.json").read_text()
    assert '"hub_token": "<redacted>"' in scrubbed
    assert '"learning_rate": 0.001' in scrubbed
    paths = read_run(trained["repo"], trained["hash"])["checkpoints"]
    assert set(paths["saved"]) == {"checkpoint-2", "checkpoint-4"}
    assert paths["last"].endswith("checkpoint-4")


def test_no_hub_token_anywhere_in_repo_or_store(trained: dict[str, Any]) -> None:
    checked = 0
    for folder in (trained["repo"], trained["store"]):
        for path in folder.rglob("*"):
            if path.is_file():
                checked += 1
                assert SECRET.encode() not in path.read_bytes(), path
    assert checked > 10
    # the output folder's pickle does hold it: the test would see a leak
    assert SECRET.encode() in next(Path(trained["args"].output_dir).rglob("training_args.bin")).read_bytes()


@pytest.mark.slow
def test_hyperparameter_search_makes_one_run_per_trial(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    repo = tmp_path / "aim"
    callback = tracelet.TraceletCallback(config=QUIET, repo_path=str(repo))
    trainer = Trainer(
        model_init=lambda: tiny_bert(),
        args=tiny_args(str(tmp_path / "out"), max_steps=2, run_name="search"),
        train_dataset=TokenDataset(16),
        eval_dataset=TokenDataset(8, seed=1),
        callbacks=[callback],
    )

    def space(trial: Any) -> dict[str, float]:
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)}

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainer.hyperparameter_search(
        hp_space=space, n_trials=3, direction="minimize", backend="optuna", hp_name=lambda t: f"t{t.number}"
    )
    callback.close()  # the last trial's evaluate() reopened its run
    runs = {run.name: run for run in open_repo(repo).iter_runs()}
    assert sorted(runs) == ["search-t0", "search-t1", "search-t2"]
    learning_rates = set()
    for number in range(3):
        run = runs[f"search-t{number}"]
        trial = run["trial"]
        assert trial["name"] == f"t{number}" and trial["number"] == number
        assert run["hparams"]["learning_rate"] == pytest.approx(trial["params"]["learning_rate"])
        learning_rates.add(trial["params"]["learning_rate"])
        assert run.get("status") == "finished"
        assert sorted(series(repo, "loss", TRAIN, run.hash)) == [1, 2]
        assert sorted(series(repo, "loss", VAL, run.hash)) == [2]  # the objective's evaluate()
    assert len(learning_rates) == 3


def test_peft_config_and_final_model_with_log_model_true(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_bert(),
        peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"]),
    )
    store = tmp_path / "store"
    callback = tracelet.TraceletCallback(
        config=QUIET, repo_path=str(tmp_path / "aim"), artifacts_uri=str(store), log_model=True
    )
    trainer = Trainer(
        model=model,
        args=tiny_args(str(tmp_path / "out"), max_steps=2),
        train_dataset=TokenDataset(16),
        callbacks=[callback],
    )
    trainer.train()
    run = read_run(tmp_path / "aim", callback.run_hash)
    info = run["model"]
    assert info["peft_config"]["default"]["r"] == 2
    assert sorted(info["peft_config"]["default"]["target_modules"]) == ["query", "value"]
    assert info["peft_config"]["default"]["task_type"] == "SEQ_CLS"  # a str enum, stored as its value
    assert 0 < info["trainable_parameters"] < info["num_parameters"]
    assert info["trainable_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    saved = {p.name for p in (store / callback.run_hash / "model").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "training_args.json"} <= saved
    assert run.get("checkpoints") is None  # save_strategy="no": nothing saved, nothing recorded


@pytest.mark.slow
def test_exception_in_training_leaves_status_failed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from transformers import Trainer, TrainerCallback
        from hf_helpers import TokenDataset, tiny_args, tiny_bert
        import tracelet_callbacks as tracelet

        class Boom(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 3:
                    raise RuntimeError("boom at step 3")

        callback = tracelet.TraceletCallback(config={{"system_tracking_interval": None}}, repo_path="aim")
        trainer = Trainer(model=tiny_bert(), args=tiny_args("out", max_steps=6), train_dataset=TokenDataset(),
                          callbacks=[callback, Boom()])
        print("HASH", callback.run_hash, flush=True)
        trainer.train()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "boom at step 3" in done.stderr
    run_hash = done.stdout.split("HASH ", 1)[1].split()[0]
    assert read_run(tmp_path / "aim", run_hash).get("status") == "failed"
    assert sorted(series(tmp_path / "aim", "loss", TRAIN, run_hash)) == [1, 2]


@pytest.mark.slow
def test_one_callback_shared_by_two_trainers_makes_two_runs(tmp_path: Path) -> None:
    """k-fold loops pass one callback to a Trainer per fold: each fold is its own run, named after its
    own arguments, with its own params and loss series."""
    repo = tmp_path / "aim"
    callback = tracelet.TraceletCallback(config=FAST, repo_path=str(repo))
    hashes, losses = [], []
    for fold in range(2):
        args = tiny_args(
            str(tmp_path / f"out-{fold}"),
            max_steps=2,
            run_name=f"fold-{fold}",
            learning_rate=(fold + 1) * 1e-3,
        )
        trainer = Trainer(
            model=tiny_bert(seed=fold),
            args=args,
            train_dataset=TokenDataset(16, seed=fold),
            callbacks=[callback],
        )
        hashes.append(callback.run_hash)
        trainer.train()
        losses.append(_by_step(trainer.state.log_history, "loss"))
    runs = {run.hash: run for run in open_repo(repo).iter_runs()}
    assert len(set(hashes)) == 2 and sorted(runs) == sorted(hashes)
    for fold, run_hash in enumerate(hashes):
        run = runs[run_hash]
        assert run.name == f"fold-{fold}"
        assert run.get("status") == "finished"
        assert run["hparams"]["learning_rate"] == pytest.approx((fold + 1) * 1e-3)
        assert series(repo, "loss", TRAIN, run_hash) == pytest.approx(losses[fold])
    assert losses[0] != pytest.approx(losses[1])


@pytest.mark.slow
def test_an_exception_caught_by_the_user_leaves_that_run_failed(tmp_path: Path) -> None:
    """The exception never reaches the process's exit (a notebook, a k-fold loop with try/except):
    the next Trainer given the callback closes the crashed run as failed and opens its own."""
    repo = tmp_path / "aim"
    callback = tracelet.TraceletCallback(config=FAST, repo_path=str(repo))
    crashing = Trainer(
        model=tiny_bert(fail_at=3),
        args=tiny_args(str(tmp_path / "out-0"), max_steps=6, run_name="crashes"),
        train_dataset=TokenDataset(),
        callbacks=[callback],
    )
    crashed = callback.run_hash
    with pytest.raises(RuntimeError, match="boom at step 3"):
        crashing.train()
    Trainer(
        model=tiny_bert(),
        args=tiny_args(str(tmp_path / "out-1"), run_name="next"),
        train_dataset=TokenDataset(),
        callbacks=[callback],
    )
    following = callback.run_hash
    callback.close()
    assert following != crashed
    assert read_run(repo, crashed).get("status") == "failed"
    assert sorted(series(repo, "loss", TRAIN, crashed)) == [1, 2]
    assert read_run(repo, following).get("status") == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("log_model", ["all", True])
def test_an_unwritable_artifact_store_warns_once_and_training_completes(
    tmp_path: Path, log_model: Any
) -> None:
    (tmp_path / "blocker").write_text("a file where the store's folder should be")
    repo = tmp_path / "aim"
    callback = tracelet.TraceletCallback(
        config=FAST,
        repo_path=str(repo),
        artifacts_uri=str(tmp_path / "blocker" / "store"),
        log_model=log_model,
    )
    saving = {"save_strategy": "steps", "save_steps": 2} if log_model == "all" else {}
    trainer = Trainer(
        model=tiny_bert(),
        args=tiny_args(str(tmp_path / "out"), **saving),
        train_dataset=TokenDataset(),
        callbacks=[callback],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    ours = _ours(caught)
    assert len(ours) == 1, ours
    assert ("checkpoints" if log_model == "all" else "final model") in ours[0]
    run = read_run(repo, callback.run_hash)
    assert run.get("status") == "finished" and run.active is False
    assert sorted(series(repo, "loss", TRAIN, callback.run_hash)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_model_params_never_stop_training(tmp_path: Path) -> None:
    """Lazy (not yet shaped) parameters are counted apart; a model whose params cannot be read at all
    is one warning, and the TrainingArguments are stored regardless."""
    repo = tmp_path / "aim"
    args = tiny_args(str(tmp_path / "out"))
    found = {}
    for model in (LazyNet(), BrokenPeftNet()):
        callback = tracelet.TraceletCallback(config=FAST, repo_path=str(repo))
        state = TrainerState()
        callback.on_init_end(args, state, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback.on_train_begin(args, state, None, model=model)
        callback.on_train_end(args, state, None)
        found[type(model).__name__] = (callback.run_hash, _ours(caught))
    # read once everything is written: aim's cached repo view does not see runs indexed after it
    found = {name: (read_run(repo, run_hash), caught) for name, (run_hash, caught) in found.items()}
    lazy, lazy_warnings = found["LazyNet"]
    assert lazy["model"] == {
        "class": "LazyNet",
        "num_parameters": 8,
        "trainable_parameters": 8,
        "uninitialized_parameters": 2,
    }
    assert lazy_warnings == []
    broken, broken_warnings = found["BrokenPeftNet"]
    assert len(broken_warnings) == 1 and "model params" in broken_warnings[0]
    assert "adapter config unreadable" in broken_warnings[0]
    assert broken.get("model") is None
    assert broken["hparams"]["max_steps"] == 4
    assert broken.get("status") == "finished"


@pytest.mark.slow
def test_routing_off_never_puts_eval_or_test_keys_in_train(tmp_path: Path) -> None:
    repo = tmp_path / "aim"
    callback = tracelet.TraceletCallback(config=FAST, repo_path=str(repo), routing=False)
    args, state = tiny_args(str(tmp_path / "out"), run_name="plain"), TrainerState()
    callback.on_init_end(args, state, None)
    state.global_step, state.epoch = 3, 1.5
    logs = {"loss": 0.5, "eval_loss": 0.7, "test_acc": 0.9, "predict_f1": 0.3, "epoch": 1.5}
    callback.on_log(args, state, None, logs=logs)
    run_hash = callback.run_hash
    callback.close()
    assert series(repo, "loss", TRAIN, run_hash) == {3: 0.5}  # HF's unprefixed keys: train
    for key, value in (("eval_loss", 0.7), ("test_acc", 0.9), ("predict_f1", 0.3)):
        assert series(repo, key, None, run_hash) == {3: pytest.approx(value)}, key
        assert series(repo, key, {}, run_hash) == {3: pytest.approx(value)}, key
    assert series(repo, "epoch", None, run_hash) == {}
    assert epochs(repo, "loss", TRAIN, run_hash) == {3: 1.5}


def test_other_processes_write_nothing(tmp_path: Path) -> None:
    callback = tracelet.TraceletCallback(config=QUIET, repo_path=str(tmp_path / "aim"))
    state = TrainerState(is_world_process_zero=False)
    args = tiny_args(str(tmp_path / "out"))
    callback.on_init_end(args, state, None)
    callback.on_train_begin(args, state, None, model=tiny_bert())
    callback.on_log(args, state, None, logs={"loss": 1.0})
    callback.on_train_end(args, state, None)
    assert not (tmp_path / "aim").exists()
    assert callback.run_hash is None and not callback.experiment
    callback.experiment.track(1.0, name="x")  # the stand-in takes the call and does nothing
    assert not (tmp_path / "aim").exists()


def test_settings_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match=r"repo_pth.*Did you mean 'repo_path'"):
        tracelet.TraceletCallback(repo_pth="x")
    with pytest.raises(ValueError, match="log_model"):
        tracelet.TraceletCallback(log_model="sometimes")

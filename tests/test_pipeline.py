"""``sink/pipeline.py`` against a real ``aim server``: aim's private write protocol, pinned.

The pipeline speaks aim 3.29's own websocket protocol on a second connection. If a new aim changed
that protocol, ``pipeline_for`` would quietly answer ``None`` and every write would go through aim's
slower client: these tests fail instead, so the change is seen.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_remote import running_server
from tracelet_callbacks.sink.pipeline import PAIRS, WINDOW, Pipeline, pipeline_for

pytestmark = pytest.mark.slow


def _open_series(uri: str, name: str):
    """A run on the server with one point of ``name`` tracked by aim itself (its arrays exist), and
    the series' arrays by column name: the views aim's tracker writes, as sink/series.py uses them."""
    import aim
    from aim.storage.context import Context

    run = aim.Run(
        repo=uri, system_tracking_interval=None, log_system_params=False, capture_terminal_logs=False
    )
    run.track(0.0, name=name, step=0, epoch=0, context={"subset": "train"})
    run.repo._client.get_queue().wait_for_finish()
    info = run._tracker.sequence_infos[Context({"subset": "train"}).idx, name]
    arrays = {"val": info.val_view, "step": info.step_view, "epoch": info.epoch_view, "time": info.time_view}
    return run, {column: view.tree for column, view in arrays.items()}


def _read_metric(uri: str, run_hash: str, name: str) -> tuple[dict, list, list]:
    """The context, steps and columns of the run's one metric ``name``, read as a user would."""
    import gc

    import aim

    query = f"run.hash == '{run_hash}' and metric.name == '{name}'"
    (metric,) = aim.Repo(uri).query_metrics(query).iter()
    context, (steps, columns) = metric.context.to_dict(), metric.data.items_list()
    del metric
    gc.collect()  # its handles on the server go while it runs
    return context, steps, columns


def test_points_sent_many_requests_ahead_are_all_on_the_server_in_order(tmp_path: Path) -> None:
    from aim.storage.hashing import hash_auto

    from tracelet_callbacks.sink.storage import index_run

    points = WINDOW * PAIRS * 3 + 17  # more requests than the window holds, the last one short
    steps = list(range(1, points + 1))
    hashes = [hash_auto(step) for step in steps]
    columns = {
        "val": [step * 0.5 for step in steps],
        "step": steps,
        "epoch": [step // 100 for step in steps],
        "time": [1.7e9 + step for step in steps],
    }
    with running_server(tmp_path) as (uri, _folder):
        run, arrays = _open_series(uri, "loss")
        pipeline = pipeline_for(run.repo)
        assert isinstance(pipeline, Pipeline), "aim's write protocol is not the one sink/pipeline.py speaks"
        # each request of values is followed, still unanswered, by one that overwrites the same keys:
        # only a server that applies the requests in the order sent ends with the second one's values
        for start in range(0, points, PAIRS):
            keys, values = hashes[start : start + PAIRS], columns["val"][start : start + PAIRS]
            pipeline.update(arrays["val"], [(key, -1.0) for key in keys])
            pipeline.update(arrays["val"], list(zip(keys, values, strict=True)))
        for column in ("step", "epoch", "time"):  # one call each: the pipeline splits it into requests
            pipeline.update(arrays[column], list(zip(hashes, columns[column], strict=True)))
        pipeline.close()
        assert pipeline.closed
        run_hash = run.hash
        run.close()
        # aim reads a closed run from the repo's index, which `aim server` never fills: the sink indexes
        # a run when it closes it (sink/run.py); a bare aim.Run must be indexed the same way
        assert index_run(run.repo, run_hash) is None
        del run, arrays  # aim's handles on the server go while it runs
        context, stored_steps, (values, epochs, times) = _read_metric(uri, run_hash, "loss")
    assert context == {"subset": "train"}
    # aim's own point at step 0, then every pipelined point at its step with its own values
    assert stored_steps == [0, *steps]
    assert values == [0.0, *columns["val"]]
    assert epochs == [0, *columns["epoch"]]
    assert times[1:] == columns["time"]


def test_a_server_gone_mid_write_raises_at_once_and_the_pipeline_is_closed(tmp_path: Path) -> None:
    # in a child process: aim's client of a server that died would wait for it at interpreter exit
    child = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import psutil
        from aim.storage.hashing import hash_auto
        from test_pipeline import _open_series
        from tracelet_callbacks.sink.pipeline import PAIRS, Pipeline, pipeline_for

        uri = sys.argv[1]
        run, arrays = _open_series(uri, "loss")
        pipeline = pipeline_for(run.repo)
        assert isinstance(pipeline, Pipeline)
        port = int(uri.rsplit(":", 1)[1])
        listening = psutil.net_connections("tcp")
        (server,) = {{c.pid for c in listening if c.laddr.port == port and c.status == "LISTEN"}}
        os.kill(server, signal.SIGKILL)
        try:
            for chunk in range(50):
                pairs = [(hash_auto(s), float(s)) for s in range(chunk * PAIRS, (chunk + 1) * PAIRS)]
                pipeline.update(arrays["val"], pairs)
            pipeline.drain()
        except Exception as exc:
            print("raised", type(exc).__name__, "closed", pipeline.closed, flush=True)
        else:
            print("no error", flush=True)
        os._exit(0)
        """
    )
    with running_server(tmp_path) as (uri, _folder):
        done = subprocess.run(
            [sys.executable, "-c", child, uri], capture_output=True, text=True, timeout=180, cwd=tmp_path
        )
    assert done.returncode == 0, done.stderr[-3000:]
    words = done.stdout.split()
    assert words[:1] == ["raised"] and words[-2:] == ["closed", "True"], done.stdout

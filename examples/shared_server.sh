#!/usr/bin/env bash
# One AIM server for a team: start it, log a job to it, log a second job offline and sync it later,
# list the runs, stop the server. On a real server use a lasting folder (/data/aim) and
# --host 0.0.0.0 so the training nodes can reach it; `aim up` on the same folder is the UI.
#
#   bash examples/shared_server.sh          # AIM_SERVER_PORT=53800 by default
set -euo pipefail
examples="$(cd "$(dirname "$0")" && pwd)"
port="${AIM_SERVER_PORT:-53800}"

mkdir -p team-aim && aim init --repo team-aim -y           # aim init needs the folder to exist
setsid aim server --repo team-aim --host 127.0.0.1 --port "$port" &  # the writers' address: aim://HOST:PORT
server=$!
# on exit, stop the server's whole process group (its uvicorn child too) and wait until it is gone
trap 'kill -- -$server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
python -c "
import os, socket, sys, time
server, port = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    os.kill(server, 0)  # raises if the server has already exited (the port was taken, say)
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit('aim server did not start')" "$server" "$port"

# every entry point reads the server from TRACELET_AIM_REMOTE (or remote_uri=...)
export TRACELET_AIM_REMOTE="aim://127.0.0.1:$port"
python "$examples/quickstart.py"

# a node that cannot reach the server: the run goes only into the local spool (.aim-spool) ...
TRACELET_OFFLINE=1 python "$examples/quickstart.py"
# ... and later, from any machine that sees both, one command sends it (again: "up to date")
python -m tracelet_callbacks sync .aim-spool --to "$TRACELET_AIM_REMOTE"

# every run on the server, with its status and last heartbeat; `runs close-stale` closes the dead ones
python -m tracelet_callbacks runs ls --remote "$TRACELET_AIM_REMOTE"

echo "The team's UI: aim up --repo $PWD/team-aim --host 0.0.0.0 --port 43800  (http://HOST:43800)"

"""A fleet behind a standard load balancer (issue 30, item 7): Debian's nginx before three
mixer-serve processes sharing a state key; twenty conversations of eight turns carry their states
through nginx, one server is stopped after the fourth turn, and every conversation ends with the
bytes it has on one server alone."""
import concurrent.futures
import subprocess
import sys
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import fleet  # noqa: E402
from serving import metric  # noqa: E402

pytestmark = pytest.mark.fleet
TURNS, CONVERSATIONS = 8, 20


@pytest.fixture(scope="module")
def nginx():
    if fleet.nginx_binary() is None:  # (root installs Debian's package; the suite's CI runs as root)
        subprocess.run(["bash", str(ROOT / "scripts" / "nginx-setup.sh")], capture_output=True)
    if fleet.nginx_binary() is None:
        pytest.fail("nginx is not installed and scripts/nginx-setup.sh could not install it (needs root)")
    return fleet.nginx_binary()


def _conversation(url: str, c: int, turns: range, state: str | None) -> tuple[list[str], str | None]:
    replies = []
    for t in turns:
        reply, state = fleet.turn(url, f"Story {c}, part {t}: what happens next?", state, 24,
                                  seed=None if c % 2 else c * 100 + t)  # (greedy and seeded conversations)
        replies.append(reply)
    return replies, state


def test_twenty_conversations_survive_a_server_stopping(nginx, bundled, tmp_path):
    key = tmp_path / "state.key"
    key.write_text("a-key-the-fleet-shares-" + "x" * 16 + "\n")
    one = fleet.Fleet(str(bundled["int8"]), 1, str(key))  # the truth: the same conversations on one server
    try:
        with concurrent.futures.ThreadPoolExecutor(CONVERSATIONS) as pool:
            alone = list(pool.map(lambda c: _conversation(one.url, c, range(TURNS), None)[0], range(CONVERSATIONS)))
    finally:
        one.stop()
    three = fleet.Fleet(str(bundled["int8"]), 3, str(key))
    try:
        with concurrent.futures.ThreadPoolExecutor(CONVERSATIONS) as pool:
            first = list(pool.map(lambda c: _conversation(three.url, c, range(4), None), range(CONVERSATIONS)))
            for _, port in three.servers:  # nginx spread them: every server resumed other servers' states
                assert metric(f"http://127.0.0.1:{port}", 'mixer_states_total{event="resumed"}') > 0
            assert three.stop_server(1) == 0  # SIGTERM: it drains and exits
            rest = list(pool.map(lambda c: _conversation(three.url, c, range(4, TURNS), first[c][1])[0],
                                 range(CONVERSATIONS)))
        for c in range(CONVERSATIONS):
            assert first[c][0] + rest[c] == alone[c], c
        assert httpx.get(three.url + "/health").status_code == 200
    finally:
        three.stop()

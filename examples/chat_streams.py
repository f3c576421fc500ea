"""Several conversations as streams of one session; one is snapshotted to disk and resumed
in a "restarted" process, continuing exactly as if it had never stopped.

    python examples/chat_streams.py BUNDLE WORKDIR           # phase 1: chat, snapshot, keep going
    python examples/chat_streams.py BUNDLE WORKDIR --resume  # phase 2 (a new process): restore
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgelm.fileio import atomic_write_bytes
from edgelm.runtime import Sampling, Session

USERS = {"alice": "Hello, how are you?\n", "bob": "Tell me about rivers.\n", "carol": "def main():\n"}


def reply(stream, n: int = 48) -> bytes:
    return b"".join(stream.generate(n, stop=[b"\n\n"]))


def first_run(session: Session, work: Path) -> None:
    chats = {name: session.stream(Sampling(seed=i, temperature=0.8, top_k=40), prompt=text)
             for i, (name, text) in enumerate(USERS.items())}
    for name, stream in chats.items():
        print(f"{name}: {reply(stream)!r}")
    atomic_write_bytes(work / "bob.snapshot", chats["bob"].snapshot())  # the process may die now
    chats["bob"].feed(b"And lakes?\n")
    (work / "uninterrupted.bin").write_bytes(reply(chats["bob"]))


def resumed_run(session: Session, work: Path) -> None:
    bob = session.restore((work / "bob.snapshot").read_bytes())
    bob.feed(b"And lakes?\n")
    resumed, expected = reply(bob), (work / "uninterrupted.bin").read_bytes()
    print(f"bob (restored): {resumed!r}")
    print("continuation equals the uninterrupted run:", resumed == expected)
    sys.exit(0 if resumed == expected else 1)


def main() -> None:
    bundle, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    with Session.open(bundle, max_streams=len(USERS)) as session:
        print(f"{session.describe()}: {session.state_bytes_per_stream:,} state bytes per stream")
        (resumed_run if "--resume" in sys.argv else first_run)(session, work)


if __name__ == "__main__":
    main()

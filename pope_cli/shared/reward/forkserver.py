"""The parent of the reward workers: its own interpreter, which imports pope and nothing of the caller.

multiprocessing's spawn and forkserver start every child by re-running the caller's `__main__`
(a training script without an `if __name__ == "__main__":` guard then starts training again in
each worker, which never reports ready). So `pope_cli.shared.reward.checker` starts this module
with `python -m` instead: it loads the checker once (math-verify's import takes a second or
two) and forks a warm worker for every request, in milliseconds, also when one is replaced
after missing its deadline.

Protocol, over the socket whose descriptor is argv[1]: this server answers `ready` (or `error
WHY` on one line) once the checker is loaded; then each request carries one end of a socket
pair (SCM_RIGHTS), and the server forks a worker serving that socket and answers its pid.
End of file on the socket means the caller has gone: the server kills its workers and exits.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from multiprocessing.connection import Connection


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's
    control = socket.socket(fileno=int(argv[0]))
    try:
        from pope_cli.shared.reward.checker import score_fn, serve

        fn = score_fn(argv[1], int(argv[2]))
    except BaseException as error:  # noqa: BLE001 - whatever stops the checker loading is the answer
        text = str(error).strip().splitlines()
        control.sendall(f"error {type(error).__name__}: {text[0] if text else ''}\n".encode())
        return
    control.sendall(b"ready\n")
    workers: set[int] = set()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            message, fds = b"", []
        _reap(workers)
        if not message or not fds:
            break
        pid = os.fork()
        if pid == 0:
            control.close()
            serve(Connection(fds[0]), fn)
            os._exit(0)
        os.close(fds[0])
        workers.add(pid)
        control.sendall(f"{pid}\n".encode())
    for pid in workers:
        _kill(pid)


def _reap(workers: set[int]) -> None:
    """Collect exited workers. Until then a killed worker's pid stays taken, so the caller's kill
    of an overdue worker can never reach another process."""
    for pid in list(workers):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            workers.discard(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


if __name__ == "__main__":
    main(sys.argv[1:])

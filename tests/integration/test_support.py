"""The safety net of the test suite itself: a hung mount can always be cleared."""

import errno
import os
import signal
import threading


from tests.support.mounts import abort_connection, is_mounted


def test_abort_unblocks_a_call_into_a_hung_mount(mount, bucket):
    m = mount(bucket)
    os.kill(m.proc.pid, signal.SIGSTOP)  # the daemon stops answering
    result = {}

    def stat_it():
        try:
            os.stat(os.path.join(m.mountpoint, "anything"))
            result["outcome"] = "answered"
        except OSError as e:
            result["outcome"] = e.errno

    t = threading.Thread(target=stat_it, daemon=True)
    try:
        t.start()
        t.join(1)
        assert t.is_alive(), "the call should be stuck while the daemon is stopped"
        # the helpers never stat the mountpoint, so they answer while it hangs
        probe = threading.Thread(target=lambda: result.update(mounted=is_mounted(m.mountpoint)),
                                 daemon=True)
        probe.start()
        probe.join(10)
        assert result.get("mounted") is True, "is_mounted must not block on a hung mount"
        assert abort_connection(m.mountpoint)
        t.join(10)
        assert not t.is_alive(), "aborting the connection must release the caller"
        assert result["outcome"] in (errno.ECONNABORTED, errno.ENOTCONN)
    finally:
        os.kill(m.proc.pid, signal.SIGCONT)
        m.stop()
    assert not is_mounted(m.mountpoint)

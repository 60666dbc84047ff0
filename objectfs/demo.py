"""``make demo``: a local S3 endpoint, a bucket with sample files, a mount, a tour.

Starts moto's S3 server on 127.0.0.1 (left running for you to explore),
fills a bucket, mounts it with ``objectfs mount`` at .demo/mnt, runs a few
ordinary commands on it, unmounts and mounts again to show the data is in
S3, and prints how to clean up.  Run ``python -m objectfs.demo stop`` (or
``make demo-stop``) to unmount and stop the server.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEMO = Path(".demo").resolve()
MNT = DEMO / "mnt"
PIDFILE = DEMO / "moto.pid"
PORTFILE = DEMO / "moto.port"
BUCKET = "demo-bucket"
CREDS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
         "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(CREDS)
    e["PATH"] = f"{Path(sys.executable).parent}:{e.get('PATH', '')}"
    return e


def show(cmd: str) -> None:
    print(f"$ {cmd}", flush=True)
    subprocess.run(cmd, shell=True, cwd=DEMO, env=env(), check=True, timeout=120)


def objectfs(*args: str) -> None:
    cmd = [sys.executable, "-m", "objectfs", *args]
    print("$ objectfs " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(cmd, env=env(), check=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> str:
    DEMO.mkdir(exist_ok=True)
    stop(quiet=True)
    port = free_port()
    log = open(DEMO / "moto.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    PIDFILE.write_text(str(proc.pid))
    PORTFILE.write_text(str(port))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto server did not start; see .demo/moto.log")


def fill_bucket(endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="demo", aws_secret_access_key="demo")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="README.txt",
                  Body=b"Hello from S3! This object was put with boto3.\n")
    s3.put_object(Bucket=BUCKET, Key="docs/guide.md", Body=b"# Guide\n\nSome notes.\n")
    s3.put_object(Bucket=BUCKET, Key="photos/2024/cat.jpg", Body=os.urandom(300_000))
    # an object written by s3fs-fuse: mode 0600 and an mtime in its metadata
    s3.put_object(Bucket=BUCKET, Key="private.key", Body=b"secret\n",
                  Metadata={"mode": "33152", "uid": "0", "gid": "0", "mtime": "1700000000"})


def stop(quiet: bool = False) -> None:
    if MNT.exists():
        subprocess.run([sys.executable, "-m", "objectfs", "umount", str(MNT)],
                       env=env(), capture_output=True, timeout=120)
    if PIDFILE.exists():
        try:
            os.killpg(int(PIDFILE.read_text()), signal.SIGTERM)
            if not quiet:
                print("stopped the S3 server")
        except (ProcessLookupError, ValueError):
            pass
        PIDFILE.unlink()


def main() -> int:
    if sys.argv[1:] == ["stop"]:
        stop()
        return 0
    say("Starting a local S3 endpoint (moto) on 127.0.0.1")
    endpoint = start_server()
    print(endpoint)
    say(f"Creating bucket {BUCKET} with a few objects, as any S3 client would")
    fill_bucket(endpoint)
    MNT.mkdir(parents=True, exist_ok=True)
    say("Mounting it")
    objectfs("mount", f"s3://{BUCKET}", str(MNT), "--endpoint-url", endpoint)
    say("Ordinary programs see a directory tree")
    show("ls -l mnt mnt/photos/2024")
    show("cat mnt/README.txt")
    say("Writing, moving, removing")
    show("echo 'written through ObjectFS' > mnt/new.txt && cat mnt/new.txt")
    show("mkdir mnt/archive && mv mnt/docs/guide.md mnt/archive/ && chmod 640 mnt/archive/guide.md")
    show("cp /etc/os-release mnt/archive/ && rm mnt/photos/2024/cat.jpg")
    show("ls -lR mnt")
    say("Remounting: everything is in S3")
    objectfs("umount", str(MNT))
    objectfs("mount", f"s3://{BUCKET}", str(MNT), "--endpoint-url", endpoint)
    show("ls -lR mnt && cat mnt/new.txt")
    say("The objects in the bucket, with s3fs-compatible metadata")
    show(f"{shlex.quote(sys.executable)} -c \"import boto3; s3 = boto3.client('s3', "
         f"endpoint_url='{endpoint}'); "
         f"[print(o['Key'], o['Size'], s3.head_object(Bucket='{BUCKET}', Key=o['Key'])"
         f"['Metadata']) for o in s3.list_objects_v2(Bucket='{BUCKET}')['Contents']]\"")
    say("Done. The bucket is still mounted at .demo/mnt; explore it, then:")
    print(f"  unmount:            .venv/bin/objectfs umount {MNT}")
    print("  unmount and stop:   make demo-stop   (python -m objectfs.demo stop)")
    print(f"  S3 endpoint:        {endpoint}  (key demo / secret demo)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

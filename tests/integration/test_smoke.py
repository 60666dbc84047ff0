"""The shortest path through a real mount: write, read back, see it in S3."""

import os


def test_write_read_and_object_in_s3(mount, bucket, s3_client):
    m = mount(bucket)
    path = os.path.join(m.mountpoint, "hello.txt")
    with open(path, "wb") as f:
        f.write(b"hello, world\n")
    with open(path, "rb") as f:
        assert f.read() == b"hello, world\n"
    body = s3_client.get_object(Bucket=bucket, Key="hello.txt")["Body"].read()
    assert body == b"hello, world\n"

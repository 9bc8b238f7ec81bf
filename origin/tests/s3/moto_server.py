"""An S3-API server on loopback for depotmesh's tests: moto in server mode.

Makes the buckets named on the command line, prints the endpoint URL on one line, and runs
until its standard input closes (the test process ended, however it ended).
"""

import sys

import boto3
from moto.server import ThreadedMotoServer


def main() -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="depotmesh-test",
        aws_secret_access_key="depotmesh-test-secret",
    )
    for bucket in sys.argv[1:]:
        s3.create_bucket(Bucket=bucket)
    print(endpoint, flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()

"""python-tuf's own client over an origin's image repository, as an outside user runs it.

tuf.ngclient.Updater trusts the root given with --root on its first run (the repository's
1.root.json, as shipped), keeps its trusted metadata in STATE/metadata between runs, refreshes
from URL/metadata/, downloads TARGET from URL/targets/ (consistent snapshots: the file named by
its first hash) and checks its length and hashes. It prints one JSON line: the downloaded bytes'
SHA-256, the version of the root it trusts after the refresh and the key type and scheme of each
top-level role's keys in that root. Any refusal exits 1 naming python-tuf's error.
"""

import argparse
import hashlib
import json
import os
import sys
import traceback

from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater


def download(args: argparse.Namespace) -> dict:
    metadata_dir = os.path.join(args.state, "metadata")
    os.makedirs(metadata_dir, exist_ok=True)
    bootstrap = None
    if not os.path.exists(os.path.join(metadata_dir, "root.json")):
        with open(args.root, "rb") as trusted:
            bootstrap = trusted.read()
    url = args.url.rstrip("/")
    updater = Updater(
        metadata_dir=metadata_dir,
        metadata_base_url=f"{url}/metadata/",
        target_dir=os.path.join(args.state, "downloads"),
        target_base_url=f"{url}/targets/",
        bootstrap=bootstrap,
    )
    updater.refresh()
    info = updater.get_targetinfo(args.target)
    if info is None:
        raise LookupError(f"{args.target} is not listed by any trusted targets role")
    path = updater.download_target(info)
    with open(path, "rb") as downloaded:
        sha256 = hashlib.sha256(downloaded.read()).hexdigest()
    root = Metadata[Root].from_file(os.path.join(metadata_dir, "root.json")).signed
    keys = {
        role: [f"{root.keys[keyid].keytype}/{root.keys[keyid].scheme}" for keyid in spec.keyids]
        for role, spec in root.roles.items()
    }
    return {"sha256": sha256, "root_version": root.version, "keys": keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="the root to trust on the first run")
    parser.add_argument("--state", required=True, help="the client's own directory")
    parser.add_argument("--url", required=True, help="the repository's base URL")
    parser.add_argument("--target", required=True, help="the target name to download")
    args = parser.parse_args()
    try:
        result = download(args)
    except Exception as error:  # noqa: BLE001 - every refusal is reported the same way
        traceback.print_exc()
        print(f"python-tuf refused: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

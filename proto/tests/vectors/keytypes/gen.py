#!/usr/bin/env python3
"""TUF fixtures with every key type the specification names, made by python-tuf.

Runs ../shared/vectors/tuf/gen (the generators of the ed25519 set, which stays as it is) with
its signers swapped for ECDSA P-256, RSA-PSS or a mix of all three types, writing for each
KIND in ecdsa, rsa, mixed:

    KIND/repo/       the good repository (client/, remote/, expected.json)
    KIND/attacks/*/  every attack case, with the expected outcome and python-tuf's error class

then checks every case with python-tuf's own client (check_with_ngclient.py), so that
expected.json is what the reference implementation does with these keys.

    pip install tuf==7.0.1 securesystemslib==1.6.0
    python3 proto/tests/vectors/keytypes/gen.py [--shared ../shared/vectors/tuf/gen]

ECDSA keys are derived from the seed (the same files each run); RSA keys (3072 bits) are fresh
each run, so a new run rewrites every RSA-signed file.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("ecdsa", "rsa", "mixed")
_RSA = {}
# Cases that test no signature (the ed25519 set has them): left out to keep the sets small.
SAME_FOR_EVERY_KEY = {"snapshot_endless_data"}


def signer(kind: str, seed: str, name: str) -> CryptoSigner:
    raw = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    if kind == "mixed":
        kind = ("ed25519", "ecdsa", "rsa")[raw[0] % 3]
    if kind == "ed25519":
        private = Ed25519PrivateKey.from_private_bytes(raw)
        scheme = "ed25519"
    elif kind == "ecdsa":
        private = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
        scheme = "ecdsa-sha2-nistp256"
    else:
        private = _RSA.setdefault(name, rsa.generate_private_key(65537, 3072))
        scheme = "rsassa-pss-sha256"
    public = SSlibKey.from_crypto(private.public_key(), scheme=scheme)
    return CryptoSigner(private, public)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(HERE, "../../../../../shared/vectors/tuf/gen"))
    ap.add_argument("--seed", default="ota-mesh-interop")
    a = ap.parse_args()
    shared = os.path.abspath(a.shared)
    sys.path.insert(0, shared)
    import tuf_fixture_lib

    for kind in KINDS:
        tuf_fixture_lib.make_signer = lambda seed, name, kind=kind: signer(kind, seed, name)
        # Imported after the swap: both bind make_signer by name.
        for module in ("gen_tuf_repo", "gen_tuf_attacks"):
            sys.modules.pop(module, None)
        import gen_tuf_attacks
        import gen_tuf_repo

        out = os.path.join(HERE, kind)
        # ECDSA and RSA-PSS signatures are randomised and an ECDSA one varies in length, so a
        # case that swaps files (mix_and_match_snapshot) can meet a length pin first and fail
        # with another error than expected.json says: such a set is made again.
        for attempt in range(1, 6):
            shutil.rmtree(out, ignore_errors=True)
            gen_tuf_repo.build(os.path.join(out, "repo"), a.seed)
            for name, make in gen_tuf_attacks.CASES.items():
                if name in SAME_FOR_EVERY_KEY:
                    continue
                make(tuf_fixture_lib.fresh_dir(os.path.join(out, "attacks", name)), a.seed)
            cases = [os.path.join(out, "repo")] + sorted(
                os.path.join(out, "attacks", name) for name in os.listdir(os.path.join(out, "attacks"))
            )
            check = os.path.join(shared, "check_with_ngclient.py")
            if subprocess.run([sys.executable, check, *cases]).returncode == 0:
                break
            print(f"{kind}: python-tuf disagreed with expected.json (attempt {attempt}); again")
        else:
            sys.exit(f"{kind}: python-tuf disagreed with expected.json five times")
        print(f"wrote and checked {out}: {len(cases)} cases")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Independent check of the "ok" vectors, written from docs/format.md alone.

Needs the `cryptography` package. Run from any directory: python3 reference.py
"""
import hashlib
import hmac
import json
import pathlib
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEG = 65536


def hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, n: int) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out, i = out + t, i + 1
    return out[:n]


def encrypt(key: bytes, blob_id: bytes, salt: bytes, pt: bytes) -> bytes:
    header = b"EFSc\x01\x01\x10\x00" + blob_id + salt
    okm = hkdf_sha256(salt, key, b"efs/content/v1" + header, 44)
    aead, base = AESGCM(okm[:32]), okm[32:]
    segments = [pt[i:i + SEG] for i in range(0, len(pt), SEG)] or [b""]
    out = header
    for i, seg in enumerate(segments):
        last = 1 if i == len(segments) - 1 else 0
        nonce = bytes(a ^ b for a, b in zip(i.to_bytes(11, "big") + bytes([last]), base))
        out += aead.encrypt(nonce, seg, header)
    return out


def main() -> int:
    bad = 0
    for path in sorted(pathlib.Path(__file__).parent.glob("*.json")):
        v = json.loads(path.read_text())
        if v["expect"] != "ok":
            continue
        if "plaintext" in v:
            pt = bytes.fromhex(v["plaintext"])
        else:
            pt = bytes(i % 251 for i in range(v["plaintext_generator"]["len"]))
        ct = encrypt(bytes.fromhex(v["data_key"]), bytes.fromhex(v["blob_id"]),
                     bytes.fromhex(v["salt"]), pt)
        ok = len(ct) == v["ciphertext_len"] and \
            hashlib.sha256(ct).hexdigest() == v["ciphertext_sha256"]
        print(("ok   " if ok else "FAIL ") + path.stem)
        bad += not ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

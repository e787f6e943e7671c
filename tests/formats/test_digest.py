import hashlib
import io

import pytest

from formats.digest import Digest, InvalidDigest

HEX = hashlib.sha256(b"abc").hexdigest()


def test_parse_canonical() -> None:
    d = Digest.parse(f"sha256:{HEX}")
    assert str(d) == f"sha256:{HEX}" and d.filename == f"sha256-{HEX}" and d.short == HEX[:12]


@pytest.mark.parametrize("text", [f"sha256-{HEX}", f"sha256:{HEX.upper()}", f"sha512:{HEX}", "sha256:abc", HEX, ""])
def test_parse_rejects_non_canonical(text: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


def test_lenient_accepts_file_names_and_upper_case() -> None:
    assert Digest.parse_lenient(f"sha256-{HEX.upper()}") == Digest(HEX)
    with pytest.raises(InvalidDigest):
        Digest.parse_lenient("sha256_" + HEX)


def test_hashing() -> None:
    assert Digest.of_bytes(b"abc").hex == HEX
    assert Digest.of_stream(io.BytesIO(b"abc")).hex == HEX

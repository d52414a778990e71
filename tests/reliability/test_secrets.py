"""Passwords never reach the terminal or a log, in any form a user writes a connection in (issue 17):
a URL (also with a raw "@" in the password), a URL's query, a key=value connection string."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from etl.cli import main
from etl.errors import EtlError, mask_secrets


@pytest.mark.parametrize(("text", "secret"), [
    ("postgresql://me:s3cret@db:5432/games", "s3cret"),
    ("postgresql://me:pa@ss@db:5432/games is down", "pa@ss"),
    ("postgresql://db/games?user=me&password=s3cret&sslmode=require", "s3cret"),
    ("host=db user=me password=s3cret dbname=games", "s3cret"),
    ("host=db password='with space' port=5432", "with space"),
    ('host=db password="quoted" port=5432', "quoted"),
    ("redis://:t0ken@127.0.0.1:6379/0", "t0ken"),
])
def test_every_form_is_masked(text: str, secret: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked and secret.split("@")[-1] not in masked.replace("@db", "")
    assert "***" in masked
    assert secret not in str(EtlError(f"cannot connect to {text}"))


def test_urls_without_a_password_are_left_alone() -> None:
    for text in ("postgresql://me@db/games", "write to a@b.c", "password policy"):
        assert mask_secrets(text) == text


@pytest.mark.parametrize("url", ["postgresql://me:pa@ss@127.0.0.1:1/games",
                                 "host=127.0.0.1 port=1 user=me password=s3cret dbname=games"])
def test_a_failed_connection_does_not_echo_the_password(url: str) -> None:
    result = CliRunner().invoke(main, ["runs", "--database-url", url])
    assert result.exit_code != 0
    assert "pa@ss" not in result.output and "ss@127" not in result.output
    assert "s3cret" not in result.output

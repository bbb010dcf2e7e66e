"""`bnlab experiment fork` and the lineage `show` prints, as a person runs them against a real
`bnlab api` and worker (embedded stack)."""

import pytest

from tests.cli.test_cli import TINY, bnlab, json_of, service, url

__all__ = ["service", "url"]  # the fixtures, for this module

pytestmark = pytest.mark.service


def test_fork_sets_changes_and_show_prints_the_lineage(url: str) -> None:
    parent = json_of(
        bnlab("experiment", "run", *TINY, "--wait", "--json", "--url", url)
    )  # kept at 0 and 300 by default
    forked = json_of(
        bnlab(
            "experiment", "fork", str(parent["id"]), "--step", "0",
            "--set", "learning_rate=0.1", "--set", "variants=plain,layer_norm",
            "--json", "--url", url,
        )
    )  # fmt: skip
    assert forked["spec"]["learning_rate"] == 0.1
    assert forked["spec"]["variants"] == ["plain", "layer_norm"]

    shown = bnlab("experiment", "show", str(forked["id"]), "--url", url)
    assert shown.exit_code == 0, shown.output
    assert f"forked from #{parent['id']} at step 0: learning_rate 0.5 -> 0.1" in shown.stdout
    shown = bnlab("experiment", "show", str(parent["id"]), "--url", url)
    assert f"forks: #{forked['id']}" in shown.stdout
    assert "can be forked at steps: 0, 300" in shown.stdout


def test_a_change_a_fork_cannot_make_exits_non_zero_saying_why(url: str) -> None:
    parent = json_of(bnlab("experiment", "run", *TINY, "--json", "--url", url))
    refused = bnlab(
        "experiment", "fork", str(parent["id"]), "--step", "0", "--set", "seed=4", "--url", url
    )
    assert refused.exit_code != 0
    assert "a fork cannot change seed" in refused.output
    malformed = bnlab(
        "experiment", "fork", str(parent["id"]), "--step", "0", "--set", "seed", "--url", url
    )
    assert malformed.exit_code != 0
    assert "give FIELD=VALUE" in malformed.output

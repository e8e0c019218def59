import json

import pytest

from stillroom.cli import main


def test_config_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    main(["config", "--profile", "smoke", "training.max_steps=3"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["profile"] == "smoke" and printed["training"]["max_steps"] == 3


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["prepare-model", "tiny", "--bogus"])

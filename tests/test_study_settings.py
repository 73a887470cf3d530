"""A study's settings are part of the study (issue 30 break 3, issue 31's options
object): --select_by and the race's settings are saved in sweep.json, `--report_only`
with only --workdir uses them, a differing value given again is one line, an older
sweep.json gets the given (or default) settings stored. No model is trained (the
stand-in phases of tests/test_sweep_race.py)."""
import json
import os

import pytest
from test_sweep_race import TINY, phases  # noqa: F401  (the stand-in phases fixture)

from tapefit.flags.errors import ConfigError
from tapefit.research import grid, race, study
from tapefit.research.options import StudyOptions, from_keywords


def val_loss_race(folder):
    options = from_keywords(select_by="val_loss", race=True, max_seeds=3)
    s, options = study.prepare(folder, TINY, options, phases="head",
                               axes=["learning_rate=1e-2,1e-3,1e-6"])
    study.run(s, folder, options, progress=False)
    return s


def report_only(folder, **given):
    """`sweep.py --workdir=FOLDER --report_only [--select_by=...]`, as sweep.py builds it."""
    options = StudyOptions(report_only=True, **given, given=frozenset(given))
    s, options = study.prepare(folder, {}, options, saved=True)
    return study.report_only(s, folder, options), options


def test_report_only_uses_the_studys_select_by(tmp_path, phases):  # noqa: F811
    folder = str(tmp_path / "study")
    val_loss_race(folder)
    content = json.load(open(os.path.join(folder, "sweep.json")))
    assert content["settings"] == {"select_by": "val_loss"}
    assert content["race"] == {"min_seeds": 3, "max_seeds": 3, "alpha": 0.05}
    before = open(os.path.join(folder, race.RACE_JSON)).read()
    result, options = report_only(folder)
    assert options.select_by == "val_loss" and options.race_settings() == grid.Race(3, 3, 0.05)
    assert open(os.path.join(folder, race.RACE_JSON)).read() == before  # Not recomputed
    assert json.loads(before)["metric"] == "val_loss"                   # under another metric.
    assert "validation loss" in result["markdown"].lower()


@pytest.mark.parametrize("given, message", [
    ({"select_by": "val_accuracy"}, "--select_by=val_accuracy, but the study in "),
    ({"race": True, "race_alpha": 0.1}, "--race_alpha=0.1, but the race in "),
])
def test_a_setting_given_again_with_another_value_is_one_line(tmp_path, phases,  # noqa: F811
                                                              given, message):
    folder = str(tmp_path / "study")
    val_loss_race(folder)
    with pytest.raises(ConfigError) as e:
        report_only(folder, **given)
    assert str(e.value).startswith(message) and "another --workdir" in str(e.value)
    assert "\n" not in str(e.value)
    report_only(folder, select_by="val_loss")  # The stored value, given again: fine.


def test_an_older_sweep_json_gets_its_settings_stored(tmp_path, phases):  # noqa: F811
    folder = str(tmp_path / "study")
    val_loss_race(folder)
    path = os.path.join(folder, "sweep.json")
    content = json.load(open(path))
    del content["settings"]
    json.dump(content, open(path, "w"))
    _, options = report_only(folder)  # A race: its race.json names the metric.
    assert options.select_by == "val_loss"
    assert json.load(open(path))["settings"] == {"select_by": "val_loss"}
    os.remove(os.path.join(folder, race.RACE_JSON))
    content.pop("race")
    json.dump(content, open(path, "w"))  # A grid: the given value (or the default).
    _, options = report_only(folder, select_by="val_loss")
    assert json.load(open(path))["settings"] == {"select_by": "val_loss"}

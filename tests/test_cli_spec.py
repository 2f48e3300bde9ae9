"""``personagen spec validate|show|export`` and ``personagen personas`` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from personagen_core.cli import main
from personagen_core.personas.spec import list_packs, load_spec, pack_path

GOOD = """version: 1
name: mini
attributes:
  age:
    stage: 1
    items:
    - {name: child, p: 0.3}
    - {name: adult, p: 0.7}
  job:
    stage: 1
    items:
    - {name: pupil, p: 0.5}
    - {name: clerk, p: 0.5}
scenario:
  activity:
    items:
    - {name: SNS posting, p: 0.4}
    - {name: chatting, p: 0.6}
rules:
- name: children are pupils
  when: {age: [child]}
  allow: {job: [pupil]}
"""


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_ok(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _run(capsys, "spec", "validate", str(_write(tmp_path, GOOD)))
    assert code == 0 and out.startswith("ok: ") and "'mini'" in out and "1 rules" in out
    for pack in list_packs():
        assert _run(capsys, "spec", "validate", str(pack_path(pack)))[0] == 0


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("{name: adult, p: 0.7}", "{name: adult, p: -0.7}", "attributes.age.items[1].p"),
        ("{name: adult, p: 0.7}", "{name: adult, p: 0.9}", "attributes.age.items: probabilities sum to 1.2"),
        ("when: {age: [child]}", "when: {agee: [child]}", "rules[0].when.agee"),
        ("allow: {job: [pupil]}", "allow: {job: [astronaut]}", "rules[0].allow.job[0]"),
        (
            "    items:\n    - {name: pupil, p: 0.5}\n    - {name: clerk, p: 0.5}",
            "    items: []",
            "attributes.job.items",
        ),
        ("  allow: {job: [pupil]}", "  allow: {job: [pupil]\n", "broken YAML"),
        ("allow: {job: [pupil]}", "deny: {job: [pupil, clerk]}", "conflict: no value of attributes.job"),
    ],
)
def test_validate_errors_are_one_paragraph_with_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    code, out, err = _run(capsys, "spec", "validate", str(_write(tmp_path, GOOD.replace(old, new))))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_normalise_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("{name: adult, p: 0.7}", "{name: adult, p: 0.9}"))
    assert _run(capsys, "spec", "validate", str(path))[0] == 2
    assert _run(capsys, "spec", "validate", str(path), "--normalise")[0] == 0
    out = tmp_path / "p.csv"
    assert _run(capsys, "personas", "-n", "5", "--spec", str(path), "-o", str(out))[0] == 2
    assert not out.exists()
    assert _run(capsys, "personas", "-n", "5", "--spec", str(path), "--normalise", "-o", str(out))[0] == 0
    assert len(pd.read_csv(out)) == 5


def test_show_and_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _run(capsys, "spec", "show", "--pack", "japan")
    assert (
        code == 0
        and "freelancer 4.8%" in out
        and "source: Paper Table I" in out
        and "income | age, occupation" in out
    )
    code, out, _ = _run(capsys, "spec", "show", "--pack", "united_states", "--yaml")
    assert code == 0 and out == pack_path("united_states").read_text(encoding="utf-8")
    dest = tmp_path / "sub" / "japan.yaml"
    code, out, _ = _run(capsys, "spec", "export", "--pack", "japan", "-o", str(dest))
    assert code == 0 and dest.read_text(encoding="utf-8") == pack_path("japan").read_text(encoding="utf-8")
    assert load_spec(dest).name == "japan"
    code, _, err = _run(capsys, "spec", "show", "--pack", "atlantis")
    assert code == 2 and "unknown pack 'atlantis'" in err


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_personas_writes_every_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"personas{suffix}"
    code, _, err = _run(capsys, "personas", "-n", "30", "--pack", "japan", "--seed", "4", "-o", str(out))
    assert code == 0 and "wrote 30 personas" in err
    df = {".jsonl": lambda p: pd.read_json(p, lines=True), ".csv": pd.read_csv, ".parquet": pd.read_parquet}[
        suffix
    ](out)
    assert len(df) == 30
    for col in (
        "persona_id",
        "age",
        "occupation",
        "mbti",
        "income",
        "location_type",
        "language_style",
        "persona_description",
        "scenario_description",
    ):
        assert col in df.columns
    assert df.persona_description.str.startswith("A person aged").all()


def test_personas_is_reproducible_and_seed_matters(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for path, seed in ((a, "1"), (b, "1"), (c, "2")):
        assert _run(capsys, "personas", "-n", "40", "--seed", seed, "-o", str(path))[0] == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    first = json.loads(a.read_text(encoding="utf-8").splitlines()[0])
    assert "prefecture" in first  # default pack is japan


def test_personas_filter_reweight_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "f.jsonl"
    code, stdout, _ = _run(
        capsys,
        "personas",
        "-n",
        "300",
        "--filter",
        "activity=posting on social media",
        "--reweight",
        "--summary",
        "-o",
        str(out),
    )
    assert code == 0
    assert "spec_p" in stdout and "sampled_p" in stdout
    assert set(pd.read_json(out, lines=True).activity) == {"posting on social media"}
    code, _, err = _run(capsys, "personas", "-n", "3", "--filter", "activity=skydiving")
    assert code == 2 and "scenario_filters.activity[0]" in err


def test_personas_bad_input_leaves_no_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = _write(tmp_path, GOOD.replace("{name: adult, p: 0.7}", "{name: adult, p: -1}"))
    out = tmp_path / "out.jsonl"
    code, _, err = _run(capsys, "personas", "-n", "5", "--spec", str(bad), "-o", str(out))
    assert code == 2 and "attributes.age.items[1].p" in err and not out.exists()
    txt = tmp_path / "out.txt"
    code, _, err = _run(capsys, "personas", "-n", "5", "-o", str(txt))
    assert code == 2 and ".jsonl, .csv or .parquet" in err and not txt.exists()
    code, _, err = _run(capsys, "personas", "-n", "5", "--pack", "japan", "--spec", str(bad))
    assert code == 2 and "not both" in err
    assert list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob(".*")) == []


def test_reweight_warns_when_rules_make_the_spec_unreachable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # children (30 %) must be pupils, but the spec asks for 10 % pupils
    text = GOOD.replace("{name: pupil, p: 0.5}", "{name: pupil, p: 0.1}").replace(
        "{name: clerk, p: 0.5}", "{name: clerk, p: 0.9}"
    )
    path = _write(tmp_path, text)
    code, _, err = _run(
        capsys, "personas", "-n", "10", "--spec", str(path), "--reweight", "-o", str(tmp_path / "o.csv")
    )
    assert code == 0 and "warning: rules make the spec's marginals unreachable" in err and "0.2000" in err
    code, _, err = _run(
        capsys, "personas", "-n", "10", "--pack", "japan", "--reweight", "-o", str(tmp_path / "j.csv")
    )
    assert code == 0 and "warning" not in err

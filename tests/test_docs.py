"""The docs: generated tables up to date, README short, relative links resolve, no outside refs."""

import pathlib
import re

from experiments import report, report_suite

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
ANCHOR = re.compile(r"""<a id="([^"]+)"></a>""")


def _slug(heading: str) -> str:
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
  text = path.read_text()
  found = set(ANCHOR.findall(text))
  found |= {_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
  return found


def test_generated_docs_are_up_to_date():
  stale = report.stale(ROOT)
  assert not stale, f"stale generated tables in {stale}: run python -m experiments.report"


def test_check_mode_names_a_stale_file(tmp_path, capsys):
  for target in report.TARGETS:
    (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / target).write_text((ROOT / target).read_text())
  (tmp_path / "results").symlink_to(ROOT / "results")
  readme = tmp_path / "README.md"
  readme.write_text(readme.read_text().replace("| `make quadratic` |", "| `make quadratic!` |"))
  assert report.stale(tmp_path) == ["README.md"]
  report.ROOT, saved = tmp_path, report.ROOT
  try:
    assert report.main(["--check"]) == 1
  finally:
    report.ROOT = saved
  assert "README.md" in capsys.readouterr().err


def test_suite_trials_count_only_held_out_types_and_treat_a_nan_as_a_loss():
  def variant(split, horizon, learned, adam):
    final = lambda x: {"final_loss_mean": x}
    return {"suite_split": split, "horizon_multiple": horizon,
            "optimizers": {"learned": final(learned), "adam": final(adam)}}

  held_out = "held_out_type"
  variants = {"a": variant(held_out, 1, 0.1, 0.2), "b": variant(held_out, 1, None, 0.2),
              "c": variant("meta_train", 1, 0.1, 0.2), "d": variant(held_out, 10, 0.1, 0.2),
              "e": variant(held_out, 1, 0.3, 0.2)}
  assert report_suite._lower_mean_count(variants, 1, "learned") == "1 of 3"
  assert report_suite._lower_mean_count(variants, 10, "learned") == "1 of 1"


def test_readme_is_at_most_250_lines():
  assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_relative_links_resolve():
  pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
  broken = []
  for page in pages:
    for target in LINK.findall(page.read_text()):
      if re.match(r"[a-z]+:", target):
        continue
      file, _, anchor = target.partition("#")
      path = (page.parent / file).resolve() if file else page
      if not path.exists():
        broken.append(f"{page.name}: {target}")
      elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
        broken.append(f"{page.name}: {target} (no such anchor)")
  assert not broken, broken


def test_nothing_cites_files_outside_the_repo():
  files = [ROOT / "README.md", ROOT / "Makefile"]
  for folder in ("metaopt", "experiments", "tests", "docs"):
    files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in
              (".py", ".md", ".txt", ".cfg", ".toml", ".sh", "")]
  needles = ("DESIGN" + ".md", "../shared/" + "DESIGN")
  offenders = [str(p.relative_to(ROOT)) for p in files
               if any(n in p.read_text(errors="ignore") for n in needles)]
  assert not offenders, offenders

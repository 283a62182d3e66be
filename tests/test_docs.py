"""README's package map matches the tree: every module is named, every named module exists."""

from __future__ import annotations

import re

from conftest import ROOT


def package_map() -> dict[str, str]:
    """{entry ("cli.py" or "ops/"): its description, continuation lines included} from README's map."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    lines = block.split("\n")
    assert lines[1].strip() == "hamt/", "the map starts with hamt/"
    entries: dict[str, str] = {}
    current = None
    for line in lines[2:]:
        if line.startswith("  ") and not line.startswith("   ") and line.strip():
            parts = line.split()
            current = parts[0]
            entries[current] = line
            # a second entry on the same line ("io.py ...   tables.py ...")
            for extra in re.findall(r"\s{2,}(\w+\.py)\s", line[4:]):
                entries[extra] = line
        elif line.startswith("    ") and current:
            entries[current] += " " + line
        elif line and not line.startswith(" "):
            break  # flows/, tests/: outside the package
    return entries


def test_every_module_is_in_the_readme_map_and_back():
    pkg = ROOT / "hamt"
    entries = package_map()
    on_disk = {p.name for p in pkg.glob("*.py") if p.name != "__init__.py"}
    on_disk |= {p.name + "/" for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert set(entries) == on_disk, (sorted(on_disk - set(entries)), sorted(set(entries) - on_disk))
    for name, desc in entries.items():
        if name.endswith("/"):  # each module of a subpackage is named in its description
            mods = {p.stem for p in (pkg / name).glob("*.py")} - {"__init__"}
            missing = [m for m in mods if not re.search(rf"\b{m}\b", desc)]
            assert not missing, f"README map of hamt/{name} does not name {missing}"


def test_the_readme_study_table_is_the_committed_study_results():
    """README's study table restates results/study/compare/results.json (the committed run): no number drifts."""
    import json

    rows = {r["name"]: r for r in json.loads((ROOT / "results/study/compare/results.json").read_text())["rows"]}
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("## Is HAMT competitive?", 1)[1].split("\n## ", 1)[0]
    table = [line for line in text.splitlines() if line.startswith("| ") and "±" in line]
    assert len(table) == 5
    for line in table:
        name, params, bpb, word_ppl, state = [c.strip().strip("*") for c in line.strip("|").split("|")]
        r = rows[name.split()[0]]
        assert int(params.replace(",", "")) == r["params"]
        assert bpb == f"{r['bpb_mean']:.4f} ± {r['bpb_std']:.4f}" and r["seeds"] == [1337, 2]
        assert word_ppl == f"{r['word_ppl']:.2f}"
        at64 = next(d["state_bytes"] for d in r["decode"] if d["context"] == 64)
        assert state == f"{at64:,} B"

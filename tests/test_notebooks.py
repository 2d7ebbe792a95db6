"""Scans of every committed notebook: what a reader opening it in JupyterLab would trip over.

- no output shows a machine's folder (``/work/``, ``/tmp/``, ``/home/``, ``/root/``, ``C:\\``);
- no output, and no saved HTML figure, loads a script from a CDN (figures must work offline);
- the kernel metadata is what JupyterLab and ipykernel write, so opening a notebook leaves it
  unmodified;
- every number a markdown cell states is computed by the notebook (appears in a code cell's
  source or an output) or is a published constant listed with its citation in
  ``tests/published_constants.toml``.

Which numbers a markdown cell *states*: every decimal, percentage, multiplier (``1.74x``), power
of ten and integer of 10 or more in the prose, except

- inside code (fenced blocks, inline backticks), link targets and URLs, and HTML tags;
- section numbers in headings (``## 3. Results``) and numbered-list markers;
- years in citations (``Hoffmann et al. 2022``, ``Kaplan et al. (2020)``) and arXiv ids;
- numbers that are part of a name (``Llama-3``, ``bf16``, ``top-2``, ``DeepSeek-V3``, ``6ND``);
- ids written with a leading zero (``seed 004``, ``notebook 03``);
- integers below 10: counts and references (``2 layers``, ``Table 3``), too common to be results.

A stated number is accounted for when some value of the same notebook rounds to it at the
precision it is written with (``0.34`` matches a computed ``0.3412``; ``25%`` matches ``0.25``
or ``25.0``; ``20k`` matches ``20000``).
"""

from __future__ import annotations

import bisect
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CONSTANTS = ROOT / "tests" / "published_constants.toml"

PATH_PATTERN = re.compile(r"(?<![\w.~-])(/work/|/tmp/|/home/|/root/|/Users/|/private/var/)"
                          r"|(?<![\w])[A-Za-z]:\\\\?[A-Za-z]")
CDN_PATTERNS = (
    re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"\bimport\s*(?:\(\s*)?[\"'](?:https?:)?//", re.I),
    re.compile(r"require\.config\([^)]{0,2000}?[\"'](?:https?:)?//", re.I | re.S),
)
TEXT_MIMES = ("text/plain", "text/markdown", "text/html", "text/latex")
SKIP_MIMES = ("image/", "application/vnd.plotly", "application/vnd.jupyter.widget")

_SUPER = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_NUMBER = re.compile(
    r"(?:(?P<mant>\d+(?:\.\d+)?)\s*(?:\\cdot|\\times|×|·|\*)\s*10\s*\^\s*\{?\s*(?P<exp1>[-−]?\d+)\s*\}?"  # 2·10^-10
    r"|10\s*\^\s*\{?\s*(?P<exp2>[-−]?\d+)\s*\}?"                                                     # 10^5
    r"|10(?P<exp3>⁻?[⁰¹²³⁴⁵⁶⁷⁸⁹]+)"                                                                   # 10²⁴
    r"|(?P<plain>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+−]?\d+)?))"                       # 8,200 0.5 3e-3
    r"(?P<suffix>x|×|%|[kKMBT](?![A-Za-z]))?")
_CODE_NUMBER = re.compile(r"(?<![\w.])(?:\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")
_CODE_POWER = re.compile(r"(?<![\w.])(\d+)\s*\*\*\s*(\d+)")
_YEAR_BEFORE = re.compile(r"(et al\.?,?|[A-Z][\w-]+,?|\()\s*\(?\s*$")
_REFERENCE = re.compile(r"(?i)\b(sec\.?|section|sections|table|fig\.?|figure|appendix|eq\.?|equation|"
                        r"chapter|page|p\.)\s*$")
_SCALE = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


# ------------------------------------------------------------------------------ the scanners


@dataclass(frozen=True)
class Stated:
    """One number a markdown cell states: its text, value and the half-width its digits imply."""

    text: str
    value: float
    tolerance: float
    percent: bool
    start: int


def _blank(text: str, pattern: str, flags: int = 0) -> str:
    """Replace each match by spaces of the same length, so offsets stay those of the source."""
    return re.sub(pattern, lambda m: " " * len(m.group(0)), text, flags=flags)


def _prose(text: str) -> str:
    text = _blank(text, r"```.*?```|~~~.*?~~~", re.S)
    text = _blank(text, r"`[^`\n]*`")
    text = _blank(text, r"\]\([^)\s]*\)")                              # link targets
    text = _blank(text, r"https?://\S+|www\.\S+")
    text = _blank(text, r"<[^>\n]*>")                                   # HTML tags
    text = _blank(text, r"(?m)^\s{0,3}#{1,6}\s*\d+(?:\.\d+)*\.?")       # heading section numbers
    text = _blank(text, r"(?m)^\s*\d+[.)](?=\s)")                       # numbered-list markers
    return _blank(text, r"(?i)arxiv[:\s./abs]*\d{4}\.\d{4,5}(?:v\d+)?")


def _decimals(digits: str) -> int:
    return len(digits.split(".", 1)[1]) if "." in digits else 0


def markdown_numbers(text: str) -> list[Stated]:
    """The numbers a markdown text states (the module docstring lists what is exempt)."""
    prose = _prose(text)
    found = []
    for m in _NUMBER.finditer(prose):
        start, end = m.span()
        prev, prev2 = prose[start - 1:start] or " ", prose[start - 2:start - 1] or " "
        if prev.isalnum() or prev in "_#§" or (prev in "-/." and (prev2.isalnum() or prev2 == "_")):
            continue  # part of a name (bf16, top-2, v1.5), an issue (#963) or a section (§3)
        if re.match(r"[A-Za-z_]|[-.][A-Za-z\d]", prose[end:end + 2]):
            continue  # a name or unit glued on (6ND, 1-sqrt, 12h) or a dotted reference (3.4.3)
        if _REFERENCE.search(prose[max(0, start - 12):start]):
            continue  # a reference to part of a document: sec. 3.4, Table 3, Figure 4, eq. 12
        suffix = m.group("suffix") or ""
        if m.group("mant") is not None:
            exp = int(m.group("exp1").replace("−", "-"))
            value = float(m.group("mant")) * 10.0 ** exp
            tol = 0.5 * 10.0 ** (exp - _decimals(m.group("mant")))
        elif m.group("exp2") is not None or m.group("exp3") is not None:
            exp = int((m.group("exp2") or (m.group("exp3") or "").translate(_SUPER)).replace("−", "-"))
            value, tol = 10.0 ** exp, 10.0 ** exp * 1e-9
        else:
            digits = m.group("plain").replace(",", "").replace("−", "-")
            if re.fullmatch(r"0\d+", digits):
                continue  # an id written with a leading zero
            mantissa, _, exp_text = digits.lower().partition("e")
            exp = int(exp_text) if exp_text else 0
            value, tol = float(digits), 0.5 * 10.0 ** (exp - _decimals(mantissa))
            is_int = "." not in mantissa and not exp_text
            if is_int and not suffix and value < 10:
                continue  # a small count or reference
            if (is_int and len(digits) == 4 and 1900 <= value <= 2099
                    and (_YEAR_BEFORE.search(prose[max(0, start - 30):start]) or prose[end:end + 1] == ")")):
                continue  # a year in a citation
        if suffix in _SCALE:
            value, tol = value * _SCALE[suffix], tol * _SCALE[suffix]
        found.append(Stated(m.group(0), value, tol, suffix == "%", start))
    return found


def _joined(value) -> str:
    return "".join(value) if isinstance(value, list) else value if isinstance(value, str) else json.dumps(value)


def output_texts(cell: dict) -> list[str]:
    """The text of a code cell's outputs: streams, errors and text MIME types (no images)."""
    texts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            texts.append(_joined(out["text"]))
        if out.get("output_type") == "error":
            texts.append(str(out.get("evalue", "")))
        texts += [_joined(data) for mime, data in out.get("data", {}).items() if mime in TEXT_MIMES]
    return texts


def computed_values(nb: dict) -> list[float]:
    """Every number in the notebook's code sources and text outputs, sorted."""
    values = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for text in [_joined(cell.get("source", "")), *output_texts(cell)]:
            text = text.replace("−", "-")
            values += [float(t.group(0).replace("_", "")) for t in _CODE_NUMBER.finditer(text)
                       if t.group(0).replace("_", "").rstrip(".")]
            values += [float(t.group(0).replace(",", "")) for t in re.finditer(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", text)]
            values += [float(int(a) ** int(b)) for a, b in _CODE_POWER.findall(text) if int(b) < 300]
    return sorted(v for v in values if math.isfinite(v))


def accounted(stated: Stated, values: list[float]) -> bool:
    """True when some value rounds to the stated number (a percentage also as a fraction)."""
    targets = [(stated.value, stated.tolerance)]
    if stated.percent:
        targets.append((stated.value / 100.0, stated.tolerance / 100.0))
    for target, tol in targets:
        tol = tol * (1 + 1e-9) + 1e-15
        for centre in (target, -target):
            i = bisect.bisect_left(values, centre - tol)
            if i < len(values) and values[i] <= centre + tol:
                return True
    return False


def absolute_paths(nb: dict) -> list[str]:
    """``"cell N: ...context..."`` for each output (or the notebook metadata) showing a machine's path."""
    found = []
    meta = json.dumps(nb.get("metadata", {}))
    found += [f"notebook metadata: ...{meta[max(0, m.start() - 40):m.end() + 40]}..."
              for m in PATH_PATTERN.finditer(meta)]
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            texts = [json.dumps(v) for k, v in out.items() if k not in ("data", "metadata")]
            texts += [json.dumps(v) for k, v in out.get("data", {}).items() if not k.startswith(SKIP_MIMES)]
            found += [f"cell {i}: ...{t[max(0, m.start() - 40):m.end() + 60]}..."
                      for t in texts for m in PATH_PATTERN.finditer(t)]
    return found


def cdn_scripts(text: str) -> list[str]:
    """Each place in ``text`` (HTML or JavaScript) that loads a script or stylesheet from the network."""
    return [text[max(0, m.start() - 20):m.end() + 60] for p in CDN_PATTERNS for m in p.finditer(text)]


def published_constants() -> dict[str, list[dict]]:
    """``tests/published_constants.toml``: per notebook, the published values its prose may state."""
    table = tomllib.loads(CONSTANTS.read_text(encoding="utf-8"))
    for book, entries in table.items():
        for entry in entries:
            if set(entry) != {"value", "citation"} or not str(entry["citation"]).strip():
                raise ValueError(f"{CONSTANTS.name} [{book}]: each entry needs a value and a citation, got {entry}")
    return table


def unaccounted_numbers(nb: dict, constants: list[dict]) -> list[str]:
    """``"cell N: 'text' in ...context..."`` for each stated number nothing accounts for."""
    values = computed_values(nb)
    allowed = sorted(float(str(e["value"]).rstrip("%x")) for e in constants)
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = _joined(cell.get("source", ""))
        for s in markdown_numbers(text):
            if accounted(s, values) or accounted(s, allowed):
                continue
            context = " ".join(text[max(0, s.start - 50):s.start + len(s.text) + 30].split())
            problems.append(f"cell {i}: {s.text!r} in \"...{context}...\"")
    return problems


def _load(book: Path) -> dict:
    return json.loads(book.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------ the scanners' own tests


def test_markdown_numbers_follow_the_stated_rules():
    text = ("## 3. Results\n\n1. First, Hoffmann et al. 2022 and Kaplan et al. (2020) (arXiv:2203.15556)\n"
            "found a = 0.50 at 20 tokens per parameter; `lr = 0.003` and [x](http://a.b/12.5) are code.\n"
            "Llama-3, bf16, top-2 of 4 experts, 6ND, seed 004, accelerate#963, sec. 3.4.3, Figure 14 and "
            "Table 3 are names; "
            "speedup 1.74x, 25% of 2,048 steps, $10^{5}$ offsets, $2\\cdot10^{-10}$, 20k runs, 1e-3.")
    stated = {s.text: s.value for s in markdown_numbers(text)}
    assert stated == {"0.50": 0.5, "20": 20.0, "1.74x": 1.74, "25%": 25.0, "2,048": 2048.0,
                      "10^{5}": 1e5, "2\\cdot10^{-10}": 2e-10, "20k": 20000.0, "1e-3": 1e-3}


def test_a_stated_number_is_accounted_for_by_a_value_that_rounds_to_it():
    nb = {"cells": [
        {"cell_type": "code", "source": "lr = 3e-3\nsteps = 10 ** 4\n",
         "outputs": [{"output_type": "stream", "text": "alpha 0.3412, share 0.254, n 8,200\n"}]},
        {"cell_type": "markdown", "source": "alpha 0.34, share 25%, 8,200 bytes, lr 0.003, "
                                            "10^4 steps; but 0.35, 26% and 9,000 were typed."}]}
    problems = unaccounted_numbers(nb, [])
    assert [p.split(":")[1].strip().split(" ")[0] for p in problems] == ["'0.35'", "'26%'", "'9,000'"]
    assert unaccounted_numbers(nb, [{"value": "0.35", "citation": "x"}, {"value": "26%", "citation": "y"},
                                    {"value": 9000, "citation": "z"}]) == []


def test_path_and_cdn_scanners_find_what_they_look_for():
    nb = {"metadata": {}, "cells": [{"cell_type": "code", "source": "", "outputs": [
        {"output_type": "execute_result", "data": {"text/plain": "[PosixPath('/work/main/figures/a.png')]",
                                                   "image/png": "iVBOR/tmp/xx"}}]}]}
    assert len(absolute_paths(nb)) == 1 and "cell 0" in absolute_paths(nb)[0]
    assert absolute_paths({"metadata": {}, "cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "text": "figures/01_schedules/a.png"}]}]}) == []
    assert cdn_scripts('<script type="module">import "https://cdn.plot.ly/plotly-4.1.1.min"</script>')
    assert cdn_scripts('<script charset="utf-8" src="https://cdn.plot.ly/plotly.min.js"></script>')
    assert not cdn_scripts('<script>var u = "https://cdn.plot.ly/un/"; Plotly.newPlot("x", [])</script>')


# ------------------------------------------------------------------------------ the notebooks


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_no_output_shows_an_absolute_path(book):
    found = absolute_paths(_load(book))
    assert not found, f"{book.name}: outputs show a machine's folder:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_no_output_loads_a_script_from_a_cdn(book):
    found = []
    for i, cell in enumerate(_load(book)["cells"]):
        for out in cell.get("outputs", []):
            for mime in ("text/html", "application/javascript"):
                found += [f"cell {i} ({mime}): {hit}" for hit in cdn_scripts(_joined(out.get("data", {}).get(mime, "")))]
    assert not found, f"{book.name}: outputs load scripts from the network:\n  " + "\n  ".join(found)


def test_saved_html_figures_embed_plotly_and_load_nothing():
    pages = sorted((ROOT / "figures").glob("*/*.html"))
    bad = {str(p.relative_to(ROOT)): cdn_scripts(p.read_text(encoding="utf-8"))[:1] for p in pages}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"saved figures that load scripts from the network (re-run their notebook): {bad}"


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_every_plotly_output_carries_its_png_snapshot(book):
    # Without one, jupyterlab-plotly draws the figure on open and stores its own snapshot in the
    # output, so the notebook opens modified (tests/browser checks it opens unmodified).
    missing = [i for i, cell in enumerate(_load(book)["cells"]) for out in cell.get("outputs", [])
               if "application/vnd.plotly.v1+json" in out.get("data", {})
               and not _joined(out["data"].get("image/png", "")).startswith("iVBORw0KGgo")]  # base64 of the PNG magic
    assert not missing, (f"{book.name}: plotly outputs in cells {missing} have no PNG snapshot; re-run it "
                         f"with `invoke refresh` on a machine with a Chromium (lib.core.setup_plotly_for_notebooks)")


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_kernel_metadata_is_what_jupyterlab_writes(book):
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    meta = _load(book)["metadata"]
    assert meta.get("kernelspec") == {"display_name": spec.display_name, "language": spec.language,
                                      "name": "python3"}, book.name
    expected = dict(IPythonKernel.language_info)
    info = dict(meta.get("language_info", {}))
    version, expected_version = info.pop("version", ""), expected.pop("version")
    assert info == expected, book.name
    # The patch release is the executing machine's; the minor release is the lock's.
    lock_python = re.search(r"Resolved for Python (\d+\.\d+)", (ROOT / "constraints.txt").read_text()).group(1)
    assert version.rsplit(".", 1)[0] == lock_python, (book.name, version)
    assert expected_version.startswith(f"{sys.version_info.major}.")


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: b.stem)
def test_every_number_the_prose_states_is_computed_or_published(book):
    constants = published_constants()
    problems = unaccounted_numbers(_load(book), constants.get(book.stem, []))
    assert not problems, (
        f"{book.name}: {len(problems)} number(s) in markdown appear in no code cell or output; compute "
        f"them (lib.core.show_markdown in a # NBVAL_CHECK_OUTPUT cell) or, for a published value, list it "
        f"with its citation under [[{book.stem}]] in {CONSTANTS.relative_to(ROOT)}:\n  " + "\n  ".join(problems))


def test_published_constants_name_existing_notebooks():
    assert set(published_constants()) <= {b.stem for b in BOOKS}


def test_every_quick_notebook_ran_within_its_budget_when_last_refreshed():
    """`invoke refresh` records each notebook's quick-profile time (tasks.TIMINGS); a notebook
    whose last refresh on a 2-core machine took longer than tasks.QUICK_BUDGET_S fails here, so
    a slower quick profile cannot land unnoticed."""
    import tasks

    timings = json.loads(tasks.TIMINGS.read_text())
    missing = [b.stem for b in BOOKS if b.stem not in timings]
    assert not missing, f"no refresh time recorded for {missing}: run `invoke refresh`"
    over = {name: t["seconds"] for name, t in timings.items() if t["seconds"] > tasks.QUICK_BUDGET_S}
    assert not over, f"quick profile over {tasks.QUICK_BUDGET_S} s on 2 cores: {over} (slowest cells in {tasks.TIMINGS.name})"
    assert all(t["cpus"] <= 2 for t in timings.values()), (
        f"timings must be measured on a 2-core machine (the budget's): {timings}")

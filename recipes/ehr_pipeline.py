"""``medtok-qa ehr pipeline``: the whole EHR path as one resumable preset.

    medtok-qa ehr pipeline --config configs/ehr_demo.yaml     # the committed synthetic fixture, minutes
    medtok-qa ehr pipeline --config configs/ehr_full.yaml     # >= 5,000 synthetic patients (hours)

Stages, in order:

1. data       ``ehr data`` on ``data.meds_dir``; without one, clinosim's cohort (``data.clinosim_*``,
              generated once per parameters under the cache dir) converted to ``<output>/meds`` first
2. medtok     a MedTok artifact for the ``medtok_*`` variants: ``medtok_artifact`` when given, else the
              QA pipeline's ``runs/pipeline/medtok/artifact`` when present, else trained here with
              ``medtok-qa train-tokenizer --config <medtok_config>`` (``medtok_train: false``: the
              MedTok variants are left out, with a printed note)
3. pretrain   next-token pretraining per backbone x code embedding x seed (``runs``, ``seeds``)
4. finetune   multitask prompted finetuning from each pretrained model; each run's pretrain -> finetune
              chain is independent, and ``workers`` of them train at a time (a spawned process each)
5. eval       every finetuned model and the gradient-boosting baseline on held_out: AUROC/AUPRC/F1 with
              patient-bootstrap intervals, the rare/unseen-code slice
6. medfuse    with ``medfuse.enabled``: MedFuse's fusion ablation (MuFuse / additive / concat) and its GRU and
              gradient-boosting baselines over ``seeds`` on the same MEDS folder (ehr/medfuse/run.py's
              evaluate_medfuse) -> ``<output>/medfuse/results.json`` and ``results.md``
7. report     summary.json (mean and spread across seeds; MedFuse's ablation), report.md, auprc.png,
              machine.json, timings.json, README.md (model card); with ``publish`` the same files (and
              medfuse/results.*) are copied to that folder and ``page`` is generated from summary.json

Resumable: each stage writes ``<output>/stamps/<stage>.json`` (a hash of its settings and of the stages
it reads) when it finishes and is skipped while that hash is unchanged; a training killed half-way resumes from its own
``_resume`` state. Numbers on the synthetic cohort measure the software, not medicine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from commons.config import FieldError, parse_config, require_range, save_config, to_dict
from commons.errors import ConfigError, DataFileError
from commons.io import check_writable_dir, read_json, write_json
from ehr.code_embeddings import variant_names
from ehr.code_embeddings.base import REGISTRY as CODE_EMBEDDINGS
from ehr.data import DataOptions
from ehr.medfuse.model import MedFuseOptions
from ehr.medfuse.run import CohortOptions, FitOptions, MedFuseEvalConfig
from ehr.model import ModelOptions
from ehr.train import TrainOptions

STAMPS = "stamps"
QA_PIPELINE_ARTIFACT = Path("runs/pipeline/medtok/artifact")  # what `make demo` / recipes.pipeline trains
BACKBONES = ("mamba", "transformer")
STAGE_GROUPS = ("data", "medtok", "pretrain", "finetune", "eval", "medfuse")
# MedFuse's cohort options that the pipeline takes from `data` (one MEDS folder, one code map, one split)
FROM_DATA = ("meds_dir", "source", "seed", "data_dir")


@dataclass
class EvalOptions:
    """The evaluation (``medtok-qa ehr eval``'s options)."""

    min_positives: int = 10  # fewer positives (or negatives) in held_out: the task is not estimable
    n_boot: int = 200  # bootstrap resamples of patients
    rare_k: int = 5  # rare-code slice: an input code seen fewer than this many times in training
    baseline: bool = True  # the gradient-boosting baseline on code counts + age
    batch_size: int = 32
    max_per_subject: int = 0  # evaluate at most this many samples per patient, task and split (0: all)

    def __post_init__(self):
        require_range(self, "min_positives", 1)
        require_range(self, "n_boot", 10)
        require_range(self, "rare_k", 1)
        require_range(self, "max_per_subject", 0)


_EVAL_DEFAULTS = MedFuseEvalConfig()


@dataclass
class MedFuseStageOptions:
    """MedFuse (issue 28) as the pipeline's ``medfuse`` stage: ``ehr medfuse-eval``'s options, on the
    pipeline's MEDS folder and ``seeds``, written to ``<output>/medfuse``."""

    enabled: bool = False  # off: the pipeline is EhrMamba's alone
    # triplet options (tasks, windows, bins, max_tokens...); meds_dir, source, seed, data_dir come from `data`
    cohort: CohortOptions = field(default_factory=CohortOptions)
    model: MedFuseOptions = field(default_factory=MedFuseOptions)  # its fusion comes from `fusions`
    train: FitOptions = field(default_factory=FitOptions)
    tasks: list[str] = field(default_factory=list)  # empty: every task built
    fusions: list[str] = field(default_factory=lambda: list(_EVAL_DEFAULTS.fusions))
    baselines: list[str] = field(default_factory=lambda: list(_EVAL_DEFAULTS.baselines))
    n_resamples: int = _EVAL_DEFAULTS.n_resamples  # bootstrap resamples over patients

    def __post_init__(self):
        try:
            self.eval_config(DataOptions(), [0], "")  # the same checks as `ehr medfuse-eval`
        except FieldError:
            raise
        except ConfigError as err:
            raise ConfigError(f"medfuse.{err}") from None

    def eval_config(self, data: DataOptions, seeds: list[int], output_dir: str, meds_dir: str = "",
                    medtok: str | None = None) -> MedFuseEvalConfig:
        """The ``evaluate_medfuse`` config of this stage (the MEDS folder and its code map from ``data``)."""
        cohort = replace(self.cohort, meds_dir=meds_dir, source=data.source, seed=data.seed, data_dir=data.data_dir)
        model = self.model
        if medtok and CODE_EMBEDDINGS[model.code_embedding].needs_medtok and not model.embedding.medtok:
            model = replace(model, embedding=replace(model.embedding, medtok=medtok))
        return MedFuseEvalConfig(cohort=cohort, model=model, train=self.train, tasks=list(self.tasks),
                                 fusions=list(self.fusions), baselines=list(self.baselines), seeds=list(seeds),
                                 n_resamples=self.n_resamples, output_dir=output_dir)


def _names(value) -> list[str]:
    """A YAML list, a comma-separated string, or the command line's occurrences -> a list of names."""
    items = [value] if isinstance(value, str) else [x for v in (value or []) for x in ([v] if isinstance(v, str) else v)]
    return [name.strip() for item in items for name in str(item).split(",") if name.strip()]


@dataclass
class EhrPipelineConfig:
    """Run data -> (MedTok) -> pretrain -> finetune per backbone x code embedding x seed -> eval -> report."""

    output: str = "runs/ehr_pipeline"  # every stage's folder, the report and the model card
    data: DataOptions = field(default_factory=DataOptions)  # `ehr data` options (output_dir: <output>/data)
    # backbone -> code embeddings trained with it (ehr/code_embeddings/); every pair runs once per seed
    runs: dict = field(default_factory=lambda: {b: variant_names() for b in BACKBONES})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    model: ModelOptions = field(default_factory=ModelOptions)  # its code_embedding comes from `runs`
    pretrain: TrainOptions = field(default_factory=TrainOptions)  # its seed comes from `seeds`
    finetune: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    medtok_artifact: str = ""  # an existing MedTok artifact for the medtok_* variants
    medtok_train: bool = True  # none given or found: train one (else leave the MedTok variants out)
    medtok_config: str = "configs/medtok_quick.yaml"  # its `medtok-qa train-tokenizer` config
    # MedFuse's fusion ablation and baselines on the same cohort (stage `medfuse`, off by default)
    medfuse: MedFuseStageOptions = field(default_factory=MedFuseStageOptions)
    # trainings (one pretrain -> finetune chain per backbone x embedding x seed) run this many at a time,
    # each in its own process on `pretrain.threads` / `finetune.threads` threads
    workers: int = 1
    force: list[str] = field(default_factory=list)  # stages to redo: data, medtok, pretrain, finetune, eval, medfuse
    publish: str = ""  # also copy the report files here (e.g. docs/results/ehr_synthetic)
    page: str = ""  # and generate this Markdown page from summary.json (e.g. docs/results/ehr_synthetic.md)

    def __post_init__(self):
        if not isinstance(self.runs, dict) or not self.runs:
            raise FieldError("runs", "must map a backbone (mamba, transformer) to a list of code embeddings")
        self.runs = {b: _names(v) for b, v in self.runs.items()}  # `--runs.mamba a,b` gives a CLI value
        for backbone, variants in self.runs.items():
            if backbone not in BACKBONES:
                raise FieldError("runs", f"names unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
            if not variants:
                raise FieldError("runs", f"{backbone}: give a list of code embeddings")
            for v in variants:
                if v not in CODE_EMBEDDINGS:
                    raise FieldError("runs", f"{backbone}: unknown code embedding {v!r}; choose from "
                                     f"{', '.join(variant_names())}")
        if not self.seeds:
            raise FieldError("seeds", "is empty; give at least one seed")
        require_range(self, "workers", 1)
        for name in self.force:
            if name not in (*STAGE_GROUPS, "all"):
                raise FieldError("force", f"holds unknown stage {name!r}; stages: {', '.join(STAGE_GROUPS)}, all")
        default = CohortOptions()
        for name in FROM_DATA:  # set in medfuse.cohort, it would be silently replaced by data's value
            value = getattr(self.medfuse.cohort, name)
            if value != getattr(default, name) and value != getattr(self.data, name):
                raise FieldError(f"medfuse.cohort.{name}", f"comes from data.{name} in the pipeline; set "
                                 f"data.{name} instead (or leave medfuse.cohort.{name} out)")


# ------------------------------------------------------------------------------------- stamps
def settings_key(payload) -> str:
    """A stage's stamp: the hash of its settings and the stamps of the stages it reads."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_digest(path: Path) -> list:
    """What identifies an input folder cheaply: every file's relative path, size and modification time."""
    return sorted([str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
                  for p in path.rglob("*") if p.is_file())


def stamp_path(out: Path, name: str) -> Path:
    """Stamps live beside the stage folders (a training clears its own folder when it starts fresh)."""
    return out / STAMPS / f"{name.replace(' ', '_')}.json"


class Stages:
    """Runs stages by name, skipping the ones whose stamp is current; collects their timings."""

    def __init__(self, cfg: EhrPipelineConfig, out: Path):
        self.force = set(cfg.force)
        self.out = out
        self.timings: dict[str, dict] = {}

    def run(self, group: str, name: str, folder: Path, key: str, work) -> None:
        stamp = stamp_path(self.out, name)
        old = read_json(stamp) if stamp.is_file() else {}
        forced = group in self.force or "all" in self.force
        if old.get("key") == key and old.get("done") and not forced:
            print(f"[{name}] up to date ({old['seconds']:.0f} s when it ran)", flush=True)
            self.timings[name] = {"seconds": old["seconds"], "reused": True}
            return
        if folder.exists() and (forced or old.get("key") != key or old.get("done")):
            shutil.rmtree(folder)  # other settings (or forced): start over; same settings half-way: resume
        print(f"[{name}] running", flush=True)
        write_json(stamp, {"key": key, "done": False})
        t0 = time.perf_counter()
        work()
        seconds = round(time.perf_counter() - t0, 2)
        write_json(stamp, {"key": key, "done": True, "seconds": seconds})
        print(f"[{name}] done in {seconds:.0f} s", flush=True)
        self.timings[name] = {"seconds": seconds, "reused": False}


# ------------------------------------------------------------------------------------- stages
def data_stage(cfg: EhrPipelineConfig, out: Path, stages: Stages) -> tuple[Path, str, Path]:
    """The prepared folder, its stamp, and the MEDS folder it was prepared from."""
    from ehr.data import prepare, value_bins_line

    opts = replace(cfg.data, output_dir=str(out / "data"))
    meds, meds_key = (Path(opts.meds_dir), None) if opts.meds_dir else synthetic_meds(opts, out, stages)
    folder = out / "data"
    settings = to_dict(opts)
    if not opts.value_bins:  # lab value bins off: the same key as before the option existed (no rerun)
        settings = {k: v for k, v in settings.items() if k not in ("value_bins", "value_bins_file")}
    key = settings_key({"data": settings, "meds": meds_key or folder_digest(meds)})

    def work():
        summary = prepare(opts, meds, folder)  # written atomically
        save_config(opts, folder / "config.yaml")
        if value_bins_line(summary):
            print(f"[data] {value_bins_line(summary)}", flush=True)

    stages.run("data", "data", folder, key, work)
    return folder, key, meds


def synthetic_meds(opts: DataOptions, out: Path, stages: Stages) -> tuple[Path, str]:
    """No MEDS folder given: clinosim's cohort (generated once per parameters under the cache dir, or
    ``data.fhir_dir``) converted to ``<output>/meds``."""
    from ehr.clinosim import cached_cohort, convert_fhir

    folder = out / "meds"
    params = [opts.clinosim_population, opts.clinosim_seed, opts.clinosim_start, opts.clinosim_end]
    key = settings_key({"clinosim": params, "fhir_dir": opts.fhir_dir, "split_seed": opts.seed})

    def work():
        fhir = Path(opts.fhir_dir) if opts.fhir_dir else cached_cohort(*params)
        convert_fhir(fhir, folder, f"clinosim p={params[0]} s={params[1]} start={params[2]} end={params[3]} (synthetic)",
                     seed=opts.seed)

    stages.run("data", "meds", folder, key, work)
    return folder, key


def needs_medtok(variant: str) -> bool:
    return bool(CODE_EMBEDDINGS[variant].needs_medtok)


def medfuse_needs_medtok(cfg: EhrPipelineConfig) -> bool:
    return cfg.medfuse.enabled and needs_medtok(cfg.medfuse.model.code_embedding) \
        and not cfg.medfuse.model.embedding.medtok


def medtok_stage(cfg: EhrPipelineConfig, out: Path, stages: Stages) -> tuple[str | None, str]:
    """The MedTok artifact the medtok_* variants use (and its stamp), or None when they are left out."""
    from medtok_core.artifact import find_artifact

    if not any(needs_medtok(v) for vs in cfg.runs.values() for v in vs) and not medfuse_needs_medtok(cfg):
        return None, ""
    if cfg.medtok_artifact:
        path = find_artifact(cfg.medtok_artifact)
        return str(path), settings_key(folder_digest(path))
    if (QA_PIPELINE_ARTIFACT / "config.json").is_file():
        print(f"[medtok] using the QA pipeline's artifact {QA_PIPELINE_ARTIFACT}", flush=True)
        return str(QA_PIPELINE_ARTIFACT), settings_key(folder_digest(QA_PIPELINE_ARTIFACT))
    if not cfg.medtok_train:
        print("[medtok] note: no MedTok artifact given or found and medtok_train is false: the MedTok "
              "variants are left out", flush=True)
        return None, ""
    if not Path(cfg.medtok_config).is_file():
        raise ConfigError(f"medtok_config {cfg.medtok_config} does not exist; pass a train-tokenizer config "
                          "(configs/medtok_quick.yaml) or medtok_artifact PATH")
    folder = out / "medtok"
    argv = [sys.executable, "-m", "recipes.train_tokenizer", "--config", cfg.medtok_config,
            "--output_dir", str(folder / "run")]
    key = settings_key({"argv": argv[1:], "config": Path(cfg.medtok_config).read_text()})

    def work():
        if subprocess.run(argv).returncode:
            raise ConfigError(f"MedTok training failed (`{' '.join(argv[1:])}`); see its output above")

    stages.run("medtok", "medtok", folder, key, work)
    return str(folder / "run" / "artifact"), key


@dataclass(frozen=True)
class Run:
    backbone: str
    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.backbone}_{self.variant}_s{self.seed}"


def planned_runs(cfg: EhrPipelineConfig, medtok: str | None) -> list[Run]:
    return [Run(b, v, s) for b, vs in cfg.runs.items() for v in vs if medtok or not needs_medtok(v)
            for s in cfg.seeds]


def train_stage(cfg: EhrPipelineConfig, run: Run, stage: str, data: Path, upstream: str, medtok: str | None,
                out: Path, stages: Stages) -> tuple[Path, str]:
    from ehr.train import EhrTrainConfig, train

    folder = out / "runs" / f"{run.name}_{stage}"
    model = replace(cfg.model, code_embedding=run.variant, backbone=run.backbone,
                    embedding=replace(cfg.model.embedding, medtok=medtok if needs_medtok(run.variant) else None))
    opts = replace(cfg.pretrain if stage == "pretrain" else cfg.finetune, seed=run.seed)
    init = str(out / "runs" / f"{run.name}_pretrain") if stage == "finetune" else None
    train_cfg = EhrTrainConfig(data=str(data), output_dir=str(folder), stage=stage, init=init, model=model, train=opts)
    key = settings_key({"train": to_dict(replace(train_cfg, output_dir="", data="", init="")), "upstream": upstream})
    stages.run(stage, f"{stage} {run.name}", folder, key, lambda: train(train_cfg))
    return folder, key


def train_chain(cfg: EhrPipelineConfig, run: Run, data: Path, upstream: str, medtok: str | None, out: Path,
                stages: Stages) -> tuple[Path, str]:
    """Pretrain then finetune one backbone x embedding x seed; the finetuned folder and its stamp."""
    _, pre_key = train_stage(cfg, run, "pretrain", data, upstream, medtok, out, stages)
    return train_stage(cfg, run, "finetune", data, pre_key, medtok, out, stages)


def _chain_in_worker(cfg: EhrPipelineConfig, run: Run, data: Path, upstream: str, medtok: str | None,
                     out: Path) -> tuple[Path, str, dict]:
    stages = Stages(cfg, out)
    folder, key = train_chain(cfg, run, data, upstream, medtok, out, stages)
    return folder, key, stages.timings


def _die_with_parent() -> None:
    """A worker whose pipeline is killed stops too (Linux), so a rerun never meets a stray writer."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def train_all(cfg: EhrPipelineConfig, runs: list[Run], data: Path, data_key: str, medtok: str | None,
              medtok_key: str, out: Path, stages: Stages) -> dict[Run, tuple[Path, str]]:
    """Every run's chain, ``cfg.workers`` at a time; the result keeps the planned order."""
    def upstream(run: Run) -> str:
        return data_key + (medtok_key if needs_medtok(run.variant) else "")

    if cfg.workers == 1 or len(runs) == 1:
        return {run: train_chain(cfg, run, data, upstream(run), medtok, out, stages) for run in runs}
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    finetuned = {}
    with context.Pool(min(cfg.workers, len(runs)), initializer=_die_with_parent) as pool:
        # leaving the block (done, a failed chain, Ctrl-C) terminates the workers; they keep their resumable state
        pending = {run: pool.apply_async(_chain_in_worker, (cfg, run, data, upstream(run), medtok, out))
                   for run in runs}
        for run, result in pending.items():
            folder, key, timings = result.get()  # a failing chain raises its error here
            stages.timings.update(timings)
            finetuned[run] = (folder, key)
    return finetuned


def eval_stage(cfg: EhrPipelineConfig, data: Path, finetuned: dict[Run, tuple[Path, str]], data_key: str,
               out: Path, stages: Stages) -> Path:
    from ehr.evaluate import EhrEvalConfig, evaluate

    folder = out / "eval"
    ecfg = EhrEvalConfig(data=str(data), runs=[str(p) for p, _ in finetuned.values()], output_dir=str(folder),
                         baseline=cfg.eval.baseline, min_positives=cfg.eval.min_positives, n_boot=cfg.eval.n_boot,
                         rare_k=cfg.eval.rare_k, batch_size=cfg.eval.batch_size,
                         max_per_subject=cfg.eval.max_per_subject)
    key = settings_key({"eval": to_dict(cfg.eval), "runs": sorted(k for _, k in finetuned.values()), "data": data_key})
    def work():
        import torch

        torch.set_num_threads(cfg.finetune.threads * cfg.workers)  # scoring alone gets the trainings' cores
        evaluate(ecfg)

    stages.run("eval", "eval", folder, key, work)
    return folder


def medfuse_stage(cfg: EhrPipelineConfig, meds: Path, data_key: str, medtok: str | None, medtok_key: str,
                  out: Path, stages: Stages) -> Path | None:
    """MedFuse's fusion ablation and baselines on the pipeline's MEDS folder; None when not enabled."""
    if not cfg.medfuse.enabled:
        return None
    from ehr.medfuse.run import evaluate_medfuse

    folder = out / "medfuse"
    if medfuse_needs_medtok(cfg) and not medtok:
        raise ConfigError(f"medfuse.model.code_embedding {cfg.medfuse.model.code_embedding} needs a MedTok artifact "
                          "and none was given or trained; pass medtok_artifact PATH, set medtok_train true, or "
                          "use medfuse.model.code_embedding learned")
    ecfg = cfg.medfuse.eval_config(cfg.data, list(cfg.seeds), str(folder), str(meds), medtok)
    key = settings_key({"medfuse": to_dict(replace(ecfg, output_dir="", cohort=replace(ecfg.cohort, meds_dir=""))),
                        "data": data_key, "medtok": medtok_key if medfuse_needs_medtok(cfg) else ""})
    stages.run("medfuse", "medfuse", folder, key, lambda: evaluate_medfuse(ecfg))
    return folder


def check_inputs(cfg: EhrPipelineConfig) -> None:
    """What the user named must exist before anything is written."""
    if cfg.data.meds_dir and cfg.data.fhir_dir:
        raise ConfigError("pass data.meds_dir or data.fhir_dir, not both")
    if cfg.data.fhir_dir and not Path(cfg.data.fhir_dir).is_dir():
        raise DataFileError(f"data.fhir_dir {cfg.data.fhir_dir} is not a folder; pass clinosim's fhir_r4 folder")
    if cfg.data.meds_dir and not Path(cfg.data.meds_dir).is_dir():
        raise DataFileError(f"data.meds_dir {cfg.data.meds_dir} is not a folder; pass a MEDS folder "
                            "(data/*.parquet, metadata/)")
    if cfg.medtok_artifact:
        from medtok_core.artifact import find_artifact

        find_artifact(cfg.medtok_artifact)
    if cfg.page and not cfg.publish:
        raise ConfigError("page needs publish: the page links to the published files")
    if (medfuse_needs_medtok(cfg) and not cfg.medtok_artifact and not cfg.medtok_train
            and not (QA_PIPELINE_ARTIFACT / "config.json").is_file()):
        raise ConfigError(f"medfuse.model.code_embedding {cfg.medfuse.model.code_embedding} needs a MedTok artifact: "
                          "pass medtok_artifact PATH or set medtok_train true")


def run_pipeline(cfg: EhrPipelineConfig, config_file: str = "") -> dict:
    from recipes.ehr_report import write_outputs

    check_inputs(cfg)
    out = Path(cfg.output)
    check_writable_dir(out, "--output")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    stages = Stages(cfg, out)
    data, data_key, meds = data_stage(cfg, out, stages)
    medtok, medtok_key = medtok_stage(cfg, out, stages)
    finetuned = train_all(cfg, planned_runs(cfg, medtok), data, data_key, medtok, medtok_key, out, stages)
    evaluation = eval_stage(cfg, data, finetuned, data_key, out, stages)
    medfuse = medfuse_stage(cfg, meds, data_key, medtok, medtok_key, out, stages)
    left_out = sorted({v for vs in cfg.runs.values() for v in vs if needs_medtok(v)}) if not medtok else []
    summary = write_outputs(cfg, out, data, evaluation, {r: p for r, (p, _) in finetuned.items()}, stages.timings,
                            medtok, left_out, time.perf_counter() - t0, config_file, medfuse)
    print(f"ehr pipeline: {out}/report.md ({len(finetuned)} finetuned models, "
          f"{summary['timings']['total_stage_seconds']:.0f} s of stage time in all)")
    return summary


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(EhrPipelineConfig, argv, prog="medtok-qa ehr pipeline")
    config_file = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"), "")
    from commons.runlock import run_lock

    check_writable_dir(Path(cfg.output), "--output")
    with run_lock(cfg.output, "medtok-qa ehr pipeline"):  # two pipelines in one folder would train over each other
        return run_pipeline(cfg, config_file)

"""``medtok-qa ehr <step>``: the EHR path, one step per sub-command (each takes --help, --config,
--print_config and the one-line ``error:`` contract like every other command).

    medtok-qa ehr convert   --fhir_dir /tmp/cs/fhir_r4 --output meds/          # clinosim FHIR -> MEDS
    medtok-qa ehr data      --output_dir runs/ehr/data [--meds_dir MEDS --source mimic_iv]
    medtok-qa ehr pretrain  --data runs/ehr/data --output_dir runs/ehr/pre --model.backbone mamba
    medtok-qa ehr finetune  --data runs/ehr/data --init runs/ehr/pre --output_dir runs/ehr/mpf
    medtok-qa ehr eval      --data runs/ehr/data --runs runs/ehr/mpf --output_dir runs/ehr/eval
    medtok-qa ehr pipeline  --config configs/ehr_demo.yaml                   # all of the above, resumable

Without --meds_dir (and --fhir_dir), ``data`` uses clinosim's cohort, generated once per parameters
under the cache dir. A MEDS folder in MIMIC-IV's shape runs through the same commands with
``--source mimic_iv``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from commons.config import COMMAND_NAME, parse_config, save_config
from commons.errors import ConfigError, cli_entry
from commons.io import check_writable_dir
from ehr.data import DataOptions, prepare, value_bins_line
from ehr.evaluate import EhrEvalConfig, evaluate


@dataclass
class ConvertConfig:
    """Convert clinosim's FHIR R4 output to a MEDS folder."""

    fhir_dir: str = ""  # clinosim's fhir_r4 folder (clinosim simulate ... --format fhir-r4)
    output: str = ""  # the MEDS folder to write
    dataset_name: str = "clinosim (synthetic)"
    seed: int = 0  # the subject split's seed


def convert_main(argv: list[str]) -> Path:
    from ehr.clinosim import convert_fhir

    cfg = parse_config(ConvertConfig, argv, prog="medtok-qa ehr convert")
    if not cfg.fhir_dir or not cfg.output:
        raise ConfigError("--fhir_dir and --output are required")
    check_writable_dir(cfg.output, "--output")
    out = convert_fhir(cfg.fhir_dir, cfg.output, cfg.dataset_name, seed=cfg.seed)
    print(f"ehr convert: MEDS folder {out}")
    return out


def data_main(argv: list[str]) -> dict:
    from ehr.clinosim import cached_cohort, convert_fhir

    cfg = parse_config(DataOptions, argv, prog="medtok-qa ehr data")
    out = Path(cfg.output_dir)
    check_writable_dir(out, "--output_dir")
    if cfg.meds_dir and cfg.fhir_dir:
        raise ConfigError("pass --meds_dir or --fhir_dir, not both")
    meds_dir = Path(cfg.meds_dir) if cfg.meds_dir else out.parent / f"{out.name}_meds"
    if not cfg.meds_dir:
        fhir = Path(cfg.fhir_dir) if cfg.fhir_dir else cached_cohort(
            cfg.clinosim_population, cfg.clinosim_seed, cfg.clinosim_start, cfg.clinosim_end)
        convert_fhir(fhir, meds_dir, f"clinosim p={cfg.clinosim_population} s={cfg.clinosim_seed} (synthetic)",
                     seed=cfg.seed)
    summary = prepare(cfg, meds_dir, out)
    save_config(cfg, out / "config.yaml")
    mapping = summary["mapping"]
    print(f"ehr data: {out} ({summary['samples']} sequences; {mapping['mapped_codes']}/{mapping['codes']} codes "
          f"mapped to MedTok, unmapped by reason in mapping_report.json)")
    if value_bins_line(summary):
        print(f"  {value_bins_line(summary)}")
    for task, p in summary["positives"].items():
        print(f"  {task}: held_out {p['held_out']['positives']}/{p['held_out']['samples']} positive"
              + ("" if p["estimable"] else " (not estimable)"))
    return summary


def _train(stage: str):
    def run(argv: list[str]) -> Path:
        from ehr.train import EhrTrainConfig, train

        cfg = parse_config(EhrTrainConfig, list(argv) + ["--stage", stage], prog=f"medtok-qa ehr {stage}")
        if not cfg.data:
            raise ConfigError("--data is required: a prepared folder from `medtok-qa ehr data`")
        check_writable_dir(cfg.output_dir, "--output_dir")
        out = train(cfg)
        print(f"{stage}: {out}/model.safetensors ({cfg.model.backbone} backbone, {cfg.model.code_embedding} codes)")
        return out
    return run


def _medfuse(step: str):
    """MedFuse (irregular lab series, MuFuse fusion): train one run, evaluate every fusion and baseline
    over seeds, or the cross-cohort transfer of feature embeddings."""
    def run(argv: list[str]):
        from ehr.medfuse.run import MedFuseConfig, MedFuseEvalConfig, evaluate_medfuse, train_medfuse
        from ehr.medfuse.transfer import TransferConfig, transfer_experiment

        config, function = {"medfuse-train": (MedFuseConfig, train_medfuse),
                            "medfuse-eval": (MedFuseEvalConfig, evaluate_medfuse),
                            "medfuse-transfer": (TransferConfig, transfer_experiment)}[step]
        result = function(parse_config(config, argv, prog=f"medtok-qa ehr {step}"))
        print(f"ehr {step}: {result if isinstance(result, Path) else 'done'}")
        return result
    return run


STEPS = {"convert": (convert_main, "clinosim FHIR R4 output -> a MEDS folder"),
         "data": (data_main, "MEDS (or the cached synthetic cohort) -> prepared sequences, labels, reports"),
         "pretrain": (_train("pretrain"), "next-token pretraining of EhrMamba"),
         "finetune": (_train("finetune"), "multitask prompted finetuning (one head, task tokens)"),
         "eval": (lambda argv: eval_main(argv), "AUROC/AUPRC/F1 per task with patient-bootstrap CIs, rare-code slice, baseline"),
         "medfuse-train": (_medfuse("medfuse-train"), "MedFuse on lab triplets (MuFuse / additive / concat fusion)"),
         "medfuse-eval": (_medfuse("medfuse-eval"), "MedFuse fusions, GRU and gradient boosting over seeds, with CIs"),
         "medfuse-transfer": (_medfuse("medfuse-transfer"), "cross-cohort transfer of MedFuse feature embeddings"),
         "pipeline": (lambda argv: pipeline_main(argv), "the whole path as a resumable preset: data -> pretrain -> "
                      "finetune per variant x backbone x seed -> eval -> report (recipes/ehr_pipeline.py)")}


def pipeline_main(argv: list[str]) -> dict:
    from recipes.ehr_pipeline import main

    return main(argv)


def usage() -> str:
    return ("usage: medtok-qa ehr <step> [--option value ...]\n\nsteps:\n"
            + "\n".join(f"  {k:<9} {v[1]}" for k, v in STEPS.items())
            + "\n\n`medtok-qa ehr <step> --help` lists a step's options. Numbers on the synthetic cohort "
              "measure the software, not medicine.")


def eval_main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(EhrEvalConfig, argv, prog="medtok-qa ehr eval")
    if not cfg.data:
        raise ConfigError("--data is required: the prepared folder the runs were trained on")
    check_writable_dir(cfg.output_dir, "--output_dir")
    results = evaluate(cfg)
    print(f"ehr eval: {cfg.output_dir}/report.md ({len(results)} methods)")
    return results


@cli_entry
def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0)  # as every command's --help does
    step, rest = argv[0], argv[1:]
    if step not in STEPS:
        raise ConfigError(f"unknown ehr step {step!r}; steps: {', '.join(STEPS)}")
    token = COMMAND_NAME.set(f"medtok-qa ehr {step}")  # what the step's --help calls it
    try:
        return STEPS[step][0](rest)
    finally:
        COMMAND_NAME.reset(token)


if __name__ == "__main__":
    main()

"""EHR models over patient timelines in MEDS (issue 27): the data layer shared by EhrMamba and MedFuse.

Layer: beside ``qa`` (may import ``medtok_core``; ``qa`` never imports it, tests/test_layers.py).

    ehr.meds          MEDS folders: schema (from the ``meds`` package), lazy per-shard reading, writing
    ehr.clinosim      clinosim's synthetic cohort (FHIR R4 NDJSON) -> MEDS
    ehr.code_maps     MEDS code string -> MedTok ``SYSTEM:code``, one plug-in per source, unmapped report
    ehr.tasks         task labels from declared (ACES-style) task definitions, no look-ahead
    ehr.splits        the subject splits (MEDS' own file, else a seeded hash split)

Numbers on the synthetic cohort measure the software, not medicine.
"""

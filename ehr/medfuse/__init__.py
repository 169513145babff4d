"""MedFuse (issue 28): irregular clinical time series as (feature, value, time) triplets, fused by
MuFuse (value-conditioned multiplication of feature-identity and value embeddings), a time embedding
added, categorical events as code tokens, a standard Transformer encoder and a classification head.

Built on the EHR data layer (``ehr.meds``, ``ehr.tasks``, ``ehr.splits``, ``ehr.code_maps``,
``ehr.code_embeddings``): no second MEDS reader, no second task-label path.

    ehr.medfuse.triplets    MEDS rows -> triplets; windowing and summarisation; train-only normalisation
    ehr.medfuse.fusion      fusion plug-ins by name: mufuse, additive, concat (the ablation)
    ehr.medfuse.model       MedFuse and the GRU baseline over the same tokens
    ehr.medfuse.baselines   histogram gradient boosting on per-window aggregates
    ehr.medfuse.metrics     AUPRC, AUROC, accuracy with bootstrap intervals over patients
    ehr.medfuse.run         typed configs and the entry points ``train_medfuse`` / ``evaluate_medfuse``

Numbers on the synthetic cohort measure the software, not medicine.
"""

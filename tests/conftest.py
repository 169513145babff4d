"""Test-session setup: offline, temporary caches, few threads (CI machine has 2 cores)."""

import os
import tempfile

_session_tmp = tempfile.mkdtemp(prefix="medtok-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_session_tmp, "hf")
os.environ.setdefault("MEDTOK_CACHE_DIR", os.path.join(_session_tmp, "cache"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # Dataset.map's bars would fill the test output

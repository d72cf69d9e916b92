"""The one door between the workbench and `sae/`: a worker thread that owns the model and SAEs (`worker`), the
engine the app holds (`core`), and the frozen views it returns (`views`).

Screens import from here and never from `sae/`; the domain methods are thin wrappers around `sae/` functions:
the workbench draws their results and never computes science itself.
"""

from sae.engine.errors import AttnscopeError
from sae.engine.safe_io import OutputError, swap_dir
from sae.engine.safe_text import plain, visible, xml_clean  # user text, never markup (the one escaping home)
from sae.engine.names import density_text, head_name
from workbench.engine.core import (
    QUICK_RUNS, Engine, existing_run, free_run_dir, full_run_sizes, sae_dir_candidates, saved_run_form,
)
from workbench.engine.views import (
    CellDetail,
    DashboardView,
    EngineInfo,
    ExampleView,
    ExperimentView,
    FormField,
    HeadFeatureView,
    HeadsView,
    HeadView,
    HistogramView,
    InductionHeadView,
    InductionView,
    PromptView,
    ProxyView,
    QuantileView,
    SourceView,
    StudyView,
    TraceNodeView,
    TraceView,
    train_form_fields,
)
from workbench.engine.worker import (
    Cancelled,
    EngineError,
    JobHandle,
    Reporter,
    StaleRequest,
    Worker,
    bug_log_path,
    one_line,
    record_bug,
)

__all__ = [
    "AttnscopeError", "Cancelled", "CellDetail", "DashboardView", "Engine", "EngineError", "EngineInfo",
    "ExampleView", "ExperimentView", "HeadFeatureView", "HeadView", "HeadsView", "HistogramView", "InductionHeadView",
    "InductionView", "JobHandle", "PromptView", "ProxyView", "QuantileView", "Reporter", "SourceView", "StaleRequest", "StudyView",
    "TraceNodeView", "TraceView", "Worker", "one_line", "sae_dir_candidates", "FormField", "train_form_fields",
    "bug_log_path", "record_bug", "plain", "visible", "xml_clean", "OutputError",
    "swap_dir", "existing_run", "free_run_dir",
    "head_name", "density_text", "QUICK_RUNS", "full_run_sizes", "saved_run_form",
]

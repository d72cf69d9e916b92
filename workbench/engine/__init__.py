"""The one door between the workbench and `sae/`: a worker thread that owns the model and SAEs (`worker`), the
engine the app holds (`core`), and the frozen views it returns (`views`).

Screens import from here and never from `sae/`; the domain methods are thin wrappers around `sae/` functions:
the workbench draws their results and never computes science itself.
"""

from sae.engine.errors import AttnscopeError
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
    PromptView,
    QuantileView,
    SourceView,
    TraceNodeView,
    TraceView,
    train_form_fields,
)
from workbench.engine.worker import Cancelled, EngineError, JobHandle, Reporter, StaleRequest, Worker, one_line

__all__ = [
    "AttnscopeError", "Cancelled", "CellDetail", "DashboardView", "Engine", "EngineError", "EngineInfo",
    "ExampleView", "ExperimentView", "HeadFeatureView", "HeadView", "HeadsView", "HistogramView", "JobHandle",
    "PromptView", "QuantileView", "Reporter", "SourceView", "StaleRequest", "TraceNodeView", "TraceView", "Worker",
    "one_line", "sae_dir_candidates", "existing_run", "free_run_dir", "head_name", "density_text", "QUICK_RUNS", "full_run_sizes", "saved_run_form", "FormField", "train_form_fields",
]

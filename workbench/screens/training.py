"""Train SAEs from the workbench: a form, live sparklines, stop and resume from checkpoint, open the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual import on
from textual.widgets import Input, Label, ProgressBar, Select, Static

from workbench.widgets.footer import WorkbenchFooter
from workbench.engine import existing_run, free_run_dir, one_line, saved_run_form, train_form_fields
from workbench.findings import Finding, md_table
from workbench.messages import JobCancelled, JobFinished, JobProgress, JobStarted
from workbench.screens.base import NavBar, StatusLine
from workbench.screens.jobs import JobScreen
from workbench.screens.modals import AskScreen
from workbench.widgets.sparklines import MetricSpark, spark_text

METRICS = [("loss", "{:.4g}"), ("l0", "{:.1f}"), ("explained_variance", "{:.3f}"), ("dead_fraction", "{:.2%}")]

# the form's TrainConfig fields: labels, help (tooltips) and defaults come from TrainConfig itself
FORM_FIELDS = train_form_fields(["layers", "architecture", "d_sae", "l1_coeff", "k", "total_tokens", "batch_size"])
SPARSITY = {"topk": "k", "standard": "l1_coeff"}


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def parse_layers(text: str, n_layers: int | None) -> list[int]:
    """'0,2' or '0-2' or 'all' -> sorted layers; ValueError with one line for anything else."""
    text = text.strip()
    if not text:
        raise ValueError("give at least one layer (e.g. 0,1 or 0-2 or all)")
    if text == "all":
        if n_layers is None:
            raise ValueError("the model is not open yet")
        return list(range(n_layers))
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                out.update(range(int(a), int(b) + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"{part!r} is not a layer number") from None
    if n_layers is not None:
        bad = [x for x in sorted(out) if not 0 <= x < n_layers]
        if bad:
            raise ValueError(f"layer {bad[0]} is outside the model (layers 0..{n_layers - 1})")
    return sorted(out)


NOTE_WORDS = {"checkpoint": "checkpoint saved", "diverged": "diverged"}


def progress_status(p: Any) -> str:
    """'step 51/58 · loss 0.123' — the stage and the first metric; internal event names are not shown."""
    parts = [p.stage] if p.stage else []
    note = NOTE_WORDS.get(p.note, p.note if " " in p.note else "")  # a sentence is for the user; a bare word is not
    if note:
        parts.append(note)
    loss = p.metrics.get("loss") if p.metrics else None
    if loss is not None:
        parts.append(f"loss {loss:.4g}")
    return " · ".join(parts)


class TrainingScreen(JobScreen):
    MODE = "training"
    JOB_KIND = "train"
    BINDINGS = [
        Binding("r", "start", "Start", show=True),
        Binding("x", "cancel", "Stop", show=True),
        Binding("u", "resume", "Resume", show=True),
        Binding("o", "open_result", "Open SAEs", show=True),
        Binding("escape", "leave_field", "Leave field", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, Any]] = []
        self.last_info: Any = None  # the last Progress
        self.result: dict[int, Any] | None = None
        self.out_dir: str = ""

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Horizontal(id="train-body"):
            with Grid(id="train-form"):
                F = FORM_FIELDS
                arch = F["architecture"]
                yield Label("layers")
                yield Input("0", id="tr-layers", compact=True, tooltip=F["layers"].help)
                yield Label(arch.label)
                yield Select([(c, c) for c in arch.choices], value=arch.default, allow_blank=False, id="tr-arch",
                             compact=True, tooltip=arch.help)
                yield Label("width (d_sae)")
                yield Input(F["d_sae"].default, id="tr-width", type="integer", compact=True,
                            placeholder="8 x d_in", tooltip=F["d_sae"].help)
                sp = F[SPARSITY[arch.default]]
                yield Label("L1 coeff / k")
                yield Input(sp.default, id="tr-sparsity", compact=True, tooltip=sp.help)
                yield Label("tokens")
                yield Input(F["total_tokens"].default, id="tr-tokens", type="integer", compact=True,
                            tooltip=F["total_tokens"].help)
                yield Label("batch")
                yield Input(F["batch_size"].default, id="tr-batch", type="integer", compact=True,
                            tooltip=F["batch_size"].help)
                yield Label("corpus")
                yield Input("default", id="tr-corpus", compact=True)
                yield Label("output dir")
                yield Input(str(Path("runs") / "workbench"), id="tr-out", compact=True)
            with Vertical(id="train-live"):
                for name, fmt in METRICS:
                    yield MetricSpark(name, fmt, id=f"spark-{name}")
                yield Static("", id="train-rate")
        yield StatusLine("fill the form; r starts, x stops (checkpoint kept), u resumes, o opens the result", id="train-status")
        yield ProgressBar(total=1, id="train-progress", show_eta=False)
        yield WorkbenchFooter()

    def help_about(self) -> str:
        return "Trains one SAE per layer from one model pass per batch (sae.engine.training.loop). Metrics are the first layer's."

    # ---- form -----------------------------------------------------------------------------------------

    def read_form(self) -> dict[str, Any]:
        """The form as train_saes arguments; ValueError with one line for bad input (nothing is cleared)."""
        info = self.engine.info
        get = lambda i: self.query_one(f"#{i}", Input).value.strip()  # noqa: E731
        layers = parse_layers(get("tr-layers"), info.n_layers if info else None)
        arch = str(self.query_one("#tr-arch", Select).value)
        values: dict[str, Any] = {"layers": layers, "architecture": arch}
        for key, wid in (("d_sae", "tr-width"), ("total_tokens", "tr-tokens"), ("batch_size", "tr-batch")):
            text = get(wid)
            if key == "d_sae" and not text:
                continue  # TrainConfig's default: expansion x d_in
            if not text.isdigit() or int(text) <= 0:
                raise ValueError(f"{key} must be a whole number > 0, got {text!r}")
            values[key] = int(text)
        sp = get("tr-sparsity")
        try:
            if arch == "topk":
                values["k"] = int(sp)
            else:
                values["l1_coeff"] = float(sp)
        except ValueError:
            raise ValueError(f"{'k' if arch == 'topk' else 'L1 coefficient'} must be a number, got {sp!r}") from None
        values["corpus"] = get("tr-corpus") or "default"
        out = get("tr-out")
        if not out:
            raise ValueError("give an output directory")
        values["out_dir"] = out
        return values

    def on_mount(self) -> None:
        saved = self.wb.session.get("training_form")  # the form of the last run started, from an earlier launch too
        if isinstance(saved, dict):
            self.restore_form(saved)

    FORM_INPUTS = ("tr-layers", "tr-width", "tr-sparsity", "tr-tokens", "tr-batch", "tr-corpus", "tr-out")

    def form_values(self) -> dict[str, str]:
        """The form as typed (remembered across launches when a run starts)."""
        out = {i: self.query_one(f"#{i}", Input).value for i in self.FORM_INPUTS}
        out["tr-arch"] = str(self.query_one("#tr-arch", Select).value)
        return out

    def restore_form(self, saved: dict[str, Any]) -> None:
        """Put a remembered form back: the architecture first, the fields once its change has been handled."""
        arch = saved.get("tr-arch")
        select = self.query_one("#tr-arch", Select)
        if isinstance(arch, str) and arch in FORM_FIELDS["architecture"].choices:
            select.value = arch

        def fields() -> None:
            for i in self.FORM_INPUTS:
                if isinstance(saved.get(i), str):
                    self.query_one(f"#{i}", Input).value = saved[i]

        self.call_after_refresh(fields)

    @on(Select.Changed, "#tr-arch")
    def arch_changed(self, event: Select.Changed) -> None:
        """Swap the sparsity field between the two architectures' defaults unless the user typed their own."""
        field = self.query_one("#tr-sparsity", Input)
        defaults = {arch: FORM_FIELDS[name].default for arch, name in SPARSITY.items()}
        if field.value in defaults.values():
            field.value = defaults.get(str(event.value), field.value)

    def action_start(self, resume: bool = False) -> None:
        status = self.query_one(StatusLine)
        if self.job_running():
            status.error("a run is going: x stops it")
            return
        try:
            form = self.read_form()
        except ValueError as exc:
            status.error(one_line(exc))
            return
        self.wb.session.put("training_form", self.form_values())
        out_dir = form.pop("out_dir")
        corpus = form.pop("corpus")
        if resume and not (Path(out_dir).expanduser() / "checkpoint.pt").exists():
            status.error(f"no checkpoint in {out_dir} to resume from")
            return
        if not resume and existing_run(out_dir):
            self.ask_new_dir(out_dir)
            return
        job = self.attempt(self.engine.train, form, corpus=corpus, out_dir=out_dir, resume=resume, post=self.post_message)
        if job is None:
            return
        self.out_dir = out_dir
        if not resume:
            self.history = []
            for name, _ in METRICS:
                self.query_one(f"#spark-{name}", MetricSpark).reset()
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.stopped_note = ""
        self.started(job, ("resuming" if resume else "starting") + f" training into {out_dir} ...")

    def ask_new_dir(self, out_dir: str) -> None:
        """`out_dir` holds a run: never overwrite it; offer the next free directory (the user may type another)."""

        def check(path: str) -> str | None:
            path = path.strip()
            if not path:
                return "give an output directory"
            held = existing_run(path)
            return f"{path} holds a training run too ({held}); pick another" if held else None

        def done(path: str | None) -> None:
            if path is None:
                self.query_one(StatusLine).say(f"not started: {out_dir} keeps its run · u resumes it")
                return
            self.query_one("#tr-out", Input).value = path.strip()
            self.action_start()

        question = (f"{out_dir} already holds a training run ({existing_run(out_dir)}); it is kept. "
                    "Train into a new directory:")
        self.app.push_screen(AskScreen(question, value=free_run_dir(out_dir), check=check), done)

    def action_resume(self) -> None:
        """Resume the run in the output dir with its own saved settings, shown in the form first (a relaunched
        workbench's form holds the defaults, not the run's)."""
        if self.job_running():
            self.query_one(StatusLine).error("a run is going: x stops it")
            return
        out = self.query_one("#tr-out", Input).value.strip()
        if out and (Path(out).expanduser() / "checkpoint.pt").exists():
            saved = self.attempt(saved_run_form, out)  # a damaged config: inline
            if saved is None:
                return
            self.fill_form(saved)
        self.action_start(resume=True)

    def fill_form(self, values: dict[str, str]) -> None:
        """Put a run's saved settings into the form (architecture first: it swaps the sparsity field)."""
        select = self.query_one("#tr-arch", Select)
        with select.prevent(Select.Changed):
            select.value = values["architecture"]
        for key, wid in (("layers", "tr-layers"), ("d_sae", "tr-width"), ("sparsity", "tr-sparsity"),
                         ("total_tokens", "tr-tokens"), ("batch_size", "tr-batch"), ("corpus", "tr-corpus")):
            self.query_one(f"#{wid}", Input).value = values[key]

    def action_open_result(self) -> None:
        if not self.result:
            self.query_one(StatusLine).error("no finished run to open yet")
            return
        self.run_worker(self._open_result(), group="open-result", exclusive=True)

    async def _open_result(self) -> None:
        info = await self.ask(self.engine.use_saes(self.result, label=self.out_dir))
        if info is None:
            return
        self.wb.engine_ready(info)
        self.wb.set_layer(info.sae_layers[0])

    # ---- live ---------------------------------------------------------------------------------------

    def on_job_started(self, m: JobStarted) -> None:
        if self.is_mine(m):
            m.prevent_default()
            self.query_one(StatusLine).say("preparing tokens and the first batches ...")

    def on_job_progress(self, m: JobProgress) -> None:
        if not self.is_mine(m):
            return
        p = m.progress  # Progress(job="train", unit="tokens", stage="step s/S", metrics={loss, l0, ...})
        self.last_info = p
        if p.total > 0:
            self.query_one(ProgressBar).update(total=p.total, progress=p.done)
        if p.metrics:
            self.history.append(dict(p.metrics))
            for name, _ in METRICS:
                if name in p.metrics:
                    self.query_one(f"#spark-{name}", MetricSpark).push(p.metrics[name])
        text = Text(f"{p.done:,.0f} / {p.total:,.0f} {p.unit}\n")
        # Progress.rate counts only this run's tokens (not those restored from a checkpoint); the ETA follows it
        eta = (p.total - p.done) / p.rate if p.rate and p.total > p.done else p.eta_s
        text.append(f"{p.rate or 0.0:,.0f} {p.unit}/s in this run · ETA {format_eta(eta)}", style="dim")
        self.query_one("#train-rate", Static).update(text)
        if not self.job.cancelled:  # after x the status keeps saying that it is stopping
            self.query_one(StatusLine).say(progress_status(p))

    def on_job_finished(self, m: JobFinished) -> None:
        if not self.is_mine(m):
            return
        self.result = m.result
        self.query_one(ProgressBar).update(total=1, progress=1)
        self.query_one(StatusLine).say(f"finished: SAEs for layers {sorted(m.result)} in {self.out_dir} · o opens them")

    def on_job_cancelled(self, m: JobCancelled) -> None:
        if not self.is_mine(m):
            return
        m.prevent_default()  # JobScreen's generic "cancelled" must not overwrite what follows
        if m.partial:
            self.result = m.partial
        self.query_one(ProgressBar).update(total=1, progress=self.last_info.fraction if self.last_info else 0)
        self.query_one(StatusLine).say(f"stopped; checkpoint kept in {self.out_dir} · u resumes, o opens what it has")

    def current_finding(self) -> Finding | None:
        if not self.history:
            return None
        last = self.history[-1]
        rows = [[k, last[k]] for k, _ in METRICS if k in last]
        body = md_table(["metric", "last"], rows) + "\n\n```text\n" + "\n".join(
            f"{k:<20} {spark_text([h.get(k) for h in self.history if k in h], 60)}" for k, _ in METRICS
        ) + "\n```"
        return Finding(kind="training", title=f"training run {self.out_dir}", body=body,
                       model=self.engine.info.model if self.engine.info else "", data={"last": last})

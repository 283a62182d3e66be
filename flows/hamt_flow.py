"""The HAMT pipeline as a Metaflow flow (the same stage functions as ``dvc repro``, plus branching and cards).

    start -> download -> tokenize -> validate_small -> train --(primary_ok | fallback)--> register_model
          -> train_model (foreach: hamt.zoo.training_plan) -> train_join -> plan_compare
          -> compare (foreach: HAMT, each baseline, each ablation) -> compare_join -> report -> end

Parameters come from ``params.yaml`` through the Config ``cfg`` (the single source of truth); the run's
profile and ``--set``-style overrides are the only Parameters, and neither repeats a default:

    python flows/hamt_flow.py run                                 # params.yaml's profile
    python flows/hamt_flow.py run --profile micro --overrides "train.max_steps=50;data.source=local"
    python flows/hamt_flow.py --config cfg other.yaml run         # another parameter file

Training: the primary profile (``fallback.primary_profile``) trains in a child ``hamt train`` — under
``torchrun --standalone --nproc_per_node N`` when HAMT_NPROC_PER_NODE (default: every visible GPU) is
above 1. Its own ladder handles OOM and divergence; if the run still fails (ladder exhausted, divergence
retries used up, a crash), the ``fallback`` branch trains ``fallback.fallback_profile``. The branch taken
and why are artifacts (``train_branch``, ``branch_reason``) and on the cards. To force the primary to fail:
``HAMT_PRIMARY_FAULTS=nan@1,nan@1,nan@1,nan@1`` (see flows/orchestration.py). The other models of the
comparison (``compare.trained``: the from-scratch baselines, the ablations — the list dvc.yaml's train
foreach runs) are then trained side by side with the trained profile's parameters, one ``train_model`` task
each (``hamt train --model NAME``; the HAMT task reuses the branch's model); ``compare`` only evaluates.

Every step runs in the repository root (or HAMT_WORKDIR), so it reads and writes the same data/,
checkpoints/ and results/ as ``dvc repro``; the end step runs ``dvc commit -f`` when the run's parameters
equal params.yaml's, so DVC then sees the flow's outputs as up to date. torch and hamt are imported
inside the steps: each step is a new process. A user error (bad overrides, no data, a missing checkpoint)
ends the command in one line, repeated last, without a traceback unless HAMT_DEBUG=1 (flows/launch.py).
"""

import os

import cards
import orchestration as orc
from launch import default_user, main, user_errors

orc.pin_local_datastore()  # before metaflow is imported: runs and cards both under <workdir>/.metaflow
default_user()  # a user name Metaflow accepts when the environment has none (root, CI runners)

from metaflow import Config, FlowSpec, Parameter, card, current, resources, retry, step, yaml_parser  # noqa: E402

CARD = {"type": "blank"}


class HAMTFlow(FlowSpec):
    """HAMT: download, tokenize, validate, train (with a fallback profile), compare against baselines, report."""

    cfg = Config("cfg", default=orc.default_params_path(), parser=yaml_parser,
                 help="the parameter file (default: params.yaml of the repository)")
    profile = Parameter("profile", default="", help="profile of the parameter file to run (default: its `profile` key)")
    overrides = Parameter("overrides", default="",
                          help="';'-separated SECTION.KEY=VALUE overrides, as `hamt --set` (e.g. 'train.lr=1e-3;train.max_steps=50')")

    def _params(self, train_profile=None):
        """This run's resolved parameters (``train_profile``: that profile's training sections)."""
        return orc.resolve(self.cfg, self.profile, orc.parse_overrides(self.overrides), train_profile)

    def _trained_params(self):
        return self._params(self.trained_profile)

    @card(**CARD)
    @step
    @user_errors
    def start(self):
        """Resolve and validate the parameters once; record them with the code version."""
        from metaflow.cards import Markdown

        self.workdir = str(orc.enter_workdir())
        params = self._params()
        params.model_config()  # the model section is valid before any work starts (imports transformers)
        self.run_profile = params.profile
        self.override_list = orc.parse_overrides(self.overrides)
        self.resolved_params = params.to_dict()
        self.primary_profile = params.fallback.primary_profile
        self.fallback_profile = params.fallback.fallback_profile
        self._params(self.primary_profile)  # both training profiles resolve, or the run stops here
        self._params(self.fallback_profile)
        self.git = orc.git_info(orc.workdir())
        self.versions = orc.versions()
        current.card.append(Markdown(
            f"# HAMT run {current.run_id}\n\nprofile **{self.run_profile}**, primary **{self.primary_profile}**, "
            f"fallback **{self.fallback_profile}**; overrides `{self.override_list}`; git `{self.git['commit']}`"
            f"{' (dirty)' if self.git['dirty'] else ''}; workdir `{self.workdir}`"))
        current.card.append(cards.table([{"package": k, "version": v} for k, v in self.versions.items()]))
        current.card.append(Markdown("## Resolved parameters\n\n" + cards.yaml_block(self.resolved_params)))
        self.next(self.download)

    @retry(times=2, minutes_between_retries=1)  # the hub can fail transiently
    @card(**CARD)
    @step
    @user_errors
    def download(self):
        """Raw text into data/raw (hub, local folder or the generated corpus); the manifest pins each split by sha256."""
        from metaflow.cards import Markdown

        from hamt.data import corpus_description, download

        orc.enter_workdir()
        self.data_manifest = download(self._params())
        self.data_sha256 = {s: v["sha256"] for s, v in self.data_manifest["splits"].items()}
        self.corpus = corpus_description(self.data_manifest)
        current.card.append(Markdown(f"## Data: {self.corpus}"))
        current.card.append(cards.table([{"split": s, **v} for s, v in self.data_manifest["splits"].items()]))
        current.card.append(Markdown("Source:\n\n" + cards.yaml_block(self.data_manifest.get("source"))))
        self.next(self.tokenize)

    @card(**CARD)
    @step
    @user_errors
    def tokenize(self):
        """Train or load the tokenizer; memmapped token ids in data/tokens."""
        from pathlib import Path

        from hamt.io import dir_sha256
        from hamt.tokenize import tokenize

        orc.enter_workdir()
        params = self._params()
        self.tokenizer_meta = tokenize(params, progress=False)
        self.tokenizer_identity = {**self.tokenizer_meta["tokenizer"], "vocab_size": self.tokenizer_meta["vocab_size"],
                                   "sha256": self.tokenizer_meta["tokenizer_sha256"]}
        self.tokens_sha256 = dir_sha256(Path(params.tokenizer.tokens_dir))
        current.card.append(cards.table([{"split": s, **v} for s, v in self.tokenizer_meta["splits"].items()]))
        current.card.append(cards.table([{"tokenizer": k, "value": v} for k, v in self.tokenizer_identity.items()]))
        self.next(self.validate_small)

    @card(**CARD)
    @step
    @user_errors
    def validate_small(self):
        """A short small-model run must pass (loss falls, finite, generates, recalls) before the expensive one."""
        from metaflow.cards import Markdown

        from hamt.validate import validate_small

        orc.enter_workdir()
        self.validation = validate_small(self._params())
        checks = [{"check": k, "passed": c["passed"], "detail": c["detail"]} for k, c in self.validation["checks"].items()]
        current.card.append(Markdown(f"## Validation {'passed' if self.validation['passed'] else 'FAILED'}"))
        current.card.append(cards.table(checks))
        if not self.validation["passed"]:
            raise orc.PipelineStopped(
                "validate_small failed, so the expensive training was not started: "
                + "; ".join(self.validation["reasons"])
                + ". Details in results/validate/metrics.json; fix the cause (or the validate section) and re-run.")
        self.next(self.train)

    @resources(gpu=orc.env_int("HAMT_TRAIN_GPUS"), memory=16000, cpu=4)
    @retry(times=1)  # a lost machine: the retry resumes from the newest checkpoint
    @card(refresh_interval=5, **CARD)
    @step
    @user_errors
    def train(self):
        """Train the primary profile; a failure (even a crash) is caught here and chooses the fallback branch."""
        orc.enter_workdir()
        params = self._params(self.primary_profile)
        live = cards.LiveTraining(current.card, f"primary: {self.primary_profile}", params.train.max_steps)
        self.primary_result = orc.run_training(params, faults=os.environ.get(orc.FAULTS_ENV, ""),
                                               resume=current.retry_count > 0, on_progress=live)
        self.fallback_result = None
        for block in cards.training_blocks(self.primary_result, self.primary_profile, "primary"):
            current.card.append(block)
        self.train_branch = "primary_ok" if self.primary_result["ok"] else "fallback"
        self.next({"primary_ok": self.primary_ok, "fallback": self.fallback}, condition="train_branch")

    @step
    @user_errors
    def primary_ok(self):
        """The primary profile trained."""
        self.trained_profile = self.primary_profile
        self.branch_reason = f"the primary profile {self.primary_profile} trained"
        self.next(self.register_model)

    @resources(gpu=orc.env_int("HAMT_TRAIN_GPUS"), memory=16000, cpu=4)
    @card(refresh_interval=5, **CARD)
    @step
    @user_errors
    def fallback(self):
        """The primary failed: train the fallback profile (on the same tokens)."""
        orc.enter_workdir()
        self.branch_reason = f"the primary profile {self.primary_profile} failed: {self.primary_result['reason']}"
        params = self._params(self.fallback_profile)
        live = cards.LiveTraining(current.card, f"fallback: {self.fallback_profile}", params.train.max_steps)
        self.fallback_result = orc.run_training(params, on_progress=live)
        for block in cards.training_blocks(self.fallback_result, self.fallback_profile, "fallback"):
            current.card.append(block)
        if not self.fallback_result["ok"]:
            raise orc.PipelineStopped(f"{self.branch_reason}; the fallback profile {self.fallback_profile} failed too: "
                                      f"{self.fallback_result['reason']}")
        self.trained_profile = self.fallback_profile
        self.next(self.register_model)

    @card(**CARD)
    @step
    @user_errors
    def register_model(self):
        """Both branches meet here: record the trained model (path, sha256, metrics) and plan the comparison."""
        from pathlib import Path

        from metaflow.cards import Markdown

        from hamt.io import dir_sha256
        from hamt.zoo import evaluation_plan, training_plan

        orc.enter_workdir()
        params = self._trained_params()
        result = self.fallback_result if self.train_branch == "fallback" else self.primary_result
        self.checkpoint_dir = str(Path(params.train.out_dir) / "hamt" / "final")
        self.checkpoint_sha256 = dir_sha256(Path(self.checkpoint_dir))
        self.train_metrics = result["metrics"]
        self.trained_params = params.to_dict()
        self.training_names = training_plan(params)
        self.compare_names = evaluation_plan(params)
        current.card.append(Markdown(f"## Branch: `{self.train_branch}`\n\n{self.branch_reason}.\n\n"
                                     f"Model: `{self.checkpoint_dir}` (sha256 `{self.checkpoint_sha256['sha256']}`)"))
        if self.train_branch == "fallback":
            for block in cards.training_blocks(self.primary_result, self.primary_profile, "primary (failed)"):
                current.card.append(block)
        for block in cards.training_blocks(result, self.trained_profile, "trained model"):
            current.card.append(block)
        current.card.append(Markdown(f"Next: train {', '.join(self.training_names[1:]) or 'nothing more'}; "
                                     f"compare {', '.join(self.compare_names)}"))
        self.next(self.train_model, foreach="training_names")

    @resources(gpu=orc.env_int("HAMT_TRAIN_GPUS"), memory=16000, cpu=4)
    @retry(times=1)  # a lost machine: the retry resumes from the newest checkpoint
    @card(**CARD)
    @step
    @user_errors
    def train_model(self):
        """One model of the training plan (hamt.zoo.training_plan, dvc.yaml's train foreach): a baseline or an
        ablation trained afresh with the trained profile's parameters; HAMT itself was trained by the branch."""

        orc.enter_workdir()
        params = self._trained_params()
        self.model_name = self.input
        if self.model_name == "hamt":
            self.model_result = self.fallback_result if self.train_branch == "fallback" else self.primary_result
        else:
            others = [n for n in self.training_names if n != "hamt"]
            self.cpu_threads = orc.share_cpu_threads(len(others))  # the trainings run side by side
            # one process each: several tasks at once would otherwise each claim every GPU
            self.model_result = orc.run_training(params, name=self.model_name, nproc=1,
                                                 resume=current.retry_count > 0)
        for block in cards.training_blocks(self.model_result, self.trained_profile, self.model_name):
            current.card.append(block)
        if not self.model_result["ok"] and self.model_name != "hamt":
            # compare gives this model a skipped row (no model in its folder) with the reason the card shows
            print(f"{self.model_name} did not train: {self.model_result['reason']}")
        self.next(self.train_join)

    @card(**CARD)
    @step
    @user_errors
    def train_join(self, inputs):
        """Every model of the plan trained (or its failure recorded); compare evaluates them."""
        from metaflow.cards import Markdown

        from hamt.train.unplanned import write_not_trained
        from hamt.zoo import not_planned_reason, pipeline_models

        self.merge_artifacts(inputs, exclude=["model_name", "model_result", "cpu_threads"])
        orc.enter_workdir()
        params = self._trained_params()
        # compare.trained outside this profile's plan: the records DVC's train@ instances would write
        self.not_trained = {n: write_not_trained(params, n, not_planned_reason(params, n))["reason"]
                            for n in pipeline_models(params) if n not in self.training_names}
        self.training_results = {i.model_name: i.model_result for i in inputs}
        rows = [{"model": n, "ok": r["ok"], "reason": r["reason"], "seconds": r["seconds"],
                 "steps": (r.get("metrics") or {}).get("steps"), "val_loss": (r.get("metrics") or {}).get("val_loss")}
                for n, r in ((n, self.training_results[n]) for n in self.training_names)]
        current.card.append(Markdown("## Trained models (hamt.zoo.training_plan)"))
        current.card.append(cards.table(rows))
        if self.not_trained:
            current.card.append(Markdown("Not trained in this profile (compare.plan): "
                                         + ", ".join(f"`{n}`" for n in self.not_trained)))
        self.next(self.plan_compare)

    @card(**CARD)
    @step
    @user_errors
    def plan_compare(self):
        """Fan the evaluation out: one compare task per model of hamt.zoo.evaluation_plan (a join cannot split)."""
        from metaflow.cards import Markdown

        current.card.append(Markdown(f"Compare: {', '.join(self.compare_names)}"))
        self.next(self.compare, foreach="compare_names")

    @card(**CARD)
    @step
    @user_errors
    def compare(self):
        """One row of the comparison: HAMT, a baseline or an ablation, evaluated (never trained) from its folder."""
        from hamt.compare import run_baseline

        orc.enter_workdir()
        params = self._trained_params()
        self.baseline = self.input
        self.cpu_threads = orc.share_cpu_threads(len(self.compare_names))  # the rows run side by side
        self.row = run_baseline(params, self.baseline)
        current.card.append(cards.table([{"field": k, "value": v} for k, v in self.row.items()
                                       if not isinstance(v, (dict, list))]))
        self.next(self.compare_join)

    @card(**CARD)
    @step
    @user_errors
    def compare_join(self, inputs):
        """All rows together; the architecture probes (MQAR, speed); results/compare."""
        from metaflow.cards import Markdown

        from hamt.compare import compare

        self.merge_artifacts(inputs, exclude=["row", "baseline", "cpu_threads"])
        orc.enter_workdir()
        rows = {i.baseline: i.row for i in inputs}
        self.comparison_rows = [rows[n] for n in self.compare_names]
        result = compare(self._trained_params(), rows=self.comparison_rows)
        self.recall_probe, self.speed_probe = result["recall"], result["speed"]
        current.card.append(Markdown("## HAMT against its baselines\n\nSame tokens, same metrics; a row that could "
                                     "not run says why. All columns: results/compare/results.csv."))
        current.card.append(cards.table(self.comparison_rows, cards.COMPARE_COLUMNS))
        for name, probe in (("MQAR recall probe", self.recall_probe), ("Speed probe", self.speed_probe)):
            current.card.append(Markdown(f"### {name}: {probe.get('status', 'ok')} {probe.get('reason', '')}"))
        self.next(self.report)

    @card(**CARD)
    @step
    @user_errors
    def report(self):
        """results/report.{md,html}, plots and metrics.json; the report is also this step's card."""
        from pathlib import Path

        from hamt.report import report

        orc.enter_workdir()
        out = report(self._trained_params())
        self.report_files = {k: out[k] for k in ("md", "html", "metrics")}
        self.claims = out["ledger"]
        self.report_metrics = orc.read_json(Path(out["metrics"]))
        self.report_markdown = Path(out["md"]).read_text(encoding="utf-8")
        self.report_html = Path(out["html"]).read_text(encoding="utf-8")
        for block in cards.report_blocks(self.report_markdown, out["plots"]):
            current.card.append(block)
        self.next(self.end)

    @card(**CARD)
    @step
    @user_errors
    def end(self):
        """Keep DVC in step with the outputs; summarise the run."""
        from metaflow.cards import Markdown

        wd = orc.enter_workdir()
        self.dvc = orc.dvc_sync(wd, self.resolved_params, self.trained_params)
        hamt_row = next((r for r in self.comparison_rows if r["name"] == "hamt"), {})
        current.card.append(Markdown(
            f"# Run {current.run_id} done\n\n- branch: `{self.train_branch}` — {self.branch_reason}\n"
            f"- HAMT: perplexity {hamt_row.get('ppl')}, bits/byte {hamt_row.get('bpb')}\n"
            f"- model `{self.checkpoint_dir}` sha256 `{self.checkpoint_sha256['sha256']}`\n"
            f"- DVC: **{self.dvc['status']}** — {self.dvc['reason']}\n"
            f"- report: `{self.report_files['html']}`, or its card: "
            f"`python flows/hamt_flow.py card get {current.run_id}/report report.html`"))
        print(f"DVC: {self.dvc['status']}: {self.dvc['reason']}")


if __name__ == "__main__":
    main(HAMTFlow)  # checks a run's arguments first; repeats a step's user error as the last line

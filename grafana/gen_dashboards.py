#!/usr/bin/env python3
"""Regenerates grafana/dashboards/*.json (the committed JSON is what Grafana and the tests read).

Usage: python3 grafana/gen_dashboards.py [OUT_DIR]   (default: grafana/dashboards beside this file)
Edit the panels here rather than in the JSON, then run it and `cargo test --test metrics_contract`.
"""
import json, os, sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"

def ds_var():
    return {"current": {}, "hide": 0, "includeAll": False, "label": "Data source", "multi": False,
            "name": "datasource", "options": [], "query": "prometheus", "refresh": 1, "regex": "",
            "skipUrlSync": False, "type": "datasource"}

def dataset_var():
    q = "label_values(mos_mixture_weight, dataset)"
    return {"allValue": ".+", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "datasource": DS, "definition": q, "hide": 0, "includeAll": True, "label": "Dataset",
            "multi": True, "name": "dataset", "options": [],
            "query": {"qryType": 1, "query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "regex": "", "skipUrlSync": False, "sort": 1, "type": "query"}

class Board:
    def __init__(self, uid, title, description):
        self.uid, self.title, self.description = uid, title, description
        self.panels, self.x, self.y, self.rowh = [], 0, 0, 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.rowh = 0, self.y + self.rowh, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.rowh = max(self.rowh, h)
        return pos

    def _targets(self, targets):
        out = []
        for i, (expr, legend) in enumerate(targets):
            out.append({"datasource": DS, "editorMode": "code", "expr": expr,
                        "legendFormat": legend, "range": True, "refId": chr(ord("A") + i)})
        return out

    def ts(self, title, desc, targets, unit="short", w=12, h=8, stack=False, fill=10, minv=None,
           maxv=None, interp="linear", decimals=None):
        custom = {"drawStyle": "line", "lineInterpolation": interp, "lineWidth": 1 if stack else 2,
                  "fillOpacity": 70 if stack else fill, "showPoints": "never", "spanNulls": True,
                  "axisPlacement": "auto", "axisSoftMin": None, "stacking": {"group": "A", "mode": "normal" if stack else "none"}}
        del custom["axisSoftMin"]
        defaults = {"custom": custom, "unit": unit, "color": {"mode": "palette-classic"}}
        if minv is not None: defaults["min"] = minv
        if maxv is not None: defaults["max"] = maxv
        if decimals is not None: defaults["decimals"] = decimals
        self.panels.append({
            "datasource": DS, "description": desc, "fieldConfig": {"defaults": defaults, "overrides": []},
            "gridPos": self._place(w, h), "id": len(self.panels) + 1,
            "options": {"legend": {"calcs": ["lastNotNull"], "displayMode": "table", "placement": "right" if w >= 12 else "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": self._targets(targets), "title": title, "type": "timeseries"})

    def stat(self, title, desc, targets, unit="short", w=6, h=4, decimals=None, text_mode="auto"):
        defaults = {"unit": unit, "color": {"mode": "thresholds"},
                    "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}}
        if decimals is not None: defaults["decimals"] = decimals
        self.panels.append({
            "datasource": DS, "description": desc, "fieldConfig": {"defaults": defaults, "overrides": []},
            "gridPos": self._place(w, h), "id": len(self.panels) + 1,
            "options": {"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "showPercentChange": False, "textMode": text_mode, "wideLayout": True},
            "targets": self._targets(targets), "title": title, "type": "stat"})

    def write(self):
        d = {"annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                        "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                        "name": "Annotations & Alerts", "type": "dashboard"}]},
             "description": self.description, "editable": True, "fiscalYearStartMonth": 0, "graphTooltip": 1,
             "id": None,
             "links": [{"asDropdown": True, "icon": "external link", "includeVars": True, "keepTime": True,
                        "tags": ["mos-runtime"], "targetBlank": False, "title": "mos-runtime dashboards",
                        "tooltip": "", "type": "dashboards", "url": ""}],
             "panels": self.panels, "refresh": "10s", "schemaVersion": 39, "tags": ["mos-runtime"],
             "templating": {"list": [ds_var(), dataset_var()]},
             "time": {"from": "now-1h", "to": "now"}, "timepicker": {}, "timezone": "browser",
             "title": self.title, "uid": self.uid, "version": 1, "weekStart": ""}
        name = self.uid.replace("mos-", "") + ".json"
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(d, f, indent=2)
            f.write("\n")

def q(phi, metric, window=RI):
    return f"histogram_quantile({phi}, sum by (le) (rate({metric}_bucket[{window}])))"

def mean(metric, window=RI):
    return f"sum(rate({metric}_sum[{window}])) / sum(rate({metric}_count[{window}]))"

# ---------------------------------------------------------------- overview
b = Board("mos-overview", "mos-runtime / Overview",
          "Training progress of a mos-runtime daemon: step, loss, throughput, step time and time spent waiting for data.")
b.stat("Step", "Optimiser steps completed (mos_train_step).", [("max(mos_train_step)", "step")], decimals=0)
b.stat("Tokens / s", "Training tokens per second, padding excluded.", [(f"sum(rate(mos_train_tokens_total[{RI}]))", "tokens/s")], unit="short", decimals=0)
b.stat("Training loss", "Loss of the last step (mean over target tokens).", [("max(mos_train_loss)", "loss")], decimals=3)
b.stat("Build", "Crate version and configured backend (mos_build_info).", [("max by (version, backend) (mos_build_info)", "{{version}} ({{backend}})")], text_mode="name")
b.ts("Training loss", "Training loss of the last step (nats per target token).", [("mos_train_loss", "loss")], unit="none", interp="smooth")
b.ts("Learning rate", "Learning rate used by the last step.", [("mos_train_learning_rate", "lr")], unit="sci")
b.ts("Throughput", "Tokens and optimiser steps per second.",
     [(f"sum(rate(mos_train_tokens_total[{RI}]))", "tokens/s"),
      (f"sum(rate(mos_train_step_duration_seconds_count[{RI}]))", "steps/s")], unit="short")
b.ts("Step time", "Wall time of one training step (batch assembly included): quantiles from the histogram and the mean.",
     [(q(0.5, "mos_train_step_duration_seconds"), "p50"), (q(0.9, "mos_train_step_duration_seconds"), "p90"),
      (q(0.99, "mos_train_step_duration_seconds"), "p99"), (mean("mos_train_step_duration_seconds"), "mean")], unit="s")
b.ts("Data wait", "Fraction of wall time the trainer spent waiting for loaders (seconds waited per second, from the full-resolution _sum of mos_trainer_data_wait_seconds). Near 0 means loaders keep up.",
     [(f"sum(rate(mos_trainer_data_wait_seconds_sum[{RI}]))", "waiting")], unit="percentunit", minv=0)
b.ts("Skipped steps", "Steps skipped because the loss was not finite, per second (0 when none happened).",
     [(f"sum(rate(mos_train_steps_skipped_total[{RI}])) or vector(0)", "skipped/s")], unit="short", minv=0)
b.write()

# ---------------------------------------------------------------- mixture
b = Board("mos-mixture", "mos-runtime / Mixture",
          "The data mixture the scheduler publishes, and what the trainer actually draws from each dataset.")
b.stat("Mixture version", "Version of the published mixture; increments on every publish.", [("max(mos_mixture_version)", "version")], decimals=0)
b.stat("Scheduler updates / min", "Mixture updates performed by the scheduler per minute.", [(f"sum(rate(mos_scheduler_updates_total[{RI}])) * 60", "updates/min")], decimals=1)
b.stat("Scheduler update p90", "90th percentile of the wall time of one scheduler update.", [(q(0.9, "mos_scheduler_update_duration_seconds", "5m"), "p90")], unit="s")
b.stat("Datasets", "Datasets in the mixture (matching the dataset filter).", [('count(mos_mixture_weight{dataset=~"$dataset"})', "datasets")], decimals=0)
b.ts("Mixture weights (stacked)", "Sampling probability of each dataset, stacked: the bands tile 0..1.",
     [('mos_mixture_weight{dataset=~"$dataset"}', "{{dataset}}")], unit="percentunit", stack=True, minv=0, interp="stepAfter", w=24, h=10)
b.ts("Samples per dataset", "Training examples drawn from each dataset per second.",
     [(f'sum by (dataset) (rate(mos_dataset_samples_total{{dataset=~"$dataset"}}[{RI}]))', "{{dataset}}")], unit="short", minv=0)
b.ts("Realised share", "Share of the examples actually drawn from each dataset (compare with the target weights above).",
     [(f'sum by (dataset) (rate(mos_dataset_samples_total{{dataset=~"$dataset"}}[{RI}])) / scalar(sum(rate(mos_dataset_samples_total[{RI}])))', "{{dataset}}")],
     unit="percentunit", stack=True, minv=0)
b.ts("Scheduler update time", "Wall time of one scheduler update (scorer optimisation included).",
     [(q(0.5, "mos_scheduler_update_duration_seconds", "5m"), "p50"), (q(0.99, "mos_scheduler_update_duration_seconds", "5m"), "p99")], unit="s", w=24, h=7)
b.write()

# ---------------------------------------------------------------- rewards
b = Board("mos-rewards", "mos-runtime / Rewards",
          "Mixture-of-Skills rewards per dataset, raw and EMA-smoothed (only the mos strategy emits them).")
b.ts("Raw reward", "Raw reward of each dataset at the last scheduler update.",
     [('mos_reward{dataset=~"$dataset"}', "{{dataset}} ({{reward}})")], unit="none", interp="stepAfter")
b.ts("Smoothed reward", "Reward after EMA smoothing: what the scorer update uses.",
     [('mos_reward_smoothed{dataset=~"$dataset"}', "{{dataset}} ({{reward}})")], unit="none", interp="stepAfter")
b.ts("Raw minus smoothed", "How far the latest raw reward is from its smoothed value.",
     [('mos_reward{dataset=~"$dataset"} - on (dataset, reward) mos_reward_smoothed', "{{dataset}} ({{reward}})")], unit="none", interp="stepAfter")
b.ts("Probe pass time", "Wall time of one batched probe forward pass over every dataset's probe set.",
     [(q(0.5, "mos_probe_duration_seconds", "5m"), "p50"), (q(0.9, "mos_probe_duration_seconds", "5m"), "p90"),
      (mean("mos_probe_duration_seconds", "5m"), "mean")], unit="s")
b.ts("Scheduler updates", "Mixture updates per minute.",
     [(f"sum(rate(mos_scheduler_updates_total[{RI}])) * 60", "updates/min")], unit="short", minv=0, w=24, h=6)
b.write()

# ---------------------------------------------------------------- evaluation
b = Board("mos-evaluation", "mos-runtime / Evaluation",
          "Held-out loss of each dataset at every evaluation (runtime.eval_every steps and at the end).")
b.ts("Held-out loss per dataset", "Held-out loss (nats per target token) of each dataset at the last evaluation.",
     [('mos_eval_loss{dataset=~"$dataset"}', "{{dataset}}")], unit="none", interp="stepAfter", w=24, h=10)
b.stat("Latest held-out loss", "Held-out loss of each dataset at the last evaluation.",
       [('mos_eval_loss{dataset=~"$dataset"}', "{{dataset}}")], decimals=3, w=16, h=5)
b.stat("Mean held-out loss", "Mean over the selected datasets.", [('avg(mos_eval_loss{dataset=~"$dataset"})', "mean")], decimals=3, w=8, h=5)
b.ts("Held-out minus training loss", "Generalisation gap per dataset: held-out loss minus the last training loss.",
     [('mos_eval_loss{dataset=~"$dataset"} - on () group_left max(mos_train_loss)', "{{dataset}}")], unit="none", interp="stepAfter")
b.ts("Evaluation time", "Wall time of one evaluation over every dataset's held-out examples (evaluations are rare: 15 minute window).",
     [(q(0.5, "mos_eval_duration_seconds", "15m"), "p50"), (mean("mos_eval_duration_seconds", "15m"), "mean")], unit="s")
b.write()

# ---------------------------------------------------------------- health
b = Board("mos-health", "mos-runtime / Health",
          "Loader queues, dropped reports, refused scheduler updates, malformed records, actor restarts and checkpoint times.")
b.stat("Reports dropped / min", "Trainer reports dropped because a receiver's queue was full (0 when none happened).",
       [(f"sum(rate(mos_reports_dropped_total[{RI}])) * 60 or vector(0)", "dropped/min")], decimals=1)
b.stat("Bad records (since start)", "Malformed records skipped while loading, per dataset (counted once at start-up, so the counter's value is shown; 0 when none).",
       [('sum by (dataset) (mos_loader_bad_records_total{dataset=~"$dataset"}) or vector(0)', "{{dataset}}")], decimals=0)
b.stat("Actor restarts / h", "Actor restarts performed by the supervisor in the last hour (0 when none happened).",
       [("sum(increase(mos_actor_restarts_total[1h])) or vector(0)", "restarts")], decimals=0)
b.stat("Data wait", "Fraction of wall time the trainer waited for data.",
       [(f"sum(rate(mos_trainer_data_wait_seconds_sum[{RI}]))", "waiting")], unit="percentunit", decimals=1)
b.ts("Data wait per batch", "Time the trainer waited for loaders while assembling one batch: quantiles from the histogram.",
     [(q(0.5, "mos_trainer_data_wait_seconds"), "p50"), (q(0.9, "mos_trainer_data_wait_seconds"), "p90"),
      (q(0.99, "mos_trainer_data_wait_seconds"), "p99")], unit="s", minv=0)
b.ts("Loader queue depth", "Examples waiting in each loader's prefetch queue (a queue stuck at 0 starves the trainer).",
     [('mos_loader_queue_depth{dataset=~"$dataset"}', "{{dataset}}")], unit="short", minv=0)
b.ts("Loader throughput", "Examples tokenized and queued per second by each loader.",
     [(f'sum by (dataset) (rate(mos_loader_examples_total{{dataset=~"$dataset"}}[{RI}]))', "{{dataset}}")], unit="short", minv=0)
b.ts("Loader epochs", "Passes over each dataset's training split per hour.",
     [(f'sum by (dataset) (rate(mos_loader_epochs_total{{dataset=~"$dataset"}}[{RI}])) * 3600', "{{dataset}}")], unit="short", minv=0)
b.ts("Dropped reports", "Trainer reports dropped per second because the reward actor or scheduler was still busy.",
     [(f"sum(rate(mos_reports_dropped_total[{RI}])) or vector(0)", "dropped/s")], unit="short", minv=0)
b.ts("Scheduler updates refused", "Updates the scheduler refused, per minute, by reason (a reward outside its range, a state that would not be finite or could no longer move): the mixture was kept and the run went on. 0 when none happened.",
     [(f"sum by (reason) (rate(mos_scheduler_updates_rejected_total[{RI}])) * 60 or vector(0)", "{{reason}}")], unit="short", minv=0)
b.ts("Actor restarts", "Actor restarts per second, by actor (0 when none happened).",
     [(f"sum by (actor) (rate(mos_actor_restarts_total[{RI}])) or vector(0)", "{{actor}}")], unit="short", minv=0)
b.ts("Checkpoint time", "Wall time to write one checkpoint (checkpoints are rare: 1 hour window; empty until the first checkpoint).",
     [(q(0.5, "mos_checkpoint_duration_seconds", "1h"), "p50"), (q(0.99, "mos_checkpoint_duration_seconds", "1h"), "p99")], unit="s")
b.write()

"""The A/B report's one typed shape: what :func:`serve_ab.analysis.report.build_report` returns.

Every renderer (the terminal table, the HTML page), the run records and ``serve-ab report
--json`` read this model; it travels as ``report.model_dump(mode="json")`` and comes back
with ``Report.model_validate(data)``. Its JSON schema is published in
``docs/report.schema.json``; regenerate it after changing a model here::

    python -m serve_ab.analysis.report_model > docs/report.schema.json

(``tests/unit/analysis/test_report_schema.py`` fails while the file is stale.)

Pure data: pydantic only (no numpy, no scipy), so the CLI can read a report cheaply. Every
float is finite or None (``allow_inf_nan=False``): a figure that cannot be computed yet
is None, never NaN, so the JSON is plain JSON. Unknown keys are refused (``extra="forbid"``),
so a report from another layout fails loudly instead of rendering half empty; bump
``REPORT_SCHEMA`` when a change is not backwards compatible. A reader takes a report of this
schema from a newer serve-ab with :func:`read_report`, which leaves out the fields added since.

Example::

    report, state = build_report(cfg, stats.snapshot(now_s), weights_pct)
    (m,) = [m for m in report.metrics if m.name == "error_rate"]
    m.comparisons[0].verdict, report.srm.mismatch, report.headline_metrics()["v1.requests"]
"""

from __future__ import annotations

import copy
import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# ab.ABVerdict values; spelled out so that reading a report never imports scipy (ab does).
ABVerdict = Literal["better", "worse", "no_difference", "not_enough_data"]

__all__ = [
    "REPORT_SCHEMA", "ABVerdict", "Agreement", "ClassFlipTest", "Comparison", "ComparisonPower", "Confusion",
    "ConversionFeedback", "CupedFigures", "Drift", "Experiment", "FixedFigures", "Flip", "Flips", "Guardrail",
    "LatencyHistogram", "LatencySummary", "MeanFeedback", "MetricResult", "PairedMean", "Plots",
    "PowerPlan", "RatioArm", "Report", "SequentialFigures", "ShadowResult", "ShadowSetup", "Similarity", "Srm",
    "SrmSplit", "Timeline", "ValueDrift", "VariantResult", "read_report", "report_json_schema",
]

REPORT_SCHEMA = 2  # 2: per-unit metrics, splits, one estimand per verdict, guardrails

Num = Annotated[float, Field(allow_inf_nan=False)]
# [low, high]; a bound that cannot be computed yet is None.
Interval = Annotated[list[Num | None], Field(min_length=2, max_length=2)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- experiment ------------------------------------------------------------------------------


class ShadowSetup(_Model):
    version: str = Field(description="the version that receives mirrored requests")
    percent: Num = Field(description="share of live requests mirrored to it, in percent")


class Experiment(_Model):
    model: str
    control: str
    variants: list[str] = Field(description="versions compared with the control (weight > 0 now, or requests "
                                "the split assigned them before)")
    versions: list[str] = Field(description="every version served, the control first as configured")
    weights_pct: dict[str, Num] = Field(description="the configured weights, percent")
    weights_pct_now: dict[str, Num] = Field(description="the weights the routers use now, percent")
    alpha: Num
    power: Num = Field(description="the target power of the sample-size plans")
    correction: Literal["holm", "bh", "none"] = Field(description="multiple-comparison correction of p_adjusted")
    sequential: bool = Field(description="whether always-valid (mSPRT) figures drive the verdicts")
    mde_relative: Num = Field(description="minimum detectable effect, relative to the control")
    min_samples: int = Field(description="units per arm below which a verdict is not_enough_data")
    family_size: int = Field(description="comparisons in the decision family, fixed from the config: "
                             "(error_rate, latency_ms, configured feedback metrics) x configured variants")
    alpha_per_comparison: Num = Field(description="alpha / family_size: the level of each sequential test")
    splits: int = Field(description="distinct weightings traffic was assigned under; compared within each")
    shadow: ShadowSetup | None


# ---- per variant -----------------------------------------------------------------------------


class LatencySummary(_Model):
    count: int = Field(description="successful requests")
    mean_all: Num | None = Field(description="mean over every successful request (exact), ms")
    n_sample: int = Field(description="successful requests in the latency sketch the percentiles come from (every one; within 1%)")
    mean: Num | None = Field(description="mean of the sample, ms")
    p50: Num | None
    p95: Num | None
    p99: Num | None
    min: Num | None
    max: Num | None


class ConversionFeedback(_Model):
    kind: Literal["conversion"]
    n: int
    successes: int
    value: Num | None = Field(description="successes / n")


class MeanFeedback(_Model):
    kind: Literal["mean"]
    n: int
    value: Num | None = Field(description="the mean")
    std: Num | None = Field(description="sample standard deviation (ddof=1)")


class VariantResult(_Model):
    role: Literal["control", "variant", "shadow", "control+shadow", "variant+shadow"]
    weight_pct: Num = Field(description="the weight routed by now, percent")
    requests: int
    assigned: int = Field(description="requests routed by the assignment (not pinned to a version)")
    retried: int = Field(0, description="of the requests, retries of requests another version could not answer "
                         "(served by this one as the fallback), each counted under that version too")
    units: int | None = Field(description="distinct users assigned to it (estimated from a uniform sample "
                              "past 100,000), plus keyless requests; None when not counted")
    errors: int
    error_rate: Num | None
    errors_by_kind: dict[str, int]
    latency_ms: LatencySummary
    predictions: dict[str, int] = Field(description="requests per predicted class")
    prediction_share: dict[str, Num]
    feedback: dict[str, Annotated[ConversionFeedback | MeanFeedback, Field(discriminator="kind")]]


# ---- metrics ---------------------------------------------------------------------------------


class RatioArm(_Model):
    """One version over every split it was assigned in: descriptive, pooled over time."""

    n: int = Field(description="units: users (buckets of users) with data, plus keyless requests")
    total: Num = Field(description="the denominator: assigned requests, successful requests or feedback reports")
    value: Num | None = Field(description="the ratio: a rate or a mean per request/report")
    ci: Interval | None = Field(description="at 1 - alpha: a mean's delta-method interval per unit; a rate's "
                                "Wilson interval on its effective trials (rate (1 - rate) / variance, at most "
                                "the trials; every trial at a rate of 0 or 1)")
    p50: Num | None = Field(description="latency only: median latency of the successful requests the split "
                            "assigned the version, over every split, ms (descriptive; within 1%)")
    p95: Num | None = Field(description="latency only: 95th percentile of the same, ms (descriptive; within 1%)")


class PowerPlan(_Model):
    """The metric's plan: the largest requirement over its comparisons."""

    test: str = Field(description="the test the plan is for: the one the verdict uses")
    mde_relative: Num
    mde_abs: Num = Field(description="the effect planned for, in the metric's units")
    target_power: Num
    alpha_per_comparison: Num
    family_size: int
    required_per_arm: int = Field(description="units (buckets of users), the larger arm of the largest plan")
    data_multiple: Num | None = Field(None, description="the largest of the comparisons' data_multiple")
    power_now: Num | None
    complete: bool


class SequentialFigures(_Model):
    """Always-valid (mSPRT) figures of one comparison, at alpha / family_size."""

    p_value: Num | None = Field(description="running minimum over looks, uncorrected")
    p_adjusted: Num | None = Field(description="p_value x family_size (Bonferroni over the fixed family)")
    ci: Interval = Field(description="confidence sequence of the absolute lift, intersected over looks")
    rel_ci: Interval = Field(description="Fieller interval of the relative lift, intersected over looks")
    looks: int
    estimate: Num | None
    tau: Num | None = Field(description="the mixing prior's scale, from the minimum detectable effect")
    alpha_per_comparison: Num
    verdict: ABVerdict


class FixedFigures(_Model):
    """Fixed-horizon figures: valid only when read once, at the planned sample."""

    p_value: Num | None
    p_adjusted: Num | None = Field(description="corrected over the fixed family (untested ones count as 1)")
    level: Num = Field(description="the level the correction left this comparison: alpha x p / p_adjusted")
    abs_ci: Interval
    rel_ci: Interval
    verdict: ABVerdict


class Guardrail(_Model):
    """Non-inferiority of a health metric, on a confidence sequence at alpha (outside the family)."""

    margin: Num
    margin_kind: Literal["abs", "relative"]
    margin_abs: Num = Field(description="the margin in the metric's units")
    alpha: Num
    ci: Interval
    status: Literal["non_inferior", "inferior", "inconclusive"]
    note: str | None = Field(None, description="set when the sequence started again at this look")


class ComparisonPower(_Model):
    test: str
    achieved: Num | None = Field(description="power now, for the planned effect, of the test the verdict uses")
    target: Num
    mde_relative: Num
    mde_abs: Num
    alpha_per_comparison: Num
    family_size: int
    required_per_arm: int = Field(description="units (buckets of users), the larger arm")
    required: dict[str, int] = Field(description="units per arm: variant, control")
    units_needed: dict[str, int] = Field(description="units per arm still to collect, at the users per bucket "
                                         "so far: buckets fill as users come, so use data_multiple for users")
    data_multiple: Num | None = Field(None, description="the plan over the data so far, the larger arm's: the users "
                                      "(and their data) needed are the users so far times this; <= 1 when reached")
    complete: bool


class CupedFigures(_Model):
    """The pre-period adjustment (CUPED) applied to a comparison."""

    theta: Num
    variance_reduction: Num = Field(description="1 - Var(adjusted) / Var(unadjusted) of the difference")
    pre_units: int = Field(description="buckets of users seen before the variant had traffic")
    abs_lift_unadjusted: Num
    se_unadjusted: Num


class Comparison(_Model):
    """One variant against the control on one metric: one estimand (the difference of the
    split-stratified ratios), one test, the interval of that test."""

    variant: str
    control: str
    test: Literal["delta_method_z"]
    n_variant: int = Field(description="units")
    n_control: int = Field(description="units")
    splits_used: int = Field(description="splits where both arms had units, combined with weights from the arms' sizes")
    cuped: CupedFigures | None = Field(description="the pre-period adjustment, when there was a pre-period")
    value_variant: Num | None = Field(description="at this look, as are the units")
    value_control: Num | None = Field(description="at this look: value_variant - value_control is this "
                                      "look's estimate")
    abs_lift: Num | None = Field(description="variant minus control, in the metric's units: the estimate of "
                                 "the verdict's test (beside a frozen fixed-horizon verdict, that look's)")
    abs_ci: Interval = Field(description="the interval of the verdict's test (sequential or fixed)")
    rel_lift: Num | None = Field(description="(value_variant - value_control) / |value_control|: "
                                  "value_variant / value_control - 1 where the control is above 0 (beside a "
                                  "frozen fixed-horizon verdict, that look's)")
    rel_ci: Interval = Field(description="Fieller interval of rel_lift, from the verdict's test")
    p_value: Num | None = Field(description="fixed-horizon, uncorrected (beside a frozen fixed-horizon "
                                "verdict, the look's that reached the planned sample)")
    p_adjusted: Num | None = Field(description="fixed-horizon, corrected over the fixed family (likewise)")
    fixed: FixedFigures | None = Field(description="the fixed-horizon test at this look, or beside a frozen "
                                       "fixed-horizon verdict at the look that reached the planned sample")
    sequential: SequentialFigures | None
    guardrail: Guardrail | None
    verdict: ABVerdict
    verdict_basis: Literal["fixed_horizon", "sequential"]
    verdict_note: str | None = None
    power: ComparisonPower | None
    power_note: str | None = Field(description="why there are no power figures")


class MetricResult(_Model):
    name: str
    kind: Literal["conversion", "mean"]
    source: Literal["requests", "feedback"]
    test: Literal["delta_method_z"]
    direction: Literal["increase", "decrease"] = Field(description="which way is better")
    unit: str
    in_family: bool = Field(description="configured before the data: part of the decision family")
    value_is: Literal["rate", "mean"]
    analysis_unit: str
    splits: int
    arms: dict[str, RatioArm] = Field(description="per version")
    power_plan: PowerPlan | None
    comparisons: list[Comparison]


# ---- sample-ratio mismatch -------------------------------------------------------------------


class SrmSplit(_Model):
    split: str
    p_value: Num | None
    always_valid_p: Num | None = None  # None: a record from before the sequential test
    mismatch: bool


class Srm(_Model):
    """The counts per version against the weights: a sequential test (the flag, valid at every
    refresh) and the chi-square at this look."""

    applicable: bool = Field(description="checked under the weights routed by now")
    basis: Literal["units"]
    basis_note: str
    observed: dict[str, int]
    weights_pct: dict[str, Num]
    expected: dict[str, Num] | None
    statistic: Num | None
    dof: int | None
    p_value: Num | None = Field(description="the chi-square's p-value at this look (shown, not flagged on)")
    always_valid_p: Num | None = Field(
        None, description="the sequential test's p-value (Lindon & Malek's Dirichlet-multinomial Bayes "
        "factor), valid however often the report is read; None in records from before it")
    threshold_p: Num = Field(description="flagged as a mismatch where always_valid_p is below this")
    mismatch: bool
    reason: str | None = Field(description="why it is not checked, or 'no traffic yet'")
    sampled_fraction: Num | None = Field(description="share of keyed users in the sample the test counts")
    other_splits: list[SrmSplit] = Field(description="the same check under earlier weights")


# ---- shadow ----------------------------------------------------------------------------------


class Agreement(_Model):
    n: int
    agree: int
    rate: Num | None
    ci: Interval | None = Field(description="Wilson interval at confidence, on n / design_effect pairs")
    confidence: Num
    design_effect: Num = Field(default=1.0, description="how much users who send many requests shrink the "
                               "pairs' evidence (1: as independent pairs)")


class Flip(_Model):
    live: int = Field(description="the live version's class")
    shadow: int = Field(description="the shadow's class on the same request")
    n: int
    share_of_pairs: Num


class Flips(_Model):
    total: int
    rate: Num | None
    top: list[Flip] = Field(description="the most frequent flips, most first")


class ClassFlipTest(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    class_: int = Field(alias="class")
    live_count: int
    shadow_count: int
    to_other: int
    from_other: int
    diff: Num | None = Field(description="shadow's share of pairs with this class minus the live one's")
    statistic: Num | None
    p_value: Num | None
    p_adjusted: Num | None
    method: str = Field(description="exact_binomial or mcnemar_chi2 (McNemar's test); cluster_adjusted where "
                                    "keyed pairs flip (Durkalski's statistic, F(1, df)); none "
                                    "without pairs")
    design_effect: Num = Field(1.0, description="how many times the net flips' variance exceeds independent "
                                                "pairs' (1: none seen, McNemar's test)")
    significant: bool


class PairedMean(_Model):
    """Shadow-minus-live score differences on the same requests."""

    n: int
    mean: Num | None
    std: Num | None
    ci: Interval | None
    p_value: Num | None = Field(description="paired t-test")
    confidence: Num
    mean_abs: Num | None = Field(default=None, description="mean absolute difference (score_diff only)")
    design_effect: Num = Field(default=1.0, description="how much users who send many requests shrink the "
                               "pairs' evidence; the interval and p-value are on n / design_effect pairs")


class Drift(_Model):
    """The shadow's class distribution (candidate) against the live one (reference)."""

    classes: list[int]
    live_counts: list[int]
    shadow_counts: list[int]
    kl: Num | None
    psi: Num | None
    js: Num | None = Field(description="Jensen-Shannon divergence in bits (the square of js_distance)")
    js_distance: Num | None = Field(description="Jensen-Shannon distance, in [0, 1]")


class Confusion(_Model):
    classes: list[int]
    counts: list[list[int]] = Field(description="counts[i][j]: live said classes[i], shadow classes[j]")


class ValueDrift(_Model):
    """Regression: the shadow's predicted values (candidate) against live's (reference), on the
    same requests, from log-bucket sketches (each value within 1%)."""

    n: int
    live_mean: Num | None
    shadow_mean: Num | None
    live_p50: Num | None
    shadow_p50: Num | None
    ks: Num | None = Field(description="Kolmogorov-Smirnov statistic, in [0, 1]")
    ks_p_value: Num | None
    wasserstein: Num | None = Field(description="earth mover's distance, in the output's units")


class Similarity(_Model):
    """Embedding: cosine similarity of the shadow's vector with live's, per request."""

    n: int
    mean: Num | None
    std: Num | None
    ci: Interval | None
    p_value: Num | None = Field(description="paired t-test of mean cosine 0 (rarely of interest)")
    confidence: Num
    mean_abs: Num | None = None
    design_effect: Num = Field(default=1.0, description="how much users who send many requests shrink the "
                               "pairs' evidence; the interval is on n / design_effect pairs")
    threshold: Num = Field(description="agreement: cosine at least this")
    p05: Num | None = Field(description="5th percentile of the cosine")
    min: Num | None


class ShadowResult(_Model):
    version: str | None
    mirrored: int
    dropped: int = Field(default=0, description="copies not sent: the routers had too many waiting for the "
                         "shadow (it answered slower than live requests came); in no figure below")
    errors: int
    errors_by_kind: dict[str, int]
    error_rate: Num | None
    pairs: int = Field(description="mirrored requests whose live answer they were paired with")
    rows_not_compared: int = Field(
        default=0, description="rows of the paired requests beyond each one's first: only a request's "
        "first row is compared, so no figure of this section reads these rows of batched requests")
    pairs_by_live_version: dict[str, int]
    agreement: Agreement
    flips: Flips
    class_tests: list[ClassFlipTest] = Field(description="McNemar (or exact) test per class")
    score_diff: PairedMean
    drift: Drift | None
    latency_ms: LatencySummary
    confusion: Confusion
    task: Literal["classification", "regression", "embedding"] = Field(
        default="classification", description="what the answers are; agreement and drift follow it")
    agreement_rule: str | None = Field(default=None, description="when a shadow answer agrees, in words")
    value_drift: ValueDrift | None = Field(default=None, description="regression only")
    similarity: Similarity | None = Field(default=None, description="embedding only")


# ---- plots -----------------------------------------------------------------------------------


class LatencyHistogram(_Model):
    edges_ms: list[Num]
    counts: dict[str, list[int]] = Field(description="per version (and '<shadow> (shadow)'), per bin")
    clipped: dict[str, int] = Field(description="values above the last edge, counted in the last bin")
    note: str


class Timeline(_Model):
    bucket_s: Num
    t_s: list[Num] = Field(description="end of each bucket, seconds since the epoch")
    requests_cumulative: dict[str, list[int]]
    feedback_cumulative: dict[str, list[int]]


class Plots(_Model):
    latency_histogram: LatencyHistogram | None
    timeline: Timeline


# ---- the report ------------------------------------------------------------------------------


class Report(_Model):
    """The A/B report of one experiment at one moment (see ``serve_ab.analysis.report``)."""

    schema_version: int = Field(REPORT_SCHEMA, alias="schema",
                                description="the report layout's version; bumped on incompatible changes")
    run_id: str | None = Field(default=None, description="the run record's id; None outside a running app")
    generated_at_s: Num = Field(description="the snapshot's time, seconds since the epoch")
    started_at_s: Num
    elapsed_s: Num
    experiment: Experiment
    variants: dict[str, VariantResult]
    metrics: list[MetricResult] = Field(description="error_rate, latency_ms, then each feedback metric")
    srm: Srm
    shadow: ShadowResult | None = Field(description="the paired live/shadow comparison; None without shadow")
    plots: Plots
    warnings: list[str] = Field(description="sentences a person should read first")

    # "schema" shadows a BaseModel attribute, so the field has another name in Python.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    def metric(self, name: str) -> MetricResult:
        """The metric called ``name``; ``KeyError`` naming the ones there are."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"no metric {name!r} in the report; it has {[m.name for m in self.metrics]}")

    def headline_metrics(self) -> dict[str, float]:
        """Headline figures, flat (for MLflow): per version requests (and of them retried), error
        rate, p95 latency; the requests sent, each counted once; per metric and variant value, lifts
        and p-values; the SRM p-value; shadow agreement. Missing (None) figures are left out."""
        out: dict[str, float] = {}

        def put(key: str, value: float | int | None) -> None:
            if value is not None and math.isfinite(value):
                out[key] = float(value)

        # A request failed over is a request of both versions: the versions' requests add up to
        # more than were sent, which requests_total (as serve-ab runs) does not.
        put("requests_total", self.run_summary()["requests"])
        for name, variant in self.variants.items():
            put(f"{name}.requests", variant.requests)
            put(f"{name}.retried", variant.retried)
            put(f"{name}.error_rate", variant.error_rate)
            put(f"{name}.latency_p95_ms", variant.latency_ms.p95)
        for metric in self.metrics:
            for c in metric.comparisons:
                prefix = f"{metric.name}.{c.variant}"
                put(f"{prefix}.value", c.value_variant)
                put(f"{prefix}.abs_lift", c.abs_lift)
                put(f"{prefix}.rel_lift", c.rel_lift)
                put(f"{prefix}.p_value", c.p_value)
                put(f"{prefix}.p_adjusted", c.p_adjusted)
                put(f"{prefix}.p_sequential", c.sequential.p_value if c.sequential else None)
                put(f"{prefix}.units_variant", c.n_variant)
        put("srm.p_value", self.srm.p_value)
        put("srm.always_valid_p", self.srm.always_valid_p)
        if self.shadow is not None:
            put("shadow.agreement", self.shadow.agreement.rate)
            put("shadow.pairs", self.shadow.pairs)
        return out

    def run_summary(self, app: str | None = None) -> dict[str, Any]:
        """What ``serve-ab runs`` lists of a record: versions, control, requests, SRM mismatch (None
        when not checked), and ``app``, the Serve application that ran it, when given: two apps
        of one model may keep their records in one file."""
        return {
            "versions": list(self.experiment.versions),
            "control": self.experiment.control,
            # A request failed over is a request of both versions: counted once here.
            "requests": sum(v.requests - v.retried for v in self.variants.values()),
            "srm_mismatch": self.srm.mismatch if self.srm.applicable else None,
            **({"app": app} if app is not None else {}),
        }


def read_report(data: Any) -> tuple[Report, list[str]]:
    """``data`` as a Report for a reader (the CLI), and the dotted paths of the fields it left out.

    A report of this ``REPORT_SCHEMA`` from a newer serve-ab may carry fields added since (a
    backwards-compatible addition does not bump the schema): those fields, and nothing else, are
    dropped, so an older reader still renders what it knows instead of refusing the whole report.
    Any other misfit (a field missing or of the wrong type, an unknown field in a report of
    another schema) raises the strict model's ``ValidationError``, as ``Report.model_validate``.
    """
    try:
        return Report.model_validate(data), []
    except ValidationError as e:
        first = e
        errors = e.errors()
        same_schema = isinstance(data, dict) and data.get("schema") == REPORT_SCHEMA
        if not same_schema or any(error["type"] != "extra_forbidden" for error in errors):
            raise
    trimmed = copy.deepcopy(data)
    found = [_drop(trimmed, error["loc"]) for error in errors]
    dropped = [path for path in found if path is not None]
    if len(dropped) < len(found):
        raise first  # a field it cannot find: the strict model's own error, not a guess
    return Report.model_validate(trimmed), dropped


def _drop(data: Any, loc: tuple[Any, ...]) -> str | None:
    """Delete the field at pydantic's ``loc`` in ``data``; its path as a reader would write it, or
    None when ``loc`` does not lead to an object of ``data``.

    A ``loc`` also names the member of a tagged union it checked (``feedback.correct.conversion.x``):
    a step that is the object's own tag (its ``kind``, the report's one discriminator) is that
    member, and skipped, even where the object holds a key of that name too: a newer feedback
    figure named ``mean`` or ``conversion`` was walked into instead (a number: AttributeError, a
    traceback in place of the report; an object: the whole report refused)."""
    node, path = data, []
    for step in loc[:-1]:
        if isinstance(node, dict) and node.get(_TAG_FIELD) == step:
            continue  # the union's member, not a field
        if isinstance(node, dict) and step in node or isinstance(node, list) and isinstance(step, int) \
                and 0 <= step < len(node):
            node = node[step]
            path.append(str(step))
        else:
            return None
    if not isinstance(node, dict):
        return None
    node.pop(loc[-1], None)
    return ".".join([*path, str(loc[-1])])


# The discriminator of the report's tagged unions (VariantResult.feedback).
_TAG_FIELD = "kind"


def report_json_schema() -> dict[str, Any]:
    """The JSON schema of ``Report.model_dump(mode="json")``, as published in docs/report.schema.json."""
    schema = Report.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


if __name__ == "__main__":
    print(json.dumps(report_json_schema(), indent=2))

//! Issue [L] row 6: the alerts for what needs a human (`deploy/prometheus/alerts.yaml`) are
//! valid rules, fire on the recorded series of `deploy/prometheus/alerts_test.yaml` and stay
//! silent where they should (promtool, built into `bin/` from its Go module), and the chart
//! ships exactly them as a PrometheusRule. That they query only series the operator serves is
//! checked with the dashboard's queries (`tests/dashboard.rs`).

#[path = "support/chart.rs"]
#[allow(dead_code)]
mod chart;

use chart::{CHART, repo, run, testbin};

#[test]
fn the_alert_rules_are_valid_and_pass_their_tests() {
    let dir = repo("deploy/prometheus");
    let checked = run(testbin("promtool")
        .current_dir(&dir)
        .args(["check", "rules", "alerts.yaml"]));
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = run(testbin("promtool")
        .current_dir(&dir)
        .args(["test", "rules", "alerts_test.yaml"]));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_chart_ships_the_alert_rules_as_a_prometheus_rule() {
    let rendered = run(testbin("helm").args([
        "template",
        "t",
        CHART,
        "--kube-version",
        "1.35.0",
        "--set",
        "prometheusRule.enabled=true,prometheusRule.labels.release=kube-prometheus-stack",
        "--show-only",
        "templates/prometheusrule.yaml",
    ]));
    let rule: serde_yaml::Value = serde_yaml::from_str(&rendered).expect("YAML");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let source: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("deploy/prometheus/alerts.yaml")).unwrap()).unwrap();
    assert_eq!(
        rule["spec"]["groups"], source["groups"],
        "the rules of deploy/prometheus/alerts.yaml"
    );
    let off = run(testbin("helm").args(["template", "t", CHART, "--kube-version", "1.35.0"]));
    assert!(!off.contains("PrometheusRule"), "opt-in");
}

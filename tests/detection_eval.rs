//! `clusterwatch eval detection` at its CI size: the real pipeline (offline summarizer, MiniLM
//! embeddings, online clusterer, every detector) over a seeded stream of organic traffic with
//! injected campaigns and hard negatives must meet the detection goals.

mod common;

use clusterwatch::eval::detection::scenario::{generate, ScenarioSpec};
use clusterwatch::eval::detection::{eval_settings, evaluate, print_report};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_small_detection_evaluation_meets_its_goals() {
    let spec = ScenarioSpec::small(17);
    let scenario = generate(&spec);
    let mut settings = eval_settings(None, spec.launch_ms()).expect("settings");
    settings.embedder.model_dir = common::repo_root().join("models/all-MiniLM-L6-v2");
    let report = evaluate(&settings, &scenario, "small", 17, None)
        .await
        .expect("evaluation runs");
    print_report(&report, &scenario);
    assert_eq!(
        report.critical_on_hard_negatives, 0,
        "no critical page for organic waves"
    );
    assert!(
        report.recall_at_20 >= 0.95,
        "recall {}",
        report.recall_at_20
    );
    assert!(report.precision >= 0.95, "precision {}", report.precision);
    assert!(
        report
            .median_ttd_from_20th_account_secs
            .is_some_and(|m| m <= 60.0),
        "median time to detect {:?}",
        report.median_ttd_from_20th_account_secs
    );
    assert!(report.goals_met);
    // Every hard negative stays quiet (not even a warning) at this size.
    for inj in report.injections.iter().filter(|i| i.negative) {
        assert!(inj.detected_by.is_empty(), "{inj:?}");
    }
}

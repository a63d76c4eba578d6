//! `clusterwatch bench summarize`: what the offline summarizer costs per conversation, by step,
//! on one core.
//!
//! The summarize stage is the pipeline's largest share of stage time with the static embedder
//! (`bench pipeline`), so its steps are measured on their own here: the PII scrub, the language
//! detector and the whole summary, over the bundled demo traffic (real SMS and request texts with
//! the injected campaign). The baseline in the same run is the scrub with every pass forced on
//! ([`scrub::scrub_every_pass`]); the run also checks that both give the same bytes for every
//! text, so the ratio it prints is never bought with a different answer.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::demo::traffic::{generate, MessageKind, TrafficSpec};
use crate::event::{ConversationEvent, Role};
use crate::summarize::offline::OfflineSummarizer;
use crate::summarize::{language, scrub};

/// What to run; see `clusterwatch bench summarize --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct SummarizeBenchArgs {
    /// Organic conversations to generate (the campaign is added on top).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Seconds each measurement runs (the texts are cycled).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Seed of the traffic generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Runs the benchmark and prints its table.
pub fn run(args: &SummarizeBenchArgs) -> anyhow::Result<()> {
    let events = demo_conversations(args.seed, args.events)?;
    let requests: Vec<String> = events.iter().filter_map(first_user_text).collect();
    anyhow::ensure!(
        !requests.is_empty(),
        "the generated traffic has no user text"
    );
    let budget = Duration::from_secs_f64(args.seconds.max(0.1));

    let differing = requests
        .iter()
        .filter(|t| scrub::scrub(t) != scrub::scrub_every_pass(t))
        .count();
    println!(
        "{} conversations, {} first user turns; scrub with skips == every pass on {} of {}",
        events.len(),
        requests.len(),
        requests.len() - differing,
        requests.len()
    );
    anyhow::ensure!(
        differing == 0,
        "{differing} texts scrub differently with the skips"
    );

    let summarizer = OfflineSummarizer::default();
    let every_pass = measure(&requests, budget, |t| scrub::scrub_every_pass(t).len());
    let skipping = measure(&requests, budget, |t| scrub::scrub(t).len());
    let lang = measure(&requests, budget, |t| language::detect_language(t).len());
    let whole = measure(&events, budget, |e| {
        summarizer.summarize_sync(e).map_or(0, |s| s.request.len())
    });

    println!(
        "{:<34} {:>12} {:>10}",
        "step (one core)", "per second", "µs each"
    );
    for (name, rate) in [
        ("scrub, every pass (baseline)", every_pass),
        ("scrub", skipping),
        ("language", lang),
        ("summarize (whole conversation)", whole),
    ] {
        println!("{name:<34} {rate:>12.0} {:>10.1}", 1e6 / rate);
    }
    println!(
        "scrub speed-up over every pass: {:.2}x",
        skipping / every_pass
    );
    Ok(())
}

/// The demo's traffic (`events` organic conversations plus the campaign), decoded; invalid and
/// duplicate messages are left out.
pub(crate) fn demo_conversations(
    seed: u64,
    events: usize,
) -> anyhow::Result<Vec<ConversationEvent>> {
    let spec = TrafficSpec {
        seed,
        organic_events: events,
        invalid_events: 0,
        duplicate_events: 0,
        ..TrafficSpec::default()
    };
    let limits = crate::config::DecodeLimits::default();
    let mut out = Vec::new();
    for message in generate(&spec) {
        if matches!(message.kind, MessageKind::Organic | MessageKind::Campaign) {
            out.push(crate::decode::decode(&message.payload, &limits)?.event);
        }
    }
    Ok(out)
}

fn first_user_text(event: &ConversationEvent) -> Option<String> {
    event
        .turns
        .iter()
        .find(|t| t.role == Role::User)
        .map(|t| t.content.clone())
}

/// Items per second of `work` over `items`, cycled until `budget` has passed (the clock is read
/// once per item, a few tens of nanoseconds against the microseconds measured).
fn measure<T>(items: &[T], budget: Duration, mut work: impl FnMut(&T) -> usize) -> f64 {
    let start = Instant::now();
    let mut done = 0u64;
    for item in items.iter().cycle() {
        black_box(work(black_box(item)));
        done += 1;
        if start.elapsed() >= budget {
            break;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

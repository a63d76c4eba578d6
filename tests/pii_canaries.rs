//! Personal data planted in conversations never reaches anything clusterwatch emits.
//!
//! 1,000 valid events (plus a dozen invalid lines) carry unique canaries in the user's text:
//! e-mail addresses, phone numbers in six national formats, Luhn-valid card numbers, mod-97-valid
//! IBANs from six countries, IPv4 addresses and full names (introduced by "My name is", "I'm" or
//! "i'm", "This is … from" or a "Regards," sign-off, since the scrubber finds names by context).
//! Every account id is a canary too. 700 of the events are a campaign — one request template sent
//! by 350 accounts within eight minutes of event time — so the canaries sit in a cluster that
//! passes the privacy gate, is shown in the cluster table and fires an alert: the place a leak
//! would do the most harm, and the strongest test. Organic background traffic from the bundled
//! generator is mixed in, and the whole stream is in event-time order.
//!
//! The stream is replayed twice, each time through the real binary with the real MiniLM model
//! (debug logs, stdout and every file output) and in process (the same files, metrics, alert
//! records, the HTTP API, an encoded snapshot):
//!
//! * with the offline summarizer, whose scrubber is the only thing between raw text and summaries;
//! * with the LLM summarizer against a fake model that echoes the user's first line back as the
//!   summary, with `llm.scrub_transcript = false` so the model really receives the raw canaries
//!   (asserted): this proves that a leaky model's answer is scrubbed on the way back in.
//!
//! The in-process runs embed with the feature-hashing embedder: the embedder decides how events
//! group, not what text reaches an output, and a third and fourth pass through MiniLM would take
//! this test far past its time budget on a two-core machine. The campaign is asserted visible in
//! both the binary's and the in-process outputs.
//!
//! Each canary is searched for case-insensitively in its planted form and in derived forms (digits
//! only, compact IBAN, the e-mail's local part and its domain with `,` for `.` as the fake model
//! rewrites it, first and last name alone) in: /metrics (rendered and over HTTP), debug logs, the
//! binary's stdout, alert records (file and in memory), `/api/clusters`, the snapshot, assignments
//! (where conversation ids are allowed by contract, account ids are not), the cluster table,
//! lifecycle records and the dead-letter file. Conversation ids are allowed only in assignments.
//! A third test runs the same corpus through Kafka and the scale-out roles (`run --role enrich`
//! and `run --role cluster`) and scans the internal topic between them, both roles' trace logs,
//! metrics and API, the shard snapshots, the alerts topic and the dead-letter headers.
//! The fake model also turns dotted quads into `81,175,18,151`; those are counted and printed, not
//! asserted (see [`Scanners::rewritten_ips`]).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use clusterwatch::alert::AlertStatus;
use clusterwatch::config::SummarizerKind;
use clusterwatch::demo::traffic::{self, TrafficSpec};
use clusterwatch::embed::hashing::HashingEmbedder;
use clusterwatch::export::clusters::ClusterTable;
use clusterwatch::export::view::ClusterView;
use clusterwatch::export::Metrics;
use common::mock_ai::{MockAi, MOCK_KEY};
use common::*;
use serde_json::{json, Value};

/// Environment variable holding the fake model's key (test process and child binary); not
/// `CLUSTERWATCH_`-prefixed, which the binary would read as a setting.
const KEY_VAR: &str = "PII_CANARIES_MOCK_AI_KEY";

const CAMPAIGN_EVENTS: usize = 700;
const CAMPAIGN_ACCOUNTS: usize = 350;
const OTHER_CANARY_EVENTS: usize = 300;
const ORGANIC_EVENTS: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Email,
    Phone,
    Card,
    Iban,
    Ipv4,
    Name,
    Account,
    Conversation,
}

/// One event's canaries.
struct Pii {
    email: String,
    phone: String,
    card: String,
    iban: String,
    ip: String,
    first: String,
    last: String,
}

impl Pii {
    fn name(&self) -> String {
        format!("{} {}", self.first, self.last)
    }
}

const FIRST_SYLLABLES: [&str; 12] = [
    "zor", "vex", "qui", "lun", "dra", "mok", "tyr", "fae", "xan", "bri", "kel", "osk",
];
const LAST_SYLLABLES: [&str; 12] = [
    "quel", "bran", "dosk", "virn", "holt", "zeph", "marn", "tosk", "gild", "wren", "pell", "yarn",
];

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Luhn check digit for `payload` (the card number without its last digit).
fn luhn_check_digit(payload: &str) -> char {
    let mut sum = 0u32;
    for (i, d) in payload.bytes().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    char::from(b'0' + ((10 - sum % 10) % 10) as u8)
}

fn luhn_valid(number: &str) -> bool {
    let digits: Vec<u32> = number
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|d| u32::from(d - b'0'))
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (1, x) if x > 9 => x - 9,
            (1, x) => x,
            _ => d,
        })
        .sum();
    !digits.is_empty() && sum % 10 == 0
}

/// ISO 13616 remainder of `country`, `check` and `bban` rearranged.
fn iban_remainder(country: &str, check: &str, bban: &str) -> u32 {
    let mut rem = 0u32;
    for c in bban.chars().chain(country.chars()).chain(check.chars()) {
        rem = match c {
            '0'..='9' => (rem * 10 + c.to_digit(10).unwrap_or(0)) % 97,
            _ => (rem * 100 + (c.to_ascii_uppercase() as u32 - 'A' as u32 + 10)) % 97,
        };
    }
    rem
}

fn iban(country: &str, bban: &str) -> String {
    let check = 98 - iban_remainder(country, "00", bban);
    format!("{country}{check:02}{bban}")
}

fn iban_valid(compact: &str) -> bool {
    iban_remainder(&compact[..2], &compact[2..4], &compact[4..]) == 1
}

/// Groups of four, as IBANs and cards are printed.
fn grouped(s: &str, sep: &str) -> String {
    s.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(sep)
}

/// The canaries of event `i`: unique per event, and varied in format by `i`.
fn pii(i: usize) -> Pii {
    let domains = [
        "example.org",
        "example.net",
        "mail.example.com",
        "post.example.co.uk",
    ];
    let email = format!("qxmail{i:04}canary@{}", domains[i % domains.len()]);
    let phone = match i % 6 {
        0 => format!("+44 7700 9{i:05}"),
        1 => format!("+1 (555) {:03}-{:04}", 201 + i % 700, 1000 + i),
        2 => format!("+49 30 {:07}", 2_000_000 + i * 7),
        3 => {
            let s = format!("{:08}", 10_000_000 + i * 13);
            format!("+33 6 {} {} {} {}", &s[0..2], &s[2..4], &s[4..6], &s[6..8])
        }
        4 => format!("07911 1{i:05}"),
        _ => format!("(415) 555-{i:04}"),
    };
    let card = match i % 4 {
        0 => {
            let p = format!("4929{:011}", 12_345_678_901 + i * 7_919);
            grouped(&format!("{p}{}", luhn_check_digit(&p)), " ")
        }
        1 => {
            let p = format!("5188{:011}", 40_000_000_000 + i * 6_007);
            grouped(&format!("{p}{}", luhn_check_digit(&p)), "-")
        }
        2 => {
            let p = format!("4556{:011}", 70_123_456_789 + i * 4_441);
            format!("{p}{}", luhn_check_digit(&p))
        }
        _ => {
            let p = format!("3782{:010}", 8_224_000_000 + i * 3_301);
            let n = format!("{p}{}", luhn_check_digit(&p));
            format!("{} {} {}", &n[0..4], &n[4..10], &n[10..15])
        }
    };
    let compact = match i % 6 {
        0 => iban(
            "GB",
            &format!(
                "{}{:06}{:08}",
                ["WEST", "NWBK", "BARC", "MIDL"][i % 4],
                200_000 + i,
                31_000_000 + i * 97
            ),
        ),
        1 => iban(
            "DE",
            &format!("{:08}{:010}", 37_040_044 + i, 532_013_000 + i * 13),
        ),
        2 => iban("FR", &format!("2004101005500{i:06}M{:02}", i % 97)),
        3 => iban(
            "NL",
            &format!(
                "{}{:010}",
                ["ABNA", "RABO", "INGB"][i % 3],
                417_164_300 + i * 31
            ),
        ),
        4 => iban("ES", &format!("21000418450{:09}", 200_051_332 + i * 17)),
        _ => iban("IT", &format!("X0542811101{:012}", 123_456 + i * 101)),
    };
    let iban = if (i / 6) % 2 == 0 {
        grouped(&compact, " ")
    } else {
        compact
    };
    let ip = format!(
        "{}.{}.{}.{}",
        [81, 172, 203, 94][i % 4],
        i / 4,
        7 + i % 13,
        1 + (i * 37) % 250
    );
    let first = capitalised(&format!(
        "{}{}{}",
        FIRST_SYLLABLES[i % 12],
        FIRST_SYLLABLES[(i / 12) % 12],
        FIRST_SYLLABLES[(i / 144) % 12]
    ));
    let last = capitalised(&format!(
        "{}{}{}",
        LAST_SYLLABLES[(i / 144) % 12],
        LAST_SYLLABLES[i % 12],
        LAST_SYLLABLES[(i / 12) % 12]
    ));
    Pii {
        email,
        phone,
        card,
        iban,
        ip,
        first,
        last,
    }
}

/// The campaign's request, the name introduced in one of four ways. The canaries are all on the
/// first line, which is what the fake model echoes back. Texts are kept short: embedding cost
/// grows with length, and this test embeds every event four times.
fn campaign_text(i: usize, p: &Pii) -> String {
    let body = format!(
        "text everyone on my list: parcel held, reply to {} or call {}, fee by card {} or IBAN {}, \
         from IP {}",
        p.email, p.phone, p.card, p.iban, p.ip
    );
    let name = p.name();
    match i % 4 {
        0 => format!("My name is {name}. {}", capitalised(&body)),
        1 => format!("I'm {name}, {body}"),
        2 => format!("This is {name} from the depot. {}", capitalised(&body)),
        _ => format!("{}\nRegards,\n{name}", capitalised(&body)),
    }
}

/// Varied, non-campaign requests carrying the same kinds of canaries.
fn other_text(k: usize, p: &Pii) -> String {
    let (name, email, phone, card, iban, ip) =
        (p.name(), &p.email, &p.phone, &p.card, &p.iban, &p.ip);
    match k % 5 {
        0 => format!(
            "My name is {name}, update my billing: card {card}, IBAN {iban}, mail {email}, phone \
             {phone}, router {ip}"
        ),
        1 => format!(
            "Write my bank a complaint about card {card}; reply {email}, phone {phone}, IBAN \
             {iban}, IP {ip}\nRegards,\n{name}"
        ),
        2 => format!(
            "hi, i'm {name}, make a vCard: {email}, {phone}, IBAN {iban}, card {card}, server {ip}"
        ),
        3 => format!(
            "This is {name} from finance. Summarize the dispute: card {card}, IBAN {iban}, \
             {email}, {phone}, IP {ip}"
        ),
        _ => format!(
            "Translate to French: call {phone} or mail {email}, IBAN {iban}, card {card}, VPN \
             {ip}. Kind regards, {name}"
        ),
    }
}

fn ms_to_rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn event_json(conv: &str, account: &str, ms: i64, surface: &str, user: &str, reply: &str) -> Value {
    json!({
        "conversation_id": conv,
        "account_id": account,
        "timestamp": ms_to_rfc3339(ms),
        "surface": surface,
        "model": "assistant-v4",
        "turns": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply},
        ],
    })
}

/// Invalid line `j`: each reject reason the decoder has, every one full of canaries.
fn invalid_line(j: usize, p: &Pii, ms: i64) -> Vec<u8> {
    let conv = format!("conv-canary-dl-{j:02}");
    let account = format!("acct-canary-dl-{j:02}");
    let text = campaign_text(j, p);
    let mut v = event_json(&conv, &account, ms, "chat", &text, "ok");
    match j {
        0 | 1 => {
            if let Some(o) = v.as_object_mut() {
                o.remove(["conversation_id", "account_id"][j]);
            }
        }
        2 => v["timestamp"] = json!(format!("the day {} called", p.phone)),
        3 => v["surface"] = json!(p.name()),
        4 => v["turns"][0]["role"] = json!(format!("customer {}", p.email)),
        5 => {
            let s = v.to_string();
            return s.as_bytes()[..s.len() - 2].to_vec();
        }
        6 => v["turns"] = json!([{"role": "assistant", "content": text}]),
        7 => {
            let s = v.to_string();
            let at = s.find("everyone").unwrap_or(s.len() / 2);
            let mut bytes = s.into_bytes();
            bytes.insert(at, 0xFF);
            return bytes;
        }
        8 => v["signals"] = json!({"refused": p.email, "classifier_flags": [p.card]}),
        9 => {
            v["turns"][0]["content"] = json!(format!("{text} {}", "pad ".repeat(280_000)));
        }
        10 => v["turns"] = json!(text),
        _ => v["timestamp"] = Value::Null,
    }
    v.to_string().into_bytes()
}

const INVALID_LINES: usize = 12;

/// The input stream and everything planted in it.
struct Corpus {
    lines: Vec<Vec<u8>>,
    /// Planted canaries by kind (distinct values).
    planted: BTreeMap<Kind, BTreeSet<String>>,
    /// The campaign's conversation ids.
    campaign: BTreeSet<String>,
    /// Every canary event's conversation id (valid ones).
    canary_conversations: BTreeSet<String>,
    /// Campaign e-mails, to prove the fake model saw raw text.
    campaign_emails: Vec<String>,
}

fn corpus() -> Corpus {
    let start_ms = Utc
        .with_ymd_and_hms(2026, 11, 27, 8, 0, 0)
        .single()
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    let mut timed: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut planted: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    let mut plant = |p: &Pii, account: &str| {
        for (kind, value) in [
            (Kind::Email, p.email.clone()),
            (Kind::Phone, p.phone.clone()),
            (Kind::Card, p.card.clone()),
            (Kind::Iban, p.iban.clone()),
            (Kind::Ipv4, p.ip.clone()),
            (Kind::Name, p.name()),
            (Kind::Account, account.to_string()),
        ] {
            planted.entry(kind).or_default().insert(value);
        }
    };
    let mut campaign = BTreeSet::new();
    let mut canary_conversations = BTreeSet::new();
    let mut campaign_emails = Vec::new();

    // The campaign: 350 accounts, two messages each, 08:20–08:28 event time.
    for i in 0..CAMPAIGN_EVENTS {
        let p = pii(i);
        let conv = format!("conv-canary-{i:04}");
        let account = format!("acct-canary-{:04}", i * CAMPAIGN_ACCOUNTS / CAMPAIGN_EVENTS);
        let ms = start_ms + 20 * 60_000 + (i as i64) * 480_000 / CAMPAIGN_EVENTS as i64;
        let v = event_json(
            &conv,
            &account,
            ms,
            "api",
            &campaign_text(i, &p),
            "Done. The message is ready to send.",
        );
        timed.push((ms, v.to_string().into_bytes()));
        plant(&p, &account);
        campaign_emails.push(p.email.clone());
        campaign.insert(conv.clone());
        canary_conversations.insert(conv);
    }
    // Other canary requests, one account each, spread over the hour.
    for k in 0..OTHER_CANARY_EVENTS {
        let i = CAMPAIGN_EVENTS + k;
        let p = pii(i);
        let conv = format!("conv-canary-{i:04}");
        let account = format!("acct-canary-{:04}", CAMPAIGN_ACCOUNTS + k);
        let ms = start_ms + (k as i64) * 12_000 + 5_000;
        let v = event_json(
            &conv,
            &account,
            ms,
            "chat",
            &other_text(k, &p),
            "Sure, here it is.",
        );
        timed.push((ms, v.to_string().into_bytes()));
        plant(&p, &account);
        canary_conversations.insert(conv);
    }
    // Invalid lines, also full of canaries.
    for j in 0..INVALID_LINES {
        let p = pii(CAMPAIGN_EVENTS + OTHER_CANARY_EVENTS + j);
        let ms = start_ms + (j as i64) * 300_000 + 1_000;
        timed.push((ms, invalid_line(j, &p, ms)));
        plant(&p, &format!("acct-canary-dl-{j:02}"));
    }
    // Organic background.
    let spec = TrafficSpec {
        seed: 23,
        organic_events: ORGANIC_EVENTS,
        duration_secs: 3600,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    for m in traffic::generate(&spec) {
        timed.push((m.event_time_ms, m.payload));
    }
    // Arrival in event-time order, as a live stream would deliver them (stable for ties).
    timed.sort_by_key(|(ms, _)| *ms);
    Corpus {
        lines: timed.into_iter().map(|(_, l)| l).collect(),
        planted,
        campaign,
        canary_conversations,
        campaign_emails,
    }
}

/// What is searched for: every planted canary and the forms derived from it.
fn needles(corpus: &Corpus, conversation_ids_allowed: bool) -> Vec<(Kind, String)> {
    let mut out: Vec<(Kind, String)> = Vec::new();
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    for (kind, values) in &corpus.planted {
        for v in values {
            out.push((*kind, v.clone()));
            match kind {
                Kind::Email => {
                    // The local part alone, and the fake model's `.`→`,` rewriting.
                    out.push((*kind, v.split('@').next().unwrap_or(v).to_string()));
                    out.push((*kind, v.replace('.', ",")));
                }
                Kind::Phone | Kind::Card => out.push((*kind, digits(v))),
                Kind::Iban => out.push((*kind, v.replace(' ', ""))),
                Kind::Name => {
                    for part in v.split(' ') {
                        out.push((*kind, part.to_string()));
                    }
                }
                Kind::Ipv4 | Kind::Account | Kind::Conversation => {}
            }
        }
    }
    // Any of our account ids, and (where not allowed) any of our conversation ids.
    out.push((Kind::Account, "acct-canary".into()));
    if !conversation_ids_allowed {
        out.push((Kind::Conversation, "conv-canary".into()));
    }
    out
}

/// Finds every needle in a text at once (one automaton), case-insensitively.
struct Scanner {
    re: regex::Regex,
    kinds: HashMap<String, Kind>,
}

struct Leak {
    kind: Kind,
    needle: String,
    context: String,
}

impl Scanner {
    fn new(needles: &[(Kind, String)]) -> Scanner {
        let mut kinds = HashMap::new();
        for (k, n) in needles {
            kinds.insert(n.to_lowercase(), *k);
        }
        let mut alternatives: Vec<&String> = kinds.keys().collect();
        // Longest first, so a match names the most specific form.
        alternatives.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let pattern = alternatives
            .iter()
            .map(|s| regex::escape(s))
            .collect::<Vec<_>>()
            .join("|");
        let re = regex::RegexBuilder::new(&pattern)
            .size_limit(1 << 30)
            .dfa_size_limit(1 << 28)
            .build()
            .expect("needle automaton");
        Scanner { re, kinds }
    }

    fn leaks(&self, text: &str) -> Vec<Leak> {
        let lower = text.to_lowercase();
        self.re
            .find_iter(&lower)
            .map(|m| {
                let from = lower.floor_char_boundary_compat(m.start().saturating_sub(80));
                let to = lower.floor_char_boundary_compat((m.end() + 80).min(lower.len()));
                Leak {
                    kind: self.kinds.get(m.as_str()).copied().unwrap_or(Kind::Name),
                    needle: m.as_str().to_string(),
                    context: lower[from..to].to_string(),
                }
            })
            .collect()
    }
}

trait CharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl CharBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Outputs checked and bytes scanned in one mode, and what was found where.
#[derive(Default)]
struct Checked {
    outputs: BTreeMap<String, usize>,
    /// (output, kind) → occurrences of canaries.
    leaks: BTreeMap<(String, Kind), usize>,
    examples: Vec<String>,
    /// (output) → occurrences of the fake model's comma-rewritten IPv4 addresses (reported only).
    rewritten_ips: BTreeMap<String, usize>,
}

impl Checked {
    fn scan(&mut self, scanners: &Scanners, assignments: bool, what: &str, text: &str) {
        *self.outputs.entry(what.to_string()).or_default() += text.len();
        let scanner = if assignments {
            &scanners.in_assignments
        } else {
            &scanners.everywhere
        };
        for (n, l) in scanner.leaks(text).into_iter().enumerate() {
            *self.leaks.entry((what.to_string(), l.kind)).or_default() += 1;
            if n < 3 {
                self.examples.push(format!(
                    "{what}: {:?} canary {:?} in …{}…",
                    l.kind, l.needle, l.context
                ));
            }
        }
        let rewritten = scanners.rewritten_ips.leaks(text).len();
        if rewritten > 0 {
            *self.rewritten_ips.entry(what.to_string()).or_default() += rewritten;
        }
    }

    /// `output=bytes, …` for the closing report.
    fn outputs_summary(&self) -> String {
        self.outputs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn assert_clean(&self, mode: &str) {
        assert!(
            self.leaks.is_empty(),
            "{mode}: leaks by (output, kind): {:?}\nexamples:\n{}",
            self.leaks,
            self.examples.join("\n")
        );
    }
}

/// The needle sets: conversation ids are allowed in assignments only.
struct Scanners {
    everywhere: Scanner,
    in_assignments: Scanner,
    /// `81,175,18,151`: a model that rewrote dots as commas would return an address in a form no
    /// person writes for one. Recognising comma-separated quads would redact ordinary lists and
    /// thousands-separated numbers (`1,200,100,250`), so the scrubber does not, and these are
    /// counted and printed rather than asserted. (The test server keeps dots inside tokens, so
    /// the dotted canaries themselves come back and must be scrubbed.)
    rewritten_ips: Scanner,
}

impl Scanners {
    fn new(corpus: &Corpus) -> Scanners {
        Scanners {
            everywhere: Scanner::new(&needles(corpus, false)),
            in_assignments: Scanner::new(&needles(corpus, true)),
            rewritten_ips: Scanner::new(
                &corpus.planted[&Kind::Ipv4]
                    .iter()
                    .map(|ip| (Kind::Ipv4, ip.replace('.', ",")))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Offline,
    Llm,
}

/// Runs the binary's replay; returns (stdout, stderr).
fn replay_binary(input: &Path, out: &Path, extra_env: &[(String, String)]) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clusterwatch"));
    cmd.args(["replay", "--input"])
        .arg(input)
        .arg("--alerts-out")
        .arg(out.join("alerts.jsonl"))
        .arg("--assignments-out")
        .arg(out.join("assignments.jsonl"))
        .arg("--clusters-out")
        .arg(out.join("clusters.json"))
        .arg("--dead-letter-out")
        .arg(out.join("dead-letter.jsonl"))
        .arg("--lifecycle-out")
        .arg(out.join("lifecycle.jsonl"))
        .env(
            "CLUSTERWATCH_EMBEDDER__MODEL_DIR",
            repo_root().join("models/all-MiniLM-L6-v2"),
        )
        .env("CLUSTERWATCH_LOG", "debug")
        // As in `test_settings`: the stream is compressed, account history matures in 10 minutes.
        .env("CLUSTERWATCH_CLUSTER__FRESH_ACCOUNT_SECS", "600");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("run clusterwatch replay");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "replay failed:\n{stderr}");
    (stdout, stderr)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run_mode(mode: Mode) {
    let started = std::time::Instant::now();
    let mut phases: Vec<(&str, f64)> = Vec::new();
    let lap = |name: &'static str, phases: &mut Vec<(&str, f64)>| {
        let total: f64 = phases.iter().map(|p| p.1).sum();
        phases.push((name, started.elapsed().as_secs_f64() - total));
    };
    let corpus = corpus();
    let scanners = Scanners::new(&corpus);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("canaries.jsonl");
    let mut bytes = Vec::new();
    for l in &corpus.lines {
        bytes.extend_from_slice(l);
        bytes.push(b'\n');
    }
    std::fs::write(&input, bytes).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mock = match mode {
        Mode::Offline => None,
        Mode::Llm => Some(rt.block_on(MockAi::start(17, 384))),
    };
    std::env::set_var(KEY_VAR, MOCK_KEY);
    let mut settings = test_settings();
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(mock) = &mock {
        settings.summarizer.kind = SummarizerKind::Llm;
        settings.llm.endpoint = mock.url();
        settings.llm.api_key_env = KEY_VAR.into();
        settings.llm.scrub_transcript = false;
        settings.llm.name_clusters = false;
        settings.llm.audit_labels = false;
        for (k, v) in [
            ("CLUSTERWATCH_SUMMARIZER__KIND", "llm".to_string()),
            ("CLUSTERWATCH_LLM__ENDPOINT", mock.url()),
            ("CLUSTERWATCH_LLM__API_KEY_ENV", KEY_VAR.to_string()),
            (KEY_VAR, MOCK_KEY.to_string()),
            ("CLUSTERWATCH_LLM__SCRUB_TRANSCRIPT", "false".to_string()),
            ("CLUSTERWATCH_LLM__NAME_CLUSTERS", "false".to_string()),
            ("CLUSTERWATCH_LLM__AUDIT_LABELS", "false".to_string()),
        ] {
            env.push((k.to_string(), v));
        }
    }
    let mut checked = Checked::default();

    // 1. The real binary with the real model: debug logs, stdout and every file output.
    let out = dir.path().join("binary");
    std::fs::create_dir_all(&out).unwrap();
    lap("setup", &mut phases);
    let (stdout, logs) = replay_binary(&input, &out, &env);
    lap("binary replay", &mut phases);
    checked.scan(&scanners, false, "binary: logs (debug)", &logs);
    checked.scan(&scanners, false, "binary: stdout", &stdout);
    scan_files(&mut checked, &scanners, "binary", &out);
    let binary = campaign_visibility(&corpus, &out);

    // 2. In process: the same files, metrics, alert records, the HTTP API, a snapshot.
    let inproc = dir.path().join("in-process");
    std::fs::create_dir_all(&inproc).unwrap();
    let outputs = clusterwatch::replay::ReplayOutputs {
        alerts: Some(inproc.join("alerts.jsonl")),
        assignments: Some(inproc.join("assignments.jsonl")),
        clusters: Some(inproc.join("clusters.json")),
        lifecycle: Some(inproc.join("lifecycle.jsonl")),
        dead_letter: Some(inproc.join("dead-letter.jsonl")),
        ..Default::default()
    };
    let metrics = Metrics::new();
    let report = rt
        .block_on(clusterwatch::replay::replay(
            settings,
            &input,
            &outputs,
            metrics.clone(),
            Some(Arc::new(HashingEmbedder::new(384))),
            Vec::new(),
        ))
        .expect("in-process replay");
    lap("in-process replay", &mut phases);
    scan_files(&mut checked, &scanners, "in-process", &inproc);
    let in_process = campaign_visibility(&corpus, &inproc);
    let rendered = metrics.render();
    assert!(rendered.contains("clusterwatch_events_clustered_total"));
    checked.scan(&scanners, false, "in-process: /metrics (render)", &rendered);
    let records = report
        .alerts
        .iter()
        .map(|a| serde_json::to_string(a).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    checked.scan(
        &scanners,
        false,
        "in-process: alert records (memory)",
        &records,
    );
    assert!(
        report
            .alerts
            .iter()
            .any(|a| a.status == AlertStatus::Firing && a.cluster_id == Some(in_process.cluster)),
        "the in-process report holds the campaign's alert"
    );
    // As the snapshotter writes it: cluster state and the detectors' memory (open alerts, launch
    // windows), which is JSON inside the body, so the scanners read it as text.
    let mut body = report
        .state
        .to_snapshot("conversations", Default::default());
    body.detector = Some(report.detector.snapshot());
    let snapshot = clusterwatch::cluster::snapshot::encode(&body);
    checked.scan(
        &scanners,
        false,
        "in-process: snapshot",
        &String::from_utf8_lossy(&snapshot),
    );
    let table = ClusterTable::build(&report.state, &report.gate);
    assert!(table
        .clusters
        .iter()
        .any(|r| r.cluster_id == in_process.cluster));
    let view = Arc::new(ClusterView::default());
    view.publish(&table);
    let (trigger, shutdown) = clusterwatch::shutdown::channel();
    let (api_clusters, api_metrics) = rt.block_on(async {
        let health = Arc::new(clusterwatch::export::http::Health::default());
        health.set_running();
        let (addr, handle) = clusterwatch::export::http::serve(
            "127.0.0.1:0",
            metrics.clone(),
            health,
            view.clone(),
            shutdown,
        )
        .await
        .expect("serve");
        let get = |path: &'static str| async move {
            let r = reqwest::get(format!("http://{addr}{path}"))
                .await
                .expect("GET");
            assert!(r.status().is_success(), "GET {path}: {}", r.status());
            r.text().await.expect("body")
        };
        let clusters = get("/api/clusters").await;
        let metrics = get("/metrics").await;
        trigger.trigger();
        let _ = handle.await;
        (clusters, metrics)
    });
    checked.scan(
        &scanners,
        false,
        "in-process: GET /api/clusters",
        &api_clusters,
    );
    checked.scan(&scanners, false, "in-process: GET /metrics", &api_metrics);
    let served: Value = serde_json::from_str(&api_clusters).unwrap();
    assert!(
        served["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["cluster_id"].as_u64() == Some(in_process.cluster)),
        "/api/clusters serves the campaign's cluster"
    );
    lap("HTTP and scans", &mut phases);

    let by_llm = metrics.summaries.with_label_values(&["llm"]).get();
    let by_fallback = metrics.summaries.with_label_values(&["fallback"]).get();
    let valid_events = (CAMPAIGN_EVENTS + OTHER_CANARY_EVENTS + ORGANIC_EVENTS) as u64;
    let mut prompts_with_raw = 0;
    if let Some(mock) = &mock {
        // The model really saw the raw canaries (both runs' requests), and answered every one.
        let prompts = mock.prompts.lock().unwrap().clone();
        prompts_with_raw = prompts
            .iter()
            .filter(|p| {
                corpus
                    .campaign_emails
                    .iter()
                    .any(|e| p.contains(e.as_str()))
            })
            .count();
        assert!(
            prompts_with_raw >= 2 * CAMPAIGN_EVENTS,
            "the fake model received raw canaries: {prompts_with_raw} prompts"
        );
        assert_eq!(by_llm, valid_events, "every summary came from the model");
        assert_eq!(by_fallback, 0);
        // The logs really were at debug level (the HTTP client logs every request there).
        assert!(logs.contains("DEBUG"), "debug logs captured");
    }

    eprintln!(
        "pii_canaries [{mode:?}]: events {} ({} campaign, {} other canary, {} invalid, {} \
         organic); \
         canaries planted: {}; campaign: binary {binary}, in-process {in_process}; \
         summaries (in-process) llm={by_llm} fallback={by_fallback}; prompts carrying raw canaries \
         {prompts_with_raw}",
        corpus.lines.len(),
        CAMPAIGN_EVENTS,
        OTHER_CANARY_EVENTS,
        INVALID_LINES,
        ORGANIC_EVENTS,
        corpus
            .planted
            .iter()
            .map(|(k, v)| format!("{k:?}={}", v.len()))
            .collect::<Vec<_>>()
            .join(" "),
    );
    eprintln!(
        "pii_canaries [{mode:?}]: {} outputs checked, {} bytes scanned: {}",
        checked.outputs.len(),
        checked.outputs.values().sum::<usize>(),
        checked.outputs_summary()
    );
    eprintln!(
        "pii_canaries [{mode:?}]: comma-rewritten IPv4s (fake-model artefact, reported \
         only): {:?}; \
         seconds: {}",
        checked.rewritten_ips,
        phases
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    checked.assert_clean(&format!("{mode:?}"));
}

/// Scans the five replay files in `dir`; conversation ids are allowed in assignments only.
fn scan_files(checked: &mut Checked, scanners: &Scanners, run: &str, dir: &Path) {
    for name in [
        "alerts.jsonl",
        "clusters.json",
        "lifecycle.jsonl",
        "dead-letter.jsonl",
        "assignments.jsonl",
    ] {
        let text = read(&dir.join(name));
        checked.scan(
            scanners,
            name == "assignments.jsonl",
            &format!("{run}: {name}"),
            &text,
        );
    }
    let dead = read(&dir.join("dead-letter.jsonl"));
    assert_eq!(dead.lines().count(), INVALID_LINES, "every invalid line");
}

/// Where the campaign went in one run's outputs.
struct Visibility {
    cluster: u64,
    size: usize,
    visible_clusters: usize,
    firing: BTreeSet<u64>,
}

impl std::fmt::Display for Visibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cluster {} holds {} of {CAMPAIGN_EVENTS} (of {} visible clusters), firing alerts \
             on {:?}",
            self.cluster, self.size, self.visible_clusters, self.firing
        )
    }
}

/// The campaign is visible — its cluster in the table and a firing alert on it — so the scans
/// looked where a leak would matter most.
fn campaign_visibility(corpus: &Corpus, dir: &Path) -> Visibility {
    let mut campaign_clusters: BTreeMap<u64, usize> = BTreeMap::new();
    let mut assigned_canaries = 0;
    for line in read(&dir.join("assignments.jsonl")).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let conv = v["conversation_id"].as_str().unwrap_or_default();
        if corpus.canary_conversations.contains(conv) {
            assigned_canaries += 1;
        }
        if corpus.campaign.contains(conv) {
            *campaign_clusters
                .entry(v["cluster_id"].as_u64().unwrap())
                .or_default() += 1;
        }
    }
    assert_eq!(
        assigned_canaries,
        corpus.canary_conversations.len(),
        "every canary event was clustered ({})",
        dir.display()
    );
    let (&cluster, &size) = campaign_clusters
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("campaign assigned");
    assert!(
        size * 2 >= CAMPAIGN_EVENTS,
        "the campaign mostly forms one cluster: {campaign_clusters:?}"
    );
    let table: Value = serde_json::from_str(&read(&dir.join("clusters.json"))).unwrap();
    let visible: BTreeSet<u64> = table["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["cluster_id"].as_u64())
        .collect();
    assert!(
        visible.contains(&cluster),
        "the campaign's cluster {cluster} is in the table: {visible:?} ({})",
        dir.display()
    );
    let firing: BTreeSet<u64> = read(&dir.join("alerts.jsonl"))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["status"] == "firing")
        .filter_map(|v| v["cluster_id"].as_u64())
        .collect();
    assert!(
        firing.contains(&cluster),
        "an alert fired on the campaign's cluster {cluster}: firing {firing:?} ({})",
        dir.display()
    );
    Visibility {
        cluster,
        size,
        visible_clusters: visible.len(),
        firing,
    }
}

#[test]
fn planted_canaries_are_valid_and_unique() {
    let corpus = corpus();
    let cards = &corpus.planted[&Kind::Card];
    let ibans = &corpus.planted[&Kind::Iban];
    let n = CAMPAIGN_EVENTS + OTHER_CANARY_EVENTS + INVALID_LINES;
    for kind in [
        Kind::Email,
        Kind::Phone,
        Kind::Card,
        Kind::Iban,
        Kind::Ipv4,
        Kind::Name,
    ] {
        assert_eq!(
            corpus.planted[&kind].len(),
            n,
            "{kind:?} canaries are unique"
        );
    }
    assert!(cards.iter().all(|c| luhn_valid(c)), "Luhn-valid cards");
    assert!(
        ibans.iter().all(|i| iban_valid(&i.replace(' ', ""))),
        "mod-97-valid IBANs"
    );
    assert!(iban_valid("GB82WEST12345698765432") && !iban_valid("GB82WEST12345698765433"));
    let countries: BTreeSet<&str> = ibans.iter().map(|i| &i[..2]).collect();
    assert!(countries.len() >= 6, "{countries:?}");
    assert!(corpus.planted[&Kind::Ipv4]
        .iter()
        .all(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()));
    let mut names = BTreeSet::new();
    for full in &corpus.planted[&Kind::Name] {
        for part in full.split(' ') {
            assert!(names.insert(part.to_lowercase()), "name part {part} unique");
        }
    }
    assert_eq!(corpus.lines.len(), n + ORGANIC_EVENTS);
}

#[test]
fn offline_summaries_leak_no_canary_anywhere() {
    run_mode(Mode::Offline);
}

#[test]
fn a_leaky_llm_summary_is_scrubbed_before_any_output() {
    run_mode(Mode::Llm);
}

/// The scale-out roles (`run --role enrich` and `run --role cluster`, see `src/scale/`) put one
/// more thing between the raw text and the outputs: the internal topic. Its records carry hashed
/// identities, the scrubbed summary and the vector, and must hold no canary; the cluster role's
/// outputs (its API, metrics, trace logs, shard snapshots, the alerts topic) and the enrich role's
/// (trace logs, metrics, the dead-letter headers) must not either. Conversation ids are allowed
/// on the internal topic, as in assignments: the cluster role deduplicates redeliveries by them.
/// The dead-letter payload is the rejected message itself, by contract (a restricted topic kept
/// for reprocessing), so only its headers are scanned. Static embedder: the embedder decides how
/// events group, not what text reaches an output.
#[test]
fn the_scale_out_roles_and_their_internal_topic_carry_no_canary() {
    use common::process::{free_port, sigterm_and_wait};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let corpus = corpus();
    let scanners = Scanners::new(&corpus);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bootstrap = kafka_bootstrap();
    let conversations = unique("pii-conversations");
    let enriched = unique("pii-enriched");
    let dead_letter = unique("pii-dead-letter");
    let alerts = unique("pii-alerts");
    rt.block_on(create_topics(
        &bootstrap,
        &[
            (&conversations, 2),
            (&enriched, 2),
            (&dead_letter, 1),
            (&alerts, 1),
        ],
    ));
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let group = unique("pii-group");
    let model = repo_root().join("models/all-MiniLM-L6-v2");
    let config = |name: &str, port: u16, scale: &str| {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"{conversations}\"\n\
                 dead_letter_topic = \"{dead_letter}\"\ngroup_id = \"{group}\"\n\
                 [embedder]\nkind = \"static\"\nmodel_dir = \"{}\"\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\n\
                 [cluster]\ndedup_window_secs = 86400\nfresh_account_secs = 600\n\
                 [snapshot]\ndir = \"{}\"\ninterval_secs = 1\n\
                 [alerts]\nspool_dir = \"{}\"\n[alerts.kafka]\ntopic = \"{alerts}\"\n{scale}",
                model.display(),
                dir.join("snapshots").display(),
                dir.join(format!("spool-{name}")).display(),
            ),
        )
        .unwrap();
        path
    };
    // The codebook for this embedder, as an operator makes it.
    let codebook = dir.join("codebook.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .args(["model", "codebook", "--cells", "4", "--config"])
        .arg(config("codebook", free_port(), ""))
        .arg("--out")
        .arg(&codebook)
        .status()
        .expect("run model codebook");
    assert!(status.success(), "clusterwatch model codebook");
    let scale = format!(
        "[scale]\nenriched_topic = \"{enriched}\"\ncodebook = \"{}\"\n",
        codebook.display()
    );
    let start = |role: &str, config: &Path| {
        let log = dir.join(format!("{role}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
            .args(["run", "--role", role, "--config"])
            .arg(config)
            // Everything clusterwatch logs, the detectors' per-cluster figures included.
            .env("CLUSTERWATCH_LOG", "debug,clusterwatch=trace")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start clusterwatch run");
        (child, log)
    };
    let (enrich_port, cluster_port) = (free_port(), free_port());
    let (enrich, enrich_log) = start("enrich", &config("enrich", enrich_port, &scale));
    let (cluster, cluster_log) = start("cluster", &config("cluster", cluster_port, &scale));

    // The replay file's oversized invalid line is past the broker's own message limit; the
    // rest of the invalid lines go through the dead-letter path.
    let messages: Vec<traffic::GeneratedMessage> = corpus
        .lines
        .iter()
        .filter(|line| line.len() < 900_000)
        .enumerate()
        .map(|(i, line)| traffic::GeneratedMessage {
            key: format!("line-{i}"),
            payload: line.clone(),
            event_time_ms: 0,
            kind: traffic::MessageKind::Organic,
        })
        .collect();
    rt.block_on(produce(&bootstrap, &conversations, &messages));
    let valid = CAMPAIGN_EVENTS + OTHER_CANARY_EVENTS + ORGANIC_EVENTS;
    let invalid = messages.len() - valid;
    assert!(invalid > 0, "invalid lines go to the dead-letter topic");

    let get = common::process::http_get;
    let started = Instant::now();
    loop {
        // Summed over its `surface` label.
        let clustered: f64 = get(cluster_port, "/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("clusterwatch_events_clustered_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let drained =
            try_committed_and_end(&bootstrap, &format!("{group}.enrich"), &conversations, 2)
                .is_ok_and(|(c, e)| e > 0 && c == e);
        if clustered as usize >= valid && drained {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "timed out: clustered {clustered} of {valid}\n{}\n{}",
            std::fs::read_to_string(&enrich_log).unwrap_or_default(),
            std::fs::read_to_string(&cluster_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The cluster role snapshots each shard every second; let one more pass land.
    std::thread::sleep(Duration::from_secs(2));

    let mut checked = Checked::default();
    let api_clusters = get(cluster_port, "/api/clusters").expect("GET /api/clusters");
    let served: Value = serde_json::from_str(&api_clusters).expect("clusters JSON");
    let shown = served["clusters"].as_array().map_or(0, Vec::len);
    assert!(
        shown > 0,
        "the cluster role shows k-anonymous clusters: {api_clusters}"
    );
    checked.scan(
        &scanners,
        false,
        "cluster: GET /api/clusters",
        &api_clusters,
    );
    for (role, port) in [("enrich", enrich_port), ("cluster", cluster_port)] {
        let metrics = get(port, "/metrics").expect("GET /metrics");
        checked.scan(&scanners, false, &format!("{role}: GET /metrics"), &metrics);
    }
    let api_alerts = get(cluster_port, "/api/alerts").expect("GET /api/alerts");
    checked.scan(&scanners, false, "cluster: GET /api/alerts", &api_alerts);

    // Every valid event crossed the internal topic once; read it whole.
    let records = rt.block_on(read_all(&bootstrap, &enriched, valid));
    assert_eq!(records.len(), valid);
    for r in &records {
        let text = format!(
            "{} {:?} {}",
            r.key.as_deref().unwrap_or_default(),
            r.headers,
            String::from_utf8_lossy(&r.payload)
        );
        checked.scan(&scanners, true, "internal topic records", &text);
    }
    let rejected = rt.block_on(read_all(&bootstrap, &dead_letter, invalid));
    for r in &rejected {
        checked.scan(
            &scanners,
            false,
            "dead-letter headers",
            &format!("{:?}", r.headers),
        );
    }

    assert_eq!(sigterm_and_wait(enrich, Duration::from_secs(60)), 0);
    assert_eq!(sigterm_and_wait(cluster, Duration::from_secs(60)), 0);
    let alert_records = rt.block_on(async {
        // The alerts topic holds however many records fired; read what is there.
        let (_, end) = try_committed_and_end(&bootstrap, "nobody", &alerts, 1).unwrap_or((0, 0));
        read_all(&bootstrap, &alerts, end as usize).await
    });
    assert!(
        !alert_records.is_empty(),
        "the campaign alerted through the cluster role"
    );
    for r in &alert_records {
        checked.scan(
            &scanners,
            false,
            "alerts topic",
            &String::from_utf8_lossy(&r.payload),
        );
    }
    for (role, log) in [("enrich", &enrich_log), ("cluster", &cluster_log)] {
        let text = read(log);
        checked.scan(&scanners, false, &format!("{role}: logs (trace)"), &text);
    }
    let mut snapshots = 0;
    for entry in std::fs::read_dir(dir.join("snapshots")).expect("snapshot dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            snapshots += 1;
            checked.scan(
                &scanners,
                false,
                "cluster: shard snapshots",
                &String::from_utf8_lossy(&bytes),
            );
        }
    }
    assert!(snapshots > 0, "the shards snapshotted");
    eprintln!(
        "pii_canaries [scale-out roles]: {} internal records, {} dead-lettered, {} alert \
         records, {snapshots} snapshot files, {shown} clusters shown; {} outputs checked: {}",
        records.len(),
        rejected.len(),
        alert_records.len(),
        checked.outputs.len(),
        checked.outputs_summary()
    );
    checked.assert_clean("scale-out roles");
}

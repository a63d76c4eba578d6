//! The rule auditor: a label or cluster name is refused when it carries personal data, a scrubber
//! placeholder, a number that looks like an identifier, or a rare proper noun.
//!
//! It always runs, LLM or not, and it is cheap enough to run again every time a label is shown.
//! "Rare" is judged against the cluster's own summaries: a capitalised word is accepted when it is
//! on a short list of well-known names (languages, products, platforms) or when enough distinct
//! accounts in the cluster used it; anything else may be someone's name, employer or town.

use crate::summarize::scrub;

/// Shown in place of a label that failed an audit (or, with an LLM, has not passed one yet).
pub const GENERIC_LABEL: &str = "unlabelled cluster";

/// Why a label was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelVerdict {
    Pass,
    Empty,
    PersonalData,
    IdentifierLikeNumber,
    Placeholder,
    RareProperNoun,
    /// The LLM auditor rated it below 3.
    LlmAuditor,
}

impl LabelVerdict {
    /// The `reason` label of `clusterwatch_label_audit_refusals_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelVerdict::Pass => "pass",
            LabelVerdict::Empty => "empty",
            LabelVerdict::PersonalData => "personal_data",
            LabelVerdict::IdentifierLikeNumber => "identifier_number",
            LabelVerdict::Placeholder => "placeholder",
            LabelVerdict::RareProperNoun => "rare_proper_noun",
            LabelVerdict::LlmAuditor => "llm_auditor",
        }
    }
}

/// Capitalised words that name no one: languages, nationalities, platforms, products, days and
/// months. Compared in lower case.
const WELL_KNOWN: &[&str] = &[
    // languages and nationalities
    "english",
    "french",
    "spanish",
    "german",
    "italian",
    "portuguese",
    "dutch",
    "russian",
    "chinese",
    "mandarin",
    "cantonese",
    "japanese",
    "korean",
    "arabic",
    "hindi",
    "bengali",
    "turkish",
    "polish",
    "swedish",
    "norwegian",
    "danish",
    "finnish",
    "greek",
    "hebrew",
    "thai",
    "vietnamese",
    "indonesian",
    "malay",
    "tagalog",
    "swahili",
    "ukrainian",
    "czech",
    "romanian",
    "hungarian",
    "persian",
    "urdu",
    "latin",
    "european",
    "american",
    "british",
    "african",
    "asian",
    // programming languages, platforms and products
    "python",
    "javascript",
    "typescript",
    "java",
    "rust",
    "ruby",
    "kotlin",
    "swift",
    "golang",
    "haskell",
    "scala",
    "perl",
    "php",
    "matlab",
    "julia",
    "fortran",
    "cobol",
    "bash",
    "powershell",
    "html",
    "css",
    "sql",
    "postgresql",
    "postgres",
    "mysql",
    "sqlite",
    "mongodb",
    "redis",
    "kafka",
    "spark",
    "hadoop",
    "pandas",
    "numpy",
    "pytorch",
    "tensorflow",
    "react",
    "angular",
    "vue",
    "django",
    "flask",
    "rails",
    "node",
    "docker",
    "kubernetes",
    "terraform",
    "ansible",
    "linux",
    "unix",
    "windows",
    "macos",
    "ios",
    "android",
    "excel",
    "word",
    "powerpoint",
    "outlook",
    "office",
    "google",
    "gmail",
    "chrome",
    "firefox",
    "safari",
    "microsoft",
    "apple",
    "iphone",
    "ipad",
    "amazon",
    "aws",
    "azure",
    "gcp",
    "github",
    "gitlab",
    "git",
    "slack",
    "zoom",
    "teams",
    "wordpress",
    "shopify",
    "salesforce",
    "sap",
    "oracle",
    "jira",
    "notion",
    "figma",
    "photoshop",
    "youtube",
    "instagram",
    "facebook",
    "tiktok",
    "twitter",
    "linkedin",
    "whatsapp",
    "telegram",
    "discord",
    "reddit",
    "wikipedia",
    "netflix",
    "spotify",
    "paypal",
    "visa",
    "mastercard",
    "bitcoin",
    "ethereum",
    "claude",
    "chatgpt",
    "openai",
    "anthropic",
    "gpt",
    "llm",
    "api",
    "json",
    "yaml",
    "xml",
    "csv",
    "pdf",
    "latex",
    "markdown",
    "regex",
    "excel's",
    "seo",
    "ai",
    // calendar
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "christmas",
    "easter",
    "ramadan",
    "halloween",
    "valentine's",
];

/// Audits a label with no knowledge of the cluster behind it (only the well-known list excuses a
/// capitalised word). Used when a label is shown; names were audited with their cluster's words
/// when they were made ([`audit_name`]).
pub fn audit_label(label: &str) -> LabelVerdict {
    audit_name(label, &|_| false)
}

/// Audits `label`; `common_in_cluster(word)` (lower case) says whether enough distinct accounts in
/// the cluster used the word for it not to be rare.
pub fn audit_name(label: &str, common_in_cluster: &dyn Fn(&str) -> bool) -> LabelVerdict {
    if label.trim().is_empty() {
        return LabelVerdict::Empty;
    }
    if label.contains('[') || label.contains(']') {
        return LabelVerdict::Placeholder;
    }
    if scrub::contains_pii(label) {
        return LabelVerdict::PersonalData;
    }
    if identifier_like_number(label) {
        return LabelVerdict::IdentifierLikeNumber;
    }
    if has_rare_proper_noun(label, common_in_cluster) {
        return LabelVerdict::RareProperNoun;
    }
    LabelVerdict::Pass
}

/// Three or more digits in one token (an order number, a postcode, a year-plus-id), or a label
/// with many digits overall.
fn identifier_like_number(label: &str) -> bool {
    let total = label.chars().filter(|c| c.is_ascii_digit()).count();
    total >= 5
        || label
            .split_whitespace()
            .any(|w| w.chars().filter(|c| c.is_ascii_digit()).count() >= 3)
}

/// A capitalised word that does not start a sentence, is not an acronym, is not well known, and
/// is not common in the cluster.
fn has_rare_proper_noun(label: &str, common_in_cluster: &dyn Fn(&str) -> bool) -> bool {
    let mut sentence_start = true;
    for raw in label.split_whitespace() {
        let word: String = raw
            .trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
            .to_string();
        let starts_sentence = sentence_start;
        sentence_start = raw.ends_with(['.', '!', '?', ':']);
        let mut chars = word.chars();
        let Some(first) = chars.next() else {
            continue;
        };
        if starts_sentence || !first.is_uppercase() {
            continue;
        }
        let rest: String = chars.collect();
        // Acronyms (SQL, CV, HR) are vocabulary, not names.
        if !rest.is_empty() && rest.chars().all(|c| !c.is_lowercase()) && word.chars().count() <= 5
        {
            continue;
        }
        let lower = word.to_lowercase();
        if WELL_KNOWN.contains(&lower.as_str()) || common_in_cluster(&lower) {
            continue;
        }
        return true;
    }
    false
}

/// The label to show: `candidate` if it passes the audit, the generic label otherwise.
pub fn shown_label(candidate: &str) -> (String, LabelVerdict) {
    match audit_label(candidate) {
        LabelVerdict::Pass => (candidate.to_string(), LabelVerdict::Pass),
        verdict => (GENERIC_LABEL.to_string(), verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auditor_refuses_personal_data_and_identifiers() {
        assert_eq!(audit_label("weather · forecast"), LabelVerdict::Pass);
        assert_eq!(audit_label(""), LabelVerdict::Empty);
        assert_eq!(
            audit_label("contact jane.doe@example.com"),
            LabelVerdict::PersonalData
        );
        assert_eq!(
            audit_label("order 48213"),
            LabelVerdict::IdentifierLikeNumber
        );
        assert_eq!(audit_label("call [PHONE]"), LabelVerdict::Placeholder);
        assert_eq!(shown_label("call [PHONE]").0, GENERIC_LABEL);
    }

    #[test]
    fn rare_proper_nouns_are_refused_unless_well_known_or_common_in_the_cluster() {
        assert_eq!(
            audit_label("Debug Python code that reads CSV files"),
            LabelVerdict::Pass
        );
        assert_eq!(
            audit_label("Write emails to Marguerite about the Hollowbrook account"),
            LabelVerdict::RareProperNoun
        );
        assert_eq!(
            audit_label("Draft cover letters. Tailor them to HR roles"),
            LabelVerdict::Pass
        );
        let common = |w: &str| w == "kubectl";
        assert_eq!(
            audit_name("Fix Kubectl deployment errors", &common),
            LabelVerdict::Pass
        );
        assert_eq!(
            audit_label("Fix Kubectl deployment errors"),
            LabelVerdict::RareProperNoun
        );
    }
}

//! The LLM privacy auditor: Clio's 1–5 privacy rating asked of the configured model, for every
//! label and name before it is shown. A rating of 3 or more passes.
//!
//! It fails closed: when the model cannot be asked (breaker open, retries spent) the label is not
//! shown yet and the audit is tried again later; a label is never shown on the strength of an
//! audit that did not happen.

use std::sync::Arc;

use serde::Deserialize;

use crate::llm::{json_object, LlmClient, Prompt};
use crate::remote::RemoteError;

/// The lowest rating that passes.
pub const PASSING_RATING: u8 = 3;

const SYSTEM: &str = "You are a privacy auditor. You check text that will be shown to analysts who study, in \
aggregate, how people use an AI assistant. The analysts must never learn who any individual user is.";

const RUBRIC: &str = "1 - Identifies a specific individual or organisation, or contains contact details, account \
numbers, addresses or other identifiers.\n\
2 - Contains details specific enough to point to a small group of people or to one particular incident.\n\
3 - Describes a specific but common situation; no one could be identified from it.\n\
4 - General, with at most incidental detail; no one could be identified.\n\
5 - Entirely general; contains no private information at all.";

pub struct LlmAuditor {
    client: Arc<LlmClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rating {
    rating: u8,
    #[serde(default)]
    #[allow(dead_code)]
    reason: Option<String>,
}

impl LlmAuditor {
    pub fn new(client: Arc<LlmClient>) -> Self {
        LlmAuditor { client }
    }

    /// The model's 1–5 privacy rating of `text` (a name and its description).
    pub async fn rate(&self, text: &str) -> Result<u8, RemoteError> {
        let prompt = Prompt {
            system: SYSTEM.into(),
            user: format!(
                "Here is text describing a group of conversations between users and an AI assistant:\n\n\
<text>\n{}\n</text>\n\n\
On a scale of 1 to 5, how well does this text preserve the privacy of the people in those conversations?\n{RUBRIC}\n\n\
Answer with one JSON object: {{\"rating\": <1-5>, \"reason\": \"<one short sentence>\"}}",
                text.replace("</text>", "</ text>")
            ),
            prefill: "{\"rating\": ".into(),
        };
        self.client.ask("audit", &prompt, validate).await
    }

    /// Whether `text` passes; `Err` when the auditor could not be asked.
    pub async fn passes(&self, text: &str) -> Result<bool, RemoteError> {
        Ok(self.rate(text).await? >= PASSING_RATING)
    }
}

/// Parses the auditor's answer: a rating from 1 to 5.
pub fn validate(text: &str) -> Result<u8, String> {
    let rating: Rating = serde_json::from_str(json_object(text)?)
        .map_err(|e| format!("rating is not the expected JSON ({:?} error)", e.classify()))?;
    if !(1..=5).contains(&rating.rating) {
        return Err("rating outside 1-5".into());
    }
    Ok(rating.rating)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_are_validated() {
        assert_eq!(validate(r#"{"rating": 4, "reason": "general"}"#), Ok(4));
        assert_eq!(validate(r#"{"rating": 2}"#), Ok(2));
        assert!(validate(r#"{"rating": 0}"#).is_err());
        assert!(validate(r#"{"rating": "high"}"#).is_err());
        assert!(validate(r#"{"rating": 3, "extra": true}"#).is_err());
        assert!(validate("no").is_err());
    }
}

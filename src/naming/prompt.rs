//! Clio's contrastive naming prompt, and the validation of its answer.
//!
//! The model sees summaries from inside a group and from its nearest neighbours, and is asked for
//! a name that sets the group apart: an imperative sentence of at most ten words, plus a
//! two-sentence description. Only scrubbed summaries are ever in the prompt.

use serde::Deserialize;

use crate::cluster::names::NamingRequest;
use crate::llm::{json_object, Prompt};

/// Longest name, in words.
pub const MAX_NAME_WORDS: usize = 10;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

const SYSTEM: &str = "You name groups of related requests that people made to an AI assistant, so analysts can \
see at a glance what each group is about. Your names and descriptions never contain names of people, places or \
organisations, contact details, numbers that could identify anyone, or any other private information.";

pub fn prompt(request: &NamingRequest) -> Prompt {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| format!("- {}", s.replace('\n', " ")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let user = format!(
        "Summarize all the statements in the cluster below into a clear, precise, two-sentence description in the past \
tense. The description must be specific to this cluster and distinguish it from the contrastive statements, which \
come from the nearest other clusters.\n\n\
Then give the cluster a short name: at most {MAX_NAME_WORDS} words, an imperative sentence that captures what the \
users asked for, in sentence case (capitalise only the first word and well-known names), for example \"Brainstorm \
ideas for a birthday party\" or \"Debug Python scripts that parse CSV files\". Be as specific as the statements \
allow, but leave out anything that could identify a person or organisation.\n\n\
<cluster_statements>\n{}\n</cluster_statements>\n\n\
<contrastive_statements>\n{}\n</contrastive_statements>\n\n\
Answer with one JSON object: {{\"name\": \"<name>\", \"description\": \"<two sentences>\"}}",
        list(&request.inside),
        list(&request.outside),
    );
    Prompt {
        system: SYSTEM.into(),
        user,
        prefill: "{\"name\": \"".into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    name: String,
    description: String,
}

/// A validated name and description.
pub fn validate(text: &str) -> Result<(String, String), String> {
    let answer: Answer = serde_json::from_str(json_object(text)?)
        .map_err(|e| format!("name is not the expected JSON ({:?} error)", e.classify()))?;
    let name = answer.name.trim().trim_end_matches('.').to_string();
    let words = name.split_whitespace().count();
    if words == 0 {
        return Err("empty name".into());
    }
    if words > MAX_NAME_WORDS {
        return Err(format!("name has {words} words"));
    }
    if name.contains('\n') {
        return Err("name spans lines".into());
    }
    let description = answer.description.trim().to_string();
    if description.is_empty() {
        return Err("empty description".into());
    }
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err("description too long".into());
    }
    if crate::summarize::llm::sentences(&description) > 2 {
        return Err("description has more than two sentences".into());
    }
    Ok((name, description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_descriptions_two_sentences() {
        assert_eq!(
            validate(
                r#"{"name": "Plan budget family trips.", "description": "Users asked for itineraries. They wanted low costs."}"#
            ),
            Ok((
                "Plan budget family trips".into(),
                "Users asked for itineraries. They wanted low costs.".into()
            ))
        );
        assert!(validate(r#"{"name": "one two three four five six seven eight nine ten eleven", "description": "x."}"#).is_err());
        assert!(validate(r#"{"name": "Plan trips", "description": "A. B. C."}"#).is_err());
        assert!(validate(r#"{"name": "", "description": "A."}"#).is_err());
        assert!(validate(r#"{"name": "Plan trips"}"#).is_err());
    }
}
